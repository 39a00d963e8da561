package flock

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/flockhq/flock/internal/flocktest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Signals in a row are each acted on: TTIN ×4 then TTOU ×5, the last of
// which would go below one worker and is ignored. TTOU stops the oldest.
// Each signal is sent once the master has acted on the one before (its
// scaled event): signals of one kind sent faster than the master takes
// them would coalesce in the kernel.
func TestTTINAndTTOUBursts(t *testing.T) {
	a := startApp(t, appSpec{Workers: 1})
	first := a.Started(1)[0]
	for range 4 {
		a.SignalUntil(syscall.SIGTTIN, "a slot added", flocktest.Event("scaled"))
	}
	pids := a.Started(5)
	assert.Len(t, pids, 5)
	assert.Equal(t, 5, a.Events("scaled")[3].Int("workers"))

	scaledDown := func() []flocktest.Rec {
		return a.Find(func(r flocktest.Rec) bool {
			return r.Str("event") == "exited" && r.Str("reason") == string(ExitScaleDown)
		})
	}
	// The first TTOU's worker exits before the next TTOU is sent: workers
	// told to stop together drain together, and exit in any order.
	a.SignalUntil(syscall.SIGTTOU, "a slot removed", flocktest.Event("scaled"))
	a.WaitUntil("the first scale-down exit", 10*time.Second, func() bool { return len(scaledDown()) > 0 })
	for range 3 {
		a.SignalUntil(syscall.SIGTTOU, "a slot removed", flocktest.Event("scaled"))
	}
	a.Signal(syscall.SIGTTOU)
	// Four slots removed: four scale-down exits, or more when a TTOU lands
	// while the replacement that takes a removed slot's spare socket over
	// boots in the slot it removes (two processes to stop there). The
	// monitor's count below says one worker is left.
	a.WaitUntil("4 scale-down exits", 10*time.Second, func() bool { return len(scaledDown()) >= 4 })
	a.WaitFor("TTOU refused below one worker", 5*time.Second, func(r flocktest.Rec) bool {
		return r.Str("msg") == "flock: TTOU ignored: never fewer than one worker"
	})
	assert.Equal(t, first, scaledDown()[0].Int("pid"), "TTOU stops the oldest worker first")
	// One worker serves; with net.ipv4.tcp_migrate_req=0 (the default) it
	// may be a replacement that took the removed workers' sockets over.
	a.WaitUntil("one worker left", 10*time.Second, func() bool {
		code, body, _ := a.Mon("GET", "/")
		var st Status
		return code == 200 && json.Unmarshal([]byte(body), &st) == nil && len(st.Workers) == 1 && st.Workers[0].State == "ready"
	})
	_, err := flocktest.Get(a.URL("/"))
	require.NoError(t, err)
}

// QUIT and TERM drain: a request in flight is answered, new connections are
// refused during the drain, the master exits 0.
func TestGracefulShutdown(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGQUIT, syscall.SIGTERM} {
		t.Run(signalName(sig), func(t *testing.T) {
			a := startApp(t, appSpec{Workers: 2})
			a.Started(2)
			inFlight := make(chan error, 1)
			go func() { _, err := flocktest.Get(a.URL("/sleep?d=2s")); inFlight <- err }()
			a.WaitFor("the request to arrive", 5*time.Second, func(r flocktest.Rec) bool { return r.Str("event") == "sleeping" })

			a.Signal(sig)
			a.WaitUntil("new connections to be refused", 5*time.Second, func() bool {
				c, err := net.Dial("tcp", a.Addr)
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
			assert.Equal(t, 0, a.ExitCode(10*time.Second))
			for _, e := range a.Events("exited") {
				assert.Equal(t, string(ExitShutdown), e.Str("reason"))
				assert.Equal(t, 0, e.Int("status"))
			}
		})
	}
}

// A second TERM during the drain is logged and changes nothing.
func TestRepeatedTermIgnored(t *testing.T) {
	a := startApp(t, appSpec{Workers: 1})
	a.Started(1)
	inFlight := make(chan error, 1)
	go func() { _, err := flocktest.Get(a.URL("/sleep?d=1s")); inFlight <- err }()
	a.WaitFor("the request to arrive", 5*time.Second, func(r flocktest.Rec) bool { return r.Str("event") == "sleeping" })
	a.Signal(syscall.SIGTERM)
	a.WaitFor("shutdown", 5*time.Second, func(r flocktest.Rec) bool { return r.Str("event") == "shutdown" })
	a.Signal(syscall.SIGTERM)
	a.Signal(syscall.SIGQUIT)
	require.NoError(t, <-inFlight)
	assert.Equal(t, 0, a.ExitCode(10*time.Second))
	assert.Len(t, a.Find(func(r flocktest.Rec) bool {
		return r.Str("msg") == "flock: already shutting down; send INT to stop at once"
	}), 2)
}

// Past ShutdownTimeout the master kills what still runs, and exits 0.
func TestShutdownTimeout(t *testing.T) {
	a := startApp(t, appSpec{Workers: 1, Shutdown: 500 * time.Millisecond})
	pid := a.Started(1)[0]
	go flocktest.Get(a.URL("/sleep?d=60s"))
	a.WaitFor("the request to arrive", 5*time.Second, func(r flocktest.Rec) bool { return r.Str("event") == "sleeping" })
	start := time.Now()
	a.Signal(syscall.SIGTERM)
	assert.Equal(t, 0, a.ExitCode(10*time.Second))
	assert.Less(t, time.Since(start), 5*time.Second)
	e := a.Events("exited")
	require.Len(t, e, 1)
	assert.Equal(t, pid, e[0].Int("pid"))
	assert.Equal(t, string(ExitKilled), e[0].Str("reason"))
	assert.Equal(t, "SIGKILL", e[0].Str("signal"))
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
			pids := a.Started(2)
			go flocktest.Get(a.URL("/sleep?d=60s"))
			a.WaitFor("the request to arrive", 5*time.Second, func(r flocktest.Rec) bool { return r.Str("event") == "sleeping" })
			if graceful {
				a.Signal(syscall.SIGTERM)
				a.WaitFor("shutdown", 5*time.Second, func(r flocktest.Rec) bool { return r.Str("event") == "shutdown" })
			}
			a.Signal(syscall.SIGINT)
			assert.Equal(t, 130, a.ExitCode(5*time.Second))
			for _, pid := range pids {
				assert.False(t, flocktest.Alive(pid), "worker %d still alive", pid)
			}
			assert.NotEmpty(t, a.Find(func(r flocktest.Rec) bool { return r.Str("event") == "exited" && r.Str("reason") == string(ExitKilled) }))
		})
	}
}

// Signals meant for the master neither stop nor kill a worker.
func TestWorkerIgnoresMasterSignals(t *testing.T) {
	a := startApp(t, appSpec{Workers: 1})
	pid := a.Started(1)[0]
	for _, sig := range []syscall.Signal{syscall.SIGTTIN, syscall.SIGTTOU, syscall.SIGHUP, syscall.SIGUSR2} {
		require.NoError(t, syscall.Kill(pid, sig))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	res := flocktest.Load(ctx, a.URL("/"), 2, 200, true)
	assert.Zero(t, res.Failed.Load(), res.String())
	assert.NotEqual(t, "T", flocktest.ProcState(pid), "worker is stopped")
	got, err := flocktest.Get(a.URL("/"))
	require.NoError(t, err)
	assert.Equal(t, pid, got, "the same worker still serves")
	assert.Empty(t, a.Events("exited"))
}
