package main

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/flockhq/flock"
	"github.com/flockhq/flock/internal/flocktest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// This program, which uses go-systemd and not flock, under the flock
// command: ready when it says so, kept alive by its WATCHDOG=1, its
// STATUS= in the status page, through the README's signal table.
func TestUnderFlock(t *testing.T) {
	dir := t.TempDir()
	for pkg, out := range map[string]string{".": "activation", "github.com/flockhq/flock/cmd/flock": "flock"} {
		b, err := exec.Command("go", "build", "-o", filepath.Join(dir, out), pkg).CombinedOutput()
		require.NoError(t, err, "go build %s: %s", pkg, b)
	}
	a := flocktest.Start(t, exec.Command(filepath.Join(dir, "flock"), "-log-json", "-addr", "127.0.0.1:0", "-monitor", "127.0.0.1:0",
		"-workers", "2", "-ready", "notify", "-watchdog", "-timeout", "500ms", "-shutdown-timeout", "20s", "--", filepath.Join(dir, "activation")))
	a.Started(2)
	var st flock.Status
	_, body, _ := a.Mon("GET", "/")
	require.NoError(t, json.Unmarshal([]byte(body), &st))
	for _, w := range st.Workers {
		assert.Equal(t, "serving 1 listener(s)", w.Message, "STATUS= of worker %d", w.PID)
		assert.Equal(t, filepath.Join(dir, "activation"), w.Binary.Path)
	}
	// The watchdog: a worker saying WATCHDOG=1 outlives many Timeouts of
	// 500 ms (one silent that long is killed: cmd/flock's
	// TestWatchdogKillsASilentProgram). Nothing marks that nothing
	// happened, so this waits for the workers' age.
	a.WaitUntil("the workers 2 s old", 10*time.Second, func() bool {
		return time.Since(st.Workers[0].Started) > 2*time.Second && time.Since(st.Workers[1].Started) > 2*time.Second
	})
	for _, w := range st.Workers {
		assert.True(t, flocktest.Alive(w.PID), "worker %d, saying WATCHDOG=1, was killed", w.PID)
	}
	assert.Empty(t, a.Find(func(r flocktest.Rec) bool { return r.Str("reason") == "timeout" }), "a worker saying WATCHDOG=1 was killed for silence")

	flocktest.Lifecycle(a, 2)
}
