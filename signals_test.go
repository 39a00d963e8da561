package flock

import (
	"context"
	"errors"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Signals 100 ms apart are each acted on: TTIN ×4 then TTOU ×5, the last of
// which would go below one worker and is ignored. TTOU stops the oldest.
func TestTTINAndTTOUBursts(t *testing.T) {
	a := startApp(t, appSpec{Workers: 1})
	first := a.started(1)[0]
	for range 4 {
		a.signal(syscall.SIGTTIN)
		time.Sleep(100 * time.Millisecond)
	}
	pids := a.started(5)
	assert.Len(t, pids, 5)
	assert.Equal(t, 5, a.events("scaled")[3].int("workers"))

	for range 5 {
		a.signal(syscall.SIGTTOU)
		time.Sleep(100 * time.Millisecond)
	}
	a.waitUntil("4 scale-down exits", 10*time.Second, func() bool { return len(a.events("exited")) == 4 })
	a.waitFor("TTOU refused below one worker", 5*time.Second, func(r rec) bool {
		return r.str("msg") == "flock: TTOU ignored: never fewer than one worker"
	})
	exits := a.events("exited")
	assert.Equal(t, first, exits[0].int("pid"), "TTOU stops the oldest worker first")
	for _, e := range exits {
		assert.Equal(t, ReasonScaleDown, e.str("reason"))
	}
	last := pids[len(pids)-1]
	pid, err := get(a.url("/"))
	require.NoError(t, err)
	assert.Equal(t, last, pid, "the youngest worker is the one left")
}

// QUIT and TERM drain: a request in flight is answered, new connections are
// refused during the drain, the master exits 0.
func TestGracefulShutdown(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGQUIT, syscall.SIGTERM} {
		t.Run(signalName(sig), func(t *testing.T) {
			a := startApp(t, appSpec{Workers: 2})
			a.started(2)
			inFlight := make(chan error, 1)
			go func() { _, err := get(a.url("/sleep?d=2s")); inFlight <- err }()
			a.waitFor("the request to arrive", 5*time.Second, func(r rec) bool { return r.str("event") == "sleeping" })

			a.signal(sig)
			a.waitUntil("new connections to be refused", 5*time.Second, func() bool {
				c, err := net.Dial("tcp", a.addr)
				if err == nil {
					c.Close()
				}
				return errors.Is(err, syscall.ECONNREFUSED)
			})
			select {
			case err := <-inFlight:
				t.Fatalf("the in-flight request ended before the refusal check: %v", err)
			default:
			}
			require.NoError(t, <-inFlight)
			assert.Equal(t, 0, a.exitCode(10*time.Second))
			for _, e := range a.events("exited") {
				assert.Equal(t, ReasonShutdown, e.str("reason"))
				assert.Equal(t, 0, e.int("status"))
			}
		})
	}
}

// A second TERM during the drain is logged and changes nothing.
func TestRepeatedTermIgnored(t *testing.T) {
	a := startApp(t, appSpec{Workers: 1})
	a.started(1)
	inFlight := make(chan error, 1)
	go func() { _, err := get(a.url("/sleep?d=1s")); inFlight <- err }()
	a.waitFor("the request to arrive", 5*time.Second, func(r rec) bool { return r.str("event") == "sleeping" })
	a.signal(syscall.SIGTERM)
	a.waitFor("shutdown", 5*time.Second, func(r rec) bool { return r.str("event") == "shutdown" })
	a.signal(syscall.SIGTERM)
	a.signal(syscall.SIGQUIT)
	require.NoError(t, <-inFlight)
	assert.Equal(t, 0, a.exitCode(10*time.Second))
	assert.Len(t, a.find(func(r rec) bool { return r.str("msg") == "flock: already shutting down; send INT to stop at once" }), 2)
}

// Past ShutdownTimeout the master kills what still runs, and exits 0.
func TestShutdownTimeout(t *testing.T) {
	a := startApp(t, appSpec{Workers: 1, Shutdown: 500 * time.Millisecond})
	pid := a.started(1)[0]
	go get(a.url("/sleep?d=60s"))
	a.waitFor("the request to arrive", 5*time.Second, func(r rec) bool { return r.str("event") == "sleeping" })
	start := time.Now()
	a.signal(syscall.SIGTERM)
	assert.Equal(t, 0, a.exitCode(10*time.Second))
	assert.Less(t, time.Since(start), 5*time.Second)
	e := a.events("exited")
	require.Len(t, e, 1)
	assert.Equal(t, pid, e[0].int("pid"))
	assert.Equal(t, ReasonKilled, e[0].str("reason"))
	assert.Equal(t, "SIGKILL", e[0].str("signal"))
}

// INT kills every worker at once and exits non-zero; during a graceful
// shutdown it escalates.
func TestInterrupt(t *testing.T) {
	for _, graceful := range []bool{false, true} {
		name := "immediate"
		if graceful {
			name = "during graceful shutdown"
		}
		t.Run(name, func(t *testing.T) {
			a := startApp(t, appSpec{Workers: 2, Shutdown: time.Minute})
			pids := a.started(2)
			go get(a.url("/sleep?d=60s"))
			a.waitFor("the request to arrive", 5*time.Second, func(r rec) bool { return r.str("event") == "sleeping" })
			if graceful {
				a.signal(syscall.SIGTERM)
				a.waitFor("shutdown", 5*time.Second, func(r rec) bool { return r.str("event") == "shutdown" })
			}
			a.signal(syscall.SIGINT)
			assert.Equal(t, 130, a.exitCode(5*time.Second))
			for _, pid := range pids {
				assert.False(t, alive(pid), "worker %d still alive", pid)
			}
			assert.NotEmpty(t, a.find(func(r rec) bool { return r.str("event") == "exited" && r.str("reason") == ReasonKilled }))
		})
	}
}

// Signals meant for the master neither stop nor kill a worker.
func TestWorkerIgnoresMasterSignals(t *testing.T) {
	a := startApp(t, appSpec{Workers: 1})
	pid := a.started(1)[0]
	for _, sig := range []syscall.Signal{syscall.SIGTTIN, syscall.SIGTTOU, syscall.SIGHUP, syscall.SIGUSR2} {
		require.NoError(t, syscall.Kill(pid, sig))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	res := load(ctx, a.url("/"), 2, 200, true)
	assert.Zero(t, res.failed.Load(), res.String())
	assert.NotEqual(t, "T", procState(pid), "worker is stopped")
	got, err := get(a.url("/"))
	require.NoError(t, err)
	assert.Equal(t, pid, got, "the same worker still serves")
	assert.Empty(t, a.events("exited"))
}
