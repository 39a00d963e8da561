package flock

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"reflect"
	"sync"
	"sync/atomic"
	"time"
)

// Server is what flock runs on a listener in each worker: anything that
// serves the connections it accepts until its listener closes, and stops
// gracefully. *http.Server is one, and flock drains it itself, losing no
// request (see drainHTTP). GracefulStopper adapts a gRPC server.
//
// For a Server that is not an *http.Server, flock guarantees this much: it
// stops accepting (closes the listener), waits until Serve has returned,
// so that every connection accepted is the server's, then calls Shutdown
// with what is left of ShutdownTimeout. Whether the connections the server
// accepted finish their work is Shutdown's promise: gRPC's GracefulStop
// lets every pending call finish; a raw TCP server must close its idle
// connections and wait for busy ones (see example/echo).
type Server interface {
	Serve(ln net.Listener) error
	Shutdown(ctx context.Context) error
}

// GracefulStopper adapts a server that stops with GracefulStop and Stop,
// such as *grpc.Server: Shutdown calls GracefulStop, and Stop if ctx ends
// first.
func GracefulStopper(s interface {
	Serve(net.Listener) error
	GracefulStop()
	Stop()
}) Server {
	return &gracefulStopper{s} // a pointer: comparable whatever s is
}

type gracefulStopper struct {
	s interface {
		Serve(net.Listener) error
		GracefulStop()
		Stop()
	}
}

func (g *gracefulStopper) Serve(ln net.Listener) error { return g.s.Serve(ln) }

func (g *gracefulStopper) Shutdown(ctx context.Context) error {
	done := make(chan struct{})
	go func() { g.s.GracefulStop(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		g.s.Stop()
		return ctx.Err()
	}
}

// servers are a worker's (or the single process's) servers, one per
// listener, and what they have served.
type servers struct {
	byListener []*served // listener index → its server
	all        []*served // each server once
	requests   atomic.Int64
	accepted   atomic.Int64
	served     chan error // a Serve loop returned, with why
}

// served is one Server and the listeners it accepts on.
type served struct {
	s     Server
	hs    *http.Server // s, when it is one: drained by drainHTTP
	conns *connTracker // hs's connections
	tls   bool         // hs serves TLS (decided before Serve sets TLSConfig up for HTTP/2)
	lns   []net.Listener
}

func newServers(listeners int) *servers {
	return &servers{byListener: make([]*served, listeners), served: make(chan error)}
}

// set gives listener i its server. An *http.Server gets flock's
// connection tracking (ConnState) and request count (Handler) wrapped
// around its own.
func (v *servers) set(i int, s Server) {
	for _, x := range v.all {
		if same(x.s, s) {
			v.byListener[i] = x
			return
		}
	}
	x := &served{s: s}
	if hs, ok := s.(*http.Server); ok {
		x.hs, x.conns, x.tls = hs, newConnTracker(), hs.TLSConfig != nil
		ownCtx := hs.ConnContext
		hs.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
			if ownCtx != nil {
				ctx = ownCtx(ctx, c)
			}
			return context.WithValue(ctx, connKey{}, c) // for the handler: which connection it runs on
		}
		own := hs.ConnState
		hs.ConnState = func(c net.Conn, st http.ConnState) {
			x.conns.track(c, st)
			if own != nil {
				own(c, st)
			}
		}
		h := hs.Handler
		if h == nil {
			h = http.DefaultServeMux
		}
		hs.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			c, _ := r.Context().Value(connKey{}).(net.Conn)
			switch x.conns.during(accepted(c)) {
			case connClosed:
				// Read as the drain closed its connection (the close may not
				// have happened yet): no answer at all, not even net/http's
				// empty 200 for a handler that wrote nothing; the client
				// retries.
				panic(http.ErrAbortHandler)
			case connDraining:
				if r.ProtoMajor == 1 {
					w.Header().Set("Connection", "close") // the answer, then the connection closes
				}
			}
			v.requests.Add(1)
			h.ServeHTTP(w, r)
		})
	}
	v.byListener[i] = x
	v.all = append(v.all, x)
}

// same reports whether a and b are the same server (given to two
// listeners); a Server of a type that cannot be compared is never the same.
func same(a, b Server) bool {
	t := reflect.TypeOf(a)
	return t == reflect.TypeOf(b) && t.Comparable() && a == b
}

// httpServer is the server of Serve(h, o): h with flock's timeouts and
// TLS (TLSConfig, with the certificate of TLSCertFile and TLSKeyFile).
func httpServer(h http.Handler, c *config, log *slog.Logger) (*http.Server, error) {
	cfg := c.TLSConfig
	if c.TLSCertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.TLSCertFile, c.TLSKeyFile)
		if err != nil {
			return nil, fmt.Errorf("flock: TLSCertFile %q, TLSKeyFile %q: %v", c.TLSCertFile, c.TLSKeyFile, err)
		}
		if cfg = cfg.Clone(); cfg == nil {
			cfg = &tls.Config{}
		}
		cfg.Certificates = append(cfg.Certificates, cert)
	}
	return &http.Server{
		Handler:           h,
		IdleTimeout:       c.IdleTimeout,
		ReadHeaderTimeout: c.ReadHeaderTimeout,
		ErrorLog:          newLimitedLog(log, slog.LevelWarn, time.Second),
		TLSConfig:         cfg,
	}, nil
}

// serve has listener i's server accept on ln too. Only the goroutine that
// drains may call it.
func (v *servers) serve(i int, ln net.Listener) {
	x := v.byListener[i]
	ln = countingListener{ln, &v.accepted}
	x.lns = append(x.lns, ln)
	go func() {
		if x.tls {
			v.served <- x.hs.ServeTLS(ln, "", "") // its TLSConfig has the certificates
		} else {
			v.served <- x.s.Serve(ln)
		}
	}()
}

// open is the number of HTTP connections open now (other servers' are not
// known).
func (v *servers) open() int64 {
	var n int64
	for _, x := range v.all {
		if x.conns != nil {
			n += x.conns.live.Load()
		}
	}
	return n
}

// drain stops every server within budget: first all stop accepting, then
// each finishes what it accepted.
func (v *servers) drain(budget time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	loops := 0
	for _, x := range v.all {
		for _, ln := range x.lns {
			ln.Close()
			loops++
		}
	}
	// A server counts a connection only after Accept has returned it. Once
	// every Serve has returned, nothing accepted escapes the drain below;
	// before, a connection accepted just as the listener closed could be
	// closed unanswered.
	for range loops {
		select {
		case <-v.served:
		case <-ctx.Done():
			v.stopAll()
			return
		}
	}
	var wg sync.WaitGroup
	for _, x := range v.all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if x.hs != nil {
				drainHTTP(ctx, x.hs, x.conns)
			} else if x.s.Shutdown(ctx) != nil && ctx.Err() != nil {
				stop(x.s)
			}
		}()
	}
	wg.Wait()
}

func (v *servers) stopAll() {
	for _, x := range v.all {
		stop(x.s)
	}
}

// stop ends a server at once, if it has a way to.
func stop(s Server) {
	switch s := s.(type) {
	case interface{ Close() error }:
		s.Close()
	case interface{ Stop() }:
		s.Stop()
	case *gracefulStopper:
		s.s.Stop()
	}
}

// countingListener counts what it accepts (MaxConnections, the reports).
type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}
