package flock

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Each lifecycle operation runs under load, once with keep-alive clients
// and once with a new connection per request, and must not fail a request.
var loadModes = []struct {
	name      string
	keepAlive bool
}{{"keepalive", true}, {"newconn", false}}

// HUP replaces every worker with the binary now on disk, each new worker
// ready before its old one drains: no request fails.
func TestHUPRollingRestartUnderLoad(t *testing.T) {
	for _, mode := range loadModes {
		t.Run(mode.name, func(t *testing.T) {
			bin := copyTestBinary(t)
			a := startAppAt(t, bin, appSpec{Workers: 4, InitDelay: 200 * time.Millisecond})
			old := a.started(4)
			installBinary(t, bin, "") // a deploy: a new file at the same path
			stop := startLoad(a.url("/"), 8, mode.keepAlive)
			time.Sleep(300 * time.Millisecond)
			a.signal(syscall.SIGHUP)
			done := a.waitFor("the roll to finish", 20*time.Second, func(r rec) bool { return r.str("event") == "roll" && r.str("reason") != "began" })
			time.Sleep(300 * time.Millisecond)
			res := stop()
			t.Log(res, "; roll:", done.str("reason"))
			assert.Zero(t, res.failed.Load(), res.String())
			assert.True(t, strings.HasPrefix(done.str("reason"), "done in "), done.str("reason"))
			assert.Equal(t, 4, done.int("workers"))

			ready := a.events("ready")
			require.Len(t, ready, 8)
			for _, r := range ready[4:] {
				pid := r.int("pid")
				assert.NotContains(t, old, pid)
				exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
				require.NoError(t, err)
				assert.Equal(t, bin, exe, "new workers run the new binary")
			}
			for _, e := range a.events("exited") {
				assert.Contains(t, old, e.int("pid"))
				assert.Equal(t, ReasonRestart, e.str("reason"))
			}
		})
	}
}

// A new binary whose workers never become ready stops the roll; the old
// workers keep serving and nothing fails.
func TestHUPWithBrokenBinaryKeepsServing(t *testing.T) {
	bin := copyTestBinary(t)
	real := bin + ".real"
	require.NoError(t, os.Link(bin, real))
	a := startAppAt(t, bin, appSpec{Workers: 2})
	old := a.started(2)
	installBinary(t, bin, "#!/bin/sh\nFLOCK_TEST_BREAK=1 exec "+real+" \"$@\"\n")
	stop := startLoad(a.url("/"), 4, false)
	a.signal(syscall.SIGHUP)
	done := a.waitFor("the roll to stop", 20*time.Second, func(r rec) bool { return r.str("event") == "roll" && r.str("reason") != "began" })
	res := stop()
	assert.Zero(t, res.failed.Load(), res.String())
	assert.Contains(t, done.str("reason"), "failed: a new worker did not become ready: slot ")
	for _, pid := range old {
		assert.True(t, alive(pid), "old worker %d was stopped", pid)
	}
	pid, err := get(a.url("/"))
	require.NoError(t, err)
	assert.Contains(t, old, pid)
}

func TestRecycleAfterMaxRequests(t *testing.T) {
	a := startApp(t, appSpec{Workers: 2, MaxRequests: 200})
	a.started(2)
	stop := startLoad(a.url("/"), 4, true)
	a.waitUntil("two recycles", 20*time.Second, func() bool {
		return len(a.find(func(r rec) bool { return r.str("event") == "exited" && r.str("reason") == ReasonRecycle })) >= 2
	})
	res := stop()
	assert.Zero(t, res.failed.Load(), res.String())
	assert.Empty(t, a.find(func(r rec) bool { return r.str("event") == "exited" && r.str("reason") != ReasonRecycle }))
}

func TestTTINUnderLoad(t *testing.T) {
	for _, mode := range loadModes {
		t.Run(mode.name, func(t *testing.T) {
			a := startApp(t, appSpec{Workers: 1, InitDelay: 100 * time.Millisecond})
			a.started(1)
			stop := startLoad(a.url("/"), 8, mode.keepAlive)
			for range 3 {
				a.signal(syscall.SIGTTIN)
				time.Sleep(100 * time.Millisecond)
			}
			a.started(4)
			time.Sleep(300 * time.Millisecond)
			res := stop()
			assert.Zero(t, res.failed.Load(), res.String())
		})
	}
}

