package flock

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// appServer is the HTTP server a worker (or the single process) runs: the
// application's handler with flock's timeouts and TLS, its connections
// tracked for a drain that loses nothing.
type appServer struct {
	srv      *http.Server
	conns    *connTracker
	requests atomic.Int64
	tls      bool
	certFile string
	keyFile  string
	lns      []net.Listener
	served   chan error // a Serve loop returned, with why
}

func newAppServer(h http.Handler, c *config, log *slog.Logger) *appServer {
	a := &appServer{conns: newConnTracker(), served: make(chan error),
		tls: c.TLSCertFile != "" || c.TLSConfig != nil, certFile: c.TLSCertFile, keyFile: c.TLSKeyFile}
	a.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			a.requests.Add(1)
			h.ServeHTTP(w, r)
		}),
		IdleTimeout:       c.IdleTimeout,
		ReadHeaderTimeout: c.ReadHeaderTimeout,
		ConnState:         a.conns.track,
		ErrorLog:          newLimitedLog(log, slog.LevelWarn, time.Second),
		TLSConfig:         c.TLSConfig,
	}
	return a
}

// serve accepts on ln too. Only the goroutine that drains may call it.
func (a *appServer) serve(ln net.Listener) {
	a.lns = append(a.lns, ln)
	go func() {
		if a.tls {
			a.served <- a.srv.ServeTLS(ln, a.certFile, a.keyFile)
		} else {
			a.served <- a.srv.Serve(ln)
		}
	}()
}

// drain stops srv without losing a request on a connection already
// accepted. http.Server.Shutdown alone drops a request read just after the
// shutdown began (conn.serve checks shuttingDown after reading), so first:
// stop accepting, turn keep-alives off (which also closes idle
// connections), and wait until every tracked connection has closed; only
// then Shutdown, which has nothing left to drop.
func (a *appServer) drain(budget time.Duration) {
	srv, conns := a.srv, a.conns
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	for _, ln := range a.lns {
		ln.Close()
	}
	// Serve counts a connection (StateNew) only after Accept has returned
	// it. Once every Serve has returned, nothing accepted escapes the count
	// below; before, a connection accepted just as the listener closed could
	// be closed by Shutdown unanswered.
	for range a.lns {
		select {
		case <-a.served:
		case <-ctx.Done():
			srv.Close()
			return
		}
	}
	srv.SetKeepAlivesEnabled(false) // also closes idle connections
	// Again every second: a connection that has sent nothing for 5 s only
	// counts as idle from then on.
	recheck := time.NewTicker(time.Second)
	defer recheck.Stop()
	for {
		select {
		case <-conns.empty():
			srv.Shutdown(ctx)
			return
		case <-recheck.C:
			srv.SetKeepAlivesEnabled(false)
		case <-ctx.Done():
			srv.Close()
			return
		}
	}
}

// connTracker follows the HTTP/1 connections a drain must wait for.
// Hijacked connections are the handler's business; HTTP/2 connections are
// drained by Shutdown's GOAWAY, which loses nothing.
type connTracker struct {
	accepted atomic.Int64 // every connection ever, for MaxConnections
	live     atomic.Int64 // open now (a hijacked one leaves the count when hijacked)

	mu   sync.Mutex
	open map[net.Conn]struct{}
	none chan struct{} // closed while open is empty
}

func newConnTracker() *connTracker {
	t := &connTracker{open: map[net.Conn]struct{}{}, none: make(chan struct{})}
	close(t.none)
	return t
}

func (t *connTracker) track(c net.Conn, s http.ConnState) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch s {
	case http.StateNew:
		t.accepted.Add(1)
		t.live.Add(1)
		if len(t.open) == 0 {
			t.none = make(chan struct{})
		}
		t.open[c] = struct{}{}
	case http.StateActive:
		if tc, ok := c.(*tls.Conn); ok && tc.ConnectionState().NegotiatedProtocol == "h2" {
			t.forget(c)
		}
	case http.StateClosed, http.StateHijacked:
		t.live.Add(-1)
		t.forget(c)
	}
}

func (t *connTracker) forget(c net.Conn) {
	if _, ok := t.open[c]; ok {
		delete(t.open, c)
		if len(t.open) == 0 {
			close(t.none)
		}
	}
}

// empty is closed once no tracked connection is open (until one opens).
func (t *connTracker) empty() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.none
}
