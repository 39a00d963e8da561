package flock

import (
	"encoding/json"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/flockhq/flock/internal/flocktest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// startSingle starts the test application with FLOCK_SINGLE=1.
func startSingle(t *testing.T, s appSpec) *flocktest.App {
	t.Helper()
	s.Addr = "127.0.0.1:0"
	js, err := json.Marshal(s)
	require.NoError(t, err)
	a := flocktest.Start(t, exec.Command(os.Args[0]), envTestApp+"="+string(js), envSingle+"=1")
	a.Listening()
	return a
}

// FLOCK_SINGLE=1 (cluster2's cluster: false): the calling process serves
// the handler itself, with no master, no worker and no monitor; TERM drains
// what is in flight and exits 0.
func TestSingleProcess(t *testing.T) {
	a := startSingle(t, appSpec{Workers: 4})
	pid, err := flocktest.Get(a.URL("/"))
	require.NoError(t, err)
	assert.Equal(t, a.PID, pid, "served by the process itself")
	assert.Empty(t, a.Events("forked"))
	assert.Empty(t, a.Monitor)

	a.Signal(syscall.SIGHUP) // ignored
	inFlight := make(chan error, 1)
	go func() { _, err := flocktest.Get(a.URL("/sleep?d=1s")); inFlight <- err }()
	a.WaitFor("the request", 5*time.Second, func(r flocktest.Rec) bool { return r.Str("event") == "sleeping" })
	a.Signal(syscall.SIGTERM)
	require.NoError(t, <-inFlight)
	assert.Equal(t, 0, a.ExitCode(10*time.Second))
}

// INT stops a single process at once (exit 130 in the test application).
func TestSingleProcessInterrupt(t *testing.T) {
	a := startSingle(t, appSpec{})
	go flocktest.Get(a.URL("/sleep?d=60s"))
	a.WaitFor("the request", 5*time.Second, func(r flocktest.Rec) bool { return r.Str("event") == "sleeping" })
	a.Signal(syscall.SIGINT)
	assert.Equal(t, 130, a.ExitCode(5*time.Second))
}
