package flock

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// The lossless drain of an *http.Server: its connections tracked, closed
// when idle, and Shutdown only once none is left.

// drainHTTP stops srv without losing a request on a connection already
// accepted, once its listeners are closed and its Serve loops have
// returned. Every answer from now on says "Connection: close"; idle
// connections are closed, now and every 100 ms (a connection that has
// sent nothing for 5 s counts as idle too); once every tracked connection
// has closed, Shutdown has nothing left to drop.
//
// Not http.Server's own ways: Shutdown alone drops a request it reads
// after it began (conn.serve checks shuttingDown after reading), and
// SetKeepAlivesEnabled(false) closes a connection it sees idle even as its
// goroutine has just read a request on it, which then runs, its answer
// lost: a client that retries (Go's does, for a GET) has it run twice.
// closeIdle marks a connection before closing it, and the handler does
// not run a request read on a marked one.
func drainHTTP(ctx context.Context, srv *http.Server, conns *connTracker) {
	conns.drain()
	recheck := time.NewTicker(100 * time.Millisecond)
	defer recheck.Stop()
	for {
		select {
		case <-conns.empty():
			if err := srv.Shutdown(ctx); errors.Is(err, context.DeadlineExceeded) {
				srv.Close()
			}
			return
		case <-recheck.C:
			conns.closeIdle()
		case <-ctx.Done():
			srv.Close()
			return
		}
	}
}

// connKey is the context key of a request's connection (as accepted).
type connKey struct{}

// connTracker follows the HTTP/1 connections a drain must wait for, by
// the connection as accepted (a TLS connection's underlying one).
// Hijacked connections are the handler's business; HTTP/2 connections are
// left to Shutdown's GOAWAY, which loses nothing.
type connTracker struct {
	live atomic.Int64 // open now (a hijacked one leaves the count when hijacked)

	mu       sync.Mutex
	open     map[net.Conn]*tracked
	none     chan struct{} // closed while open is empty
	draining bool
}

type tracked struct {
	c      net.Conn // as the hooks see it (a *tls.Conn for TLS)
	state  http.ConnState
	since  time.Time // in this state
	closed bool      // by the drain
}

// What a request finds about its connection.
type connPhase int

const (
	connServing  connPhase = iota
	connDraining           // answer with "Connection: close"
	connClosed             // closed by the drain: do not run it
)

func newConnTracker() *connTracker {
	t := &connTracker{open: map[net.Conn]*tracked{}, none: make(chan struct{})}
	close(t.none)
	return t
}

// accepted is the connection as Accept returned it.
func accepted(c net.Conn) net.Conn {
	if tc, ok := c.(*tls.Conn); ok {
		return tc.NetConn()
	}
	return c
}

func (t *connTracker) track(c net.Conn, s http.ConnState) {
	key := accepted(c)
	t.mu.Lock()
	defer t.mu.Unlock()
	switch s {
	case http.StateNew:
		t.live.Add(1)
		if len(t.open) == 0 {
			t.none = make(chan struct{})
		}
		t.open[key] = &tracked{c: c, state: s, since: time.Now()}
	case http.StateActive, http.StateIdle:
		if x := t.open[key]; x != nil {
			x.state, x.since = s, time.Now()
			if s == http.StateIdle && t.draining && !x.closed {
				x.closed = true
				go x.c.Close() // not under the lock: a TLS close writes
			}
		}
	case http.StateClosed, http.StateHijacked:
		t.live.Add(-1)
		t.forget(key)
	}
}

func (t *connTracker) forget(key net.Conn) {
	if _, ok := t.open[key]; ok {
		delete(t.open, key)
		if len(t.open) == 0 {
			close(t.none)
		}
	}
}

// drain begins the drain: answers say "Connection: close" from now on,
// and the idle connections close.
func (t *connTracker) drain() {
	t.mu.Lock()
	t.draining = true
	t.mu.Unlock()
	t.closeIdle()
}

// closeIdle closes the connections that wait for a request: idle ones,
// and new ones silent for 5 s (http.Server's own rule). A connection that
// negotiated HTTP/2 stays "new" for the hooks (net/http does not report
// it active): it is no longer tracked, and Shutdown's GOAWAY drains it.
func (t *connTracker) closeIdle() {
	var quiet []*tracked
	t.mu.Lock()
	for _, x := range t.open {
		if x.state == http.StateNew && time.Since(x.since) >= 5*time.Second {
			quiet = append(quiet, x)
		}
	}
	t.mu.Unlock()
	var h2 []*tracked
	for _, x := range quiet { // the TLS state, not under the lock
		if tc, ok := x.c.(*tls.Conn); ok && tc.ConnectionState().NegotiatedProtocol == "h2" {
			h2 = append(h2, x)
		}
	}
	var closing []net.Conn
	t.mu.Lock()
	for _, x := range h2 {
		t.forget(accepted(x.c))
	}
	for _, x := range t.open {
		if !x.closed && (x.state == http.StateIdle || x.state == http.StateNew && time.Since(x.since) >= 5*time.Second) {
			x.closed = true
			closing = append(closing, x.c)
		}
	}
	t.mu.Unlock()
	for _, c := range closing {
		c.Close()
	}
}

// during says what a request read on connection c (as accepted) finds.
func (t *connTracker) during(c net.Conn) connPhase {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch x := t.open[c]; {
	case x != nil && x.closed:
		return connClosed
	case t.draining:
		return connDraining
	}
	return connServing
}

// empty is closed once no tracked connection is open (until one opens).
func (t *connTracker) empty() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.none
}
