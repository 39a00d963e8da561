package flock

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/flockhq/flock/internal/flocktest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestTLS(t *testing.T) {
	cert, key, _ := flocktest.WriteCert(t)
	a := startApp(t, appSpec{Workers: 2, TLSCert: cert, TLSKey: key})
	a.Started(2)
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: true,
	}}
	resp, err := c.Get("https://" + a.Addr + "/")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Equal(t, "HTTP/2.0", resp.Proto)
	assert.True(t, strings.HasPrefix(string(body), "Hello from worker "), string(body))

	// An HTTP/2 connection does not hold up the drain: Shutdown sends GOAWAY.
	a.Signal(syscall.SIGTERM)
	assert.Equal(t, 0, a.ExitCode(10*time.Second))
}

// As root, User runs the workers under another identity.
func TestWorkersRunAsUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: only root can start workers as another user")
	}
	// The test binary must be executable by that user.
	bin := flocktest.CopyBinary(t)
	a := flocktest.Start(t, exec.Command(bin), envTestApp+"="+`{"Addr":"127.0.0.1:0","Workers":1,"User":"nobody"}`)
	pid := a.Started(1)[0]
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	require.NoError(t, err)
	assert.Contains(t, string(status), "\nUid:\t65534\t65534\t65534\t65534\n")
	got, err := flocktest.Get(a.URL("/"))
	require.NoError(t, err)
	assert.Equal(t, pid, got)
}

// fakeConn is a connection that records its close.
type fakeConn struct {
	net.Conn
	remote string
	mu     sync.Mutex
	closed bool
}

func (c *fakeConn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	return nil
}

func (c *fakeConn) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// The drain waits on connTracker.empty: closed while no connection is
// open, open again once one is.
func TestConnTrackerEmpty(t *testing.T) {
	closed := func(ch <-chan struct{}) bool {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}
	tr := newConnTracker()
	assert.True(t, closed(tr.empty()), "nothing open yet")
	a, b := &fakeConn{remote: "a"}, &fakeConn{remote: "bb"}
	tr.track(a, http.StateNew)
	tr.track(b, http.StateNew)
	wait := tr.empty()
	assert.False(t, closed(wait))
	tr.track(a, http.StateActive)
	tr.track(a, http.StateClosed)
	assert.False(t, closed(wait), "b is still open")
	tr.track(b, http.StateHijacked)
	assert.True(t, closed(wait), "all gone")
	tr.track(a, http.StateClosed) // a second close changes nothing
	assert.True(t, closed(tr.empty()))
}

// The drain closes idle connections and marks them, so that a request
// read on one just as it closed does not run; busy ones answer with
// "Connection: close".
func TestConnTrackerDrain(t *testing.T) {
	tr := newConnTracker()
	idle, busy, fresh := &fakeConn{remote: "i"}, &fakeConn{remote: "bu"}, &fakeConn{remote: "new"}
	for _, c := range []*fakeConn{idle, busy, fresh} {
		tr.track(c, http.StateNew)
	}
	tr.track(idle, http.StateActive)
	tr.track(idle, http.StateIdle)
	tr.track(busy, http.StateActive)
	assert.Equal(t, connServing, tr.during(busy))
	tr.drain()
	assert.True(t, idle.isClosed(), "idle: closed")
	assert.False(t, busy.isClosed(), "busy: answers first")
	assert.False(t, fresh.isClosed(), "new, not yet 5 s silent: its request comes")
	assert.Equal(t, connClosed, tr.during(idle), "a request read on the closed one does not run")
	assert.Equal(t, connDraining, tr.during(busy))
	tr.track(busy, http.StateIdle) // back to idle while draining: closed at once (by a goroutine)
	assert.Eventually(t, busy.isClosed, 5*time.Second, time.Millisecond)
}