// TTOU with net.ipv4.tcp_migrate_req=1 (set in a network namespace of the
// test's own) loses nothing: the kernel hands what was queued on the
// removed worker's socket to the others.
func TestTTOUUnderLoadWithMigration(t *testing.T) {
	if !inNetns(t, "sysctl -qw net.ipv4.tcp_migrate_req=1") {
		return
	}
	for _, mode := range loadModes {
		t.Run(mode.name, func(t *testing.T) {
			a := startApp(t, appSpec{Workers: 4})
			a.started(4)
			stop := startLoad(a.url("/"), 8, mode.keepAlive)
			time.Sleep(200 * time.Millisecond)
			for range 3 {
				a.signal(syscall.SIGTTOU)
				time.Sleep(100 * time.Millisecond)
			}
			a.waitUntil("3 workers gone", 10*time.Second, func() bool { return len(a.events("exited")) == 3 })
			time.Sleep(300 * time.Millisecond)
			res := stop()
			assert.Zero(t, res.failed.Load(), res.String())
		})
	}
}

// kill -9 of a worker under load loses at most what was inside it: with 8
// clients, at most 8 requests.
func TestKillWorkerUnderLoad(t *testing.T) {
	a := startApp(t, appSpec{Workers: 2})
	pids := a.started(2)
	stop := startLoad(a.url("/"), 8, false)
	time.Sleep(300 * time.Millisecond)
	require.NoError(t, syscall.Kill(pids[0], syscall.SIGKILL))
	a.started(3)
	time.Sleep(300 * time.Millisecond)
	res := stop()
	t.Log(res)
	assert.LessOrEqual(t, res.failed.Load(), int64(8), res.String())
}

// A worker that stops answering (here: SIGSTOP) is killed after Timeout
// and replaced.
func TestHeartbeatReplacesStoppedWorker(t *testing.T) {
	a := startApp(t, appSpec{Workers: 2, Timeout: 500 * time.Millisecond})
	pids := a.started(2)
	require.NoError(t, syscall.Kill(pids[0], syscall.SIGSTOP))
	start := time.Now()
	e := a.waitFor("the hung worker's exit", 10*time.Second, func(r rec) bool { return r.str("event") == "exited" })
	t.Logf("killed %v after SIGSTOP", time.Since(start))
	assert.Equal(t, pids[0], e.int("pid"))
	assert.Equal(t, ReasonTimeout, e.str("reason"))
	a.started(3)
	assert.True(t, alive(pids[1]), "the healthy worker is untouched")
}

// A master suspended for longer than Timeout does not kill its healthy
// workers when it resumes.
func TestSuspendedMasterKeepsHealthyWorkers(t *testing.T) {
	a := startApp(t, appSpec{Workers: 2, Timeout: 300 * time.Millisecond})
	pids := a.started(2)
	require.NoError(t, syscall.Kill(a.pid, syscall.SIGSTOP))
	time.Sleep(1500 * time.Millisecond)
	require.NoError(t, syscall.Kill(a.pid, syscall.SIGCONT))
	time.Sleep(1500 * time.Millisecond) // pings answered; several Timeouts pass
	assert.Empty(t, a.events("exited"))
	for _, pid := range pids {
		assert.True(t, alive(pid))
	}
}

// A worker not ready within BootTimeout is killed; it counts as a crash.
func TestBootTimeout(t *testing.T) {
	a := startApp(t, appSpec{Workers: 1, InitDelay: time.Minute, BootTimeout: 300 * time.Millisecond})
	a.listening()
	e := a.waitFor("a boot timeout", 10*time.Second, func(r rec) bool { return r.str("event") == "exited" })
	assert.Equal(t, ReasonBootTimeout, e.str("reason"))
	assert.NotEmpty(t, e.str("restart_in"), "it is re-forked like a crash")
	code, state := a.ecvState()
	assert.Equal(t, 500, code)
	assert.Equal(t, "WARNING", state)
}

func TestRollWidth(t *testing.T) {
	for n, want := range map[int]int{0: 1, 1: 1, 2: 1, 3: 1, 4: 2, 16: 6, 100: 34} {
		assert.Equal(t, want, rollWidth(n, defaultConcurrencyRatio), "n=%d", n)
	}
	assert.Equal(t, 11, rollWidth(10, 1))
	assert.Equal(t, 1, rollWidth(10, 0.01))
}
