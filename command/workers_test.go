package command

import (
	"fmt"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/flockhq/flock/internal/flocktest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// exe is the binary process pid runs.
func exe(t *testing.T, pid int) string {
	t.Helper()
	p, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	require.NoError(t, err)
	return p
}

// Upgrading one worker onto another binary changes that worker's slot
// only: a crash elsewhere is re-forked from the binary it ran.
func TestUpgradeOneWorkerOnly(t *testing.T) {
	a := startApp(t, 2)
	pids := a.Started(2)
	self := exe(t, pids[1])
	other := flocktest.CopyBinary(t)
	code, body, _ := a.call(fmt.Sprintf("upgrade %d %s", pids[0], other))
	require.Equal(t, 200, code, body)
	upgraded := a.Started(3)[2]
	assert.Equal(t, other, exe(t, upgraded))

	require.NoError(t, syscall.Kill(pids[1], syscall.SIGKILL))
	again := a.Started(4)[3]
	assert.Equal(t, self, exe(t, again), "the crashed worker is re-forked from the binary it ran")
}

// shutdown <pid> answers once the worker and a replacement that was
// booting beside it have both exited.
func TestShutdownWaitsForReplacement(t *testing.T) {
	a := startApp(t, 2)
	pids := a.Started(2)
	require.NoError(t, os.WriteFile(slowBoot, nil, 0o644))
	defer os.Remove(slowBoot)
	restarted := make(chan int)
	go func() { code, _, _ := a.call(fmt.Sprintf("restart %d", pids[0])); restarted <- code }()
	next := a.WaitFor("the replacement", 10*time.Second, func(r flocktest.Rec) bool {
		return r.Str("event") == "forked" && r.Str("reason") == "restart"
	}).Int("pid")

	code, body, _ := a.call(fmt.Sprintf(`shutdown %d {"timeout":500}`, pids[0]))
	require.Equal(t, 200, code, body)
	assert.False(t, flocktest.Alive(pids[0]), "the worker")
	assert.False(t, flocktest.Alive(next), "its booting replacement")
	<-restarted
}
