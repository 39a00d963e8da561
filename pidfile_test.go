package flock

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// pidFiles lists the pid files in dir as "role.pid" names, each checked
// to hold its pid.
func pidFiles(t *testing.T, dir string) []string {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(dir, "*.pid"))
	require.NoError(t, err)
	var out []string
	for _, name := range names {
		base := filepath.Base(name)
		b, err := os.ReadFile(name)
		if err != nil {
			continue // removed meanwhile
		}
		out = append(out, base)
		var role string
		var pid int
		if _, err := fmt.Sscanf(strings.ReplaceAll(base, ".", " "), "%s %d pid", &role, &pid); assert.NoError(t, err, base) {
			assert.Equal(t, strconv.Itoa(pid)+"\n", string(b), base)
		}
	}
	slices.Sort(out)
	return out
}

// PIDDir (cluster2's pids): master.PID.pid and one worker.PID.pid per
// worker, kept in step with the processes; what a dead process left is
// removed at start; nothing is left after the shutdown.
func TestPIDDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pids")
	require.NoError(t, os.MkdirAll(dir, 0o755))
	stale := filepath.Join(dir, "worker.999999.pid") // beyond pid_max's default
	require.NoError(t, os.WriteFile(stale, []byte("999999\n"), 0o644))

	a := startApp(t, appSpec{Workers: 2, PIDDir: dir})
	pids := a.Started(2)
	want := func(workers ...int) []string {
		out := []string{fmt.Sprintf("master.%d.pid", a.PID)}
		for _, pid := range workers {
			out = append(out, fmt.Sprintf("worker.%d.pid", pid))
		}
		slices.Sort(out)
		return out
	}
	a.WaitUntil("the pid files", 5*time.Second, func() bool { return slices.Equal(pidFiles(t, dir), want(pids...)) })
	assert.NoFileExists(t, stale)

	require.NoError(t, syscall.Kill(pids[0], syscall.SIGKILL))
	again := a.Started(3)[2]
	a.WaitUntil("the re-fork's pid file", 5*time.Second, func() bool { return slices.Equal(pidFiles(t, dir), want(pids[1], again)) })

	a.Signal(syscall.SIGTERM)
	assert.Equal(t, 0, a.ExitCode(10*time.Second))
	assert.Empty(t, pidFiles(t, dir))
}
