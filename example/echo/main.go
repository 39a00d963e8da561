// Command echo is a raw TCP server under flock (cluster2's TCP example): it
// answers every line with the same line. Everything flock does for HTTP
// holds for it: one SO_REUSEPORT socket per worker slot held by the master,
// readiness, HUP rolls, recycling, TTOU spares, USR2.
//
//	go run ./example/echo -workers 2 &
//	printf 'hello\n' | nc -q1 localhost 7000          # hello
//	kill -HUP <master pid>                             # a rolling restart, losing nothing
//
// # Draining a raw protocol
//
// flock stops a worker's listener, waits until every connection it accepted
// is the server's, then calls Shutdown. What Shutdown can promise depends on
// the protocol: a connection that is idle when the server closes it may
// carry a message the client sent at that very moment, and nothing on the
// server's side can tell. HTTP/2 and gRPC solve it with GOAWAY; this
// server does the same with a line of its own: on Shutdown it sends "BYE"
// on every connection, goes on answering what arrives, and closes each
// connection when its client does. A client that reads "BYE" reads the
// answer to the message it has in flight, if any, then reconnects for the
// next one. Clients that do so lose no message across any restart (see
// main_test.go); clients that ignore "BYE" are closed after the shutdown
// timeout, losing only a message sent in the last instant.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"

	"github.com/flockhq/flock"
)

func main() {
	var o flock.Options
	flag.StringVar(&o.Addr, "addr", ":7000", "listen address")
	flag.IntVar(&o.Workers, "workers", 0, "worker processes (default $WEB_CONCURRENCY, else the number of CPUs)")
	flag.DurationVar(&o.ShutdownTimeout, "shutdown-timeout", 0, "graceful stop bound (default 30s)")
	flag.IntVar(&o.MaxConnections, "max-connections", 0, "recycle a worker after this many connections (0: never)")
	flag.DurationVar(&o.MaxUptime, "max-uptime", 0, "recycle a worker after this long (0: never)")
	flag.StringVar(&o.MonitorAddr, "monitor", "", `ECV monitor address (default: port + 1; "off" turns it off)`)
	jsonLogs := flag.Bool("log-json", false, "logs as JSON lines")
	flag.Parse()
	if *jsonLogs {
		o.Logger = slog.New(slog.NewJSONHandler(os.Stderr, nil))
	}
	err := flock.Run(o, func(w *flock.Worker) error {
		return w.Serve(flock.MainListener, newServer())
	})
	switch {
	case err == nil:
	case errors.Is(err, flock.ErrInterrupted):
		os.Exit(130)
	default:
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// Bye is the line that tells a client to reconnect.
const Bye = "BYE"

// server echoes lines; it implements flock.Server.
type server struct {
	wg sync.WaitGroup

	mu    sync.Mutex
	conns map[*conn]struct{}
}

// conn is one client; writes are serialised so that "BYE" never lands in
// the middle of an answer.
type conn struct {
	net.Conn
	mu sync.Mutex
}

func (c *conn) writeLine(b []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, err := c.Write(b)
	return err
}

func newServer() *server { return &server{conns: map[*conn]struct{}{}} }

// Serve accepts until the listener closes.
func (s *server) Serve(ln net.Listener) error {
	for {
		nc, err := ln.Accept()
		if err != nil {
			return err
		}
		c := &conn{Conn: nc}
		s.mu.Lock()
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Add(1)
		go s.handle(c)
	}
}

func (s *server) handle(c *conn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			return // the client closed (or went away)
		}
		if c.writeLine(line) != nil {
			return
		}
	}
}

// Shutdown tells every client to go and waits until they have; at ctx's
// end it closes what is left. flock calls it once Serve has returned, so
// no connection comes after.
func (s *server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	for c := range s.conns {
		c.writeLine([]byte(Bye + "\n"))
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.Close()
		return ctx.Err()
	}
}

// Close closes every connection at once.
func (s *server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		c.Close()
	}
	return nil
}
