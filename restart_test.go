package flock

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flockhq/flock/internal/flocktest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Each lifecycle operation runs under load, once with keep-alive clients
// and once with a new connection per request, and must not fail a request.
var loadModes = []struct {
	name      string
	keepAlive bool
}{{"keepalive", true}, {"newconn", false}}

// traffic is how many requests a test lets the load complete before an
// operation under load (so that every client is busy, and keep-alive
// connections are open on the workers the operation replaces) and after
// it (so that what replaced them serves under load too): a count, not a
// time, so that it holds on a slow machine.
const traffic = 200

// HUP replaces every worker with the binary now on disk, each new worker
// ready before its old one drains: no request fails.
func TestHUPRollingRestartUnderLoad(t *testing.T) {
	for _, mode := range loadModes {
		t.Run(mode.name, func(t *testing.T) {
			bin := flocktest.CopyBinary(t)
			a := startAppAt(t, bin, appSpec{Workers: 4, InitDelay: 200 * time.Millisecond})
			old := a.Started(4)
			flocktest.InstallBinary(t, bin, "") // a deploy: a new file at the same path
			load := flocktest.StartLoad(t, a.URL("/"), 8, mode.keepAlive)
			load.WaitRequests(traffic)
			a.Signal(syscall.SIGHUP)
			done := a.WaitFor("the roll to finish", 20*time.Second, func(r flocktest.Rec) bool { return r.Str("event") == "roll" && r.Str("reason") != "began" })
			load.WaitRequests(traffic)
			res := load.Stop()
			t.Log(res, "; roll:", done.Str("reason"))
			assert.Zero(t, res.Failed.Load(), res.String())
			assert.True(t, strings.HasPrefix(done.Str("reason"), "done in "), done.Str("reason"))
			assert.Equal(t, 4, done.Int("workers"))

			ready := a.Events("ready")
			require.Len(t, ready, 8)
			for _, r := range ready[4:] {
				pid := r.Int("pid")
				assert.NotContains(t, old, pid)
				exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
				require.NoError(t, err)
				assert.Equal(t, bin, exe, "new workers run the new binary")
			}
			for _, e := range a.Events("exited") {
				assert.Contains(t, old, e.Int("pid"))
				assert.Equal(t, string(ExitRestart), e.Str("reason"))
			}
		})
	}
}

// A new binary whose workers never become ready stops the roll; the old
// workers keep serving and nothing fails.
func TestHUPWithBrokenBinaryKeepsServing(t *testing.T) {
	bin := flocktest.CopyBinary(t)
	real := bin + ".real"
	require.NoError(t, os.Link(bin, real))
	a := startAppAt(t, bin, appSpec{Workers: 2})
	old := a.Started(2)
	flocktest.InstallBinary(t, bin, "#!/bin/sh\nFLOCK_TEST_BREAK=1 exec "+real+" \"$@\"\n")
	load := flocktest.StartLoad(t, a.URL("/"), 4, false)
	a.Signal(syscall.SIGHUP)
	done := a.WaitFor("the roll to stop", 20*time.Second, func(r flocktest.Rec) bool { return r.Str("event") == "roll" && r.Str("reason") != "began" })
	res := load.Stop()
	assert.Zero(t, res.Failed.Load(), res.String())
	assert.Contains(t, done.Str("reason"), "failed: a new worker did not become ready: slot ")
	a.StillServedBy(old)
}

// MaxRequests, MaxConnections, MaxUptime and MaxMemory each recycle
// workers, one at a time and readiness-gated, under load, without a failed
// request.
func TestRecycle(t *testing.T) {
	for name, spec := range map[string]appSpec{
		"MaxRequests":    {Workers: 2, MaxRequests: 200},
		"MaxConnections": {Workers: 2, MaxConnections: 300}, // cluster2's connThreshold
		"MaxUptime":      {Workers: 2, MaxUptime: 300 * time.Millisecond},
		"MaxMemory":      {Workers: 2, MaxMemory: 1 << 20}, // every Go process is bigger
	} {
		t.Run(name, func(t *testing.T) {
			a := startApp(t, spec)
			a.Started(2)
			// A keep-alive connection counts once: MaxConnections needs new ones.
			load := flocktest.StartLoad(t, a.URL("/"), 4, spec.MaxConnections == 0)
			a.WaitUntil("two recycles", 20*time.Second, func() bool {
				return len(a.Find(func(r flocktest.Rec) bool {
					return r.Str("event") == "exited" && r.Str("reason") == string(ExitRecycle)
				})) >= 2
			})
			res := load.Stop()
			assert.Zero(t, res.Failed.Load(), res.String())
			assert.Empty(t, a.Find(func(r flocktest.Rec) bool {
				return r.Str("event") == "exited" && r.Str("reason") != string(ExitRecycle)
			}))
			why := a.WaitFor("the reason", time.Second, func(r flocktest.Rec) bool { return r.Str("msg") == "flock: recycling worker" })
			assert.Contains(t, why.Str("why"), name)
		})
	}
}

func TestTTINUnderLoad(t *testing.T) {
	for _, mode := range loadModes {
		t.Run(mode.name, func(t *testing.T) {
			a := startApp(t, appSpec{Workers: 1, InitDelay: 100 * time.Millisecond})
			a.Started(1)
			load := flocktest.StartLoad(t, a.URL("/"), 8, mode.keepAlive)
			for range 3 {
				a.SignalUntil(syscall.SIGTTIN, "a slot added", flocktest.Event("scaled"))
			}
			a.Started(4)
			load.WaitRequests(traffic)
			res := load.Stop()
			assert.Zero(t, res.Failed.Load(), res.String())
		})
	}
}

// TTOU under load loses nothing, with net.ipv4.tcp_migrate_req on (the
// kernel hands the removed socket's queue over) and off (the master keeps
// the socket open as a spare and hands it to the running workers). Each
// runs in a network namespace of the test's own, where the sysctl is set.
// A TTIN afterwards (which reuses a spare) and the shutdown lose nothing
// either.
func TestTTOUUnderLoad(t *testing.T) {
	for _, migrate := range []string{"0", "1"} {
		t.Run("tcp_migrate_req="+migrate, func(t *testing.T) {
			if !flocktest.InNetns(t, "sysctl -qw net.ipv4.tcp_migrate_req="+migrate) {
				return
			}
			for _, mode := range loadModes {
				a := startApp(t, appSpec{Workers: 4})
				a.Started(4)
				load := flocktest.StartLoad(t, a.URL("/"), 8, mode.keepAlive)
				load.WaitRequests(traffic)
				for range 3 {
					a.SignalUntil(syscall.SIGTTOU, "a slot removed", flocktest.Event("scaled"))
				}
				// Three slots gone (nothing is started for a TTOU: exactly
				// three scale-down exits), one worker left, serving.
				a.WaitUntil("3 workers gone", 10*time.Second, func() bool {
					return len(a.Find(func(r flocktest.Rec) bool { return r.Str("reason") == string(ExitScaleDown) })) == 3
				})
				readyStatus(a, 1)
				a.Signal(syscall.SIGTTIN)
				a.WaitUntil("the new worker", 10*time.Second, func() bool {
					return len(a.Find(func(r flocktest.Rec) bool { return r.Str("event") == "forked" && r.Str("reason") == string(StartScale) })) == 1
				})
				load.WaitRequests(traffic)
				res := load.Stop()
				t.Logf("%s: %s", mode.name, res)
				assert.Zero(t, res.Failed.Load(), "%s: %s", mode.name, res)
				spared := len(a.Find(func(r flocktest.Rec) bool { return r.Str("msg") == "flock: serving a spare socket too" }))
				if migrate == "1" {
					assert.Zero(t, spared, "with migration the socket just closes")
				} else {
					assert.Positive(t, spared, "without migration the running workers take the spares over")
				}
				assert.Empty(t, a.Find(func(r flocktest.Rec) bool {
					return r.Str("event") == "forked" && r.Str("reason") != string(StartFirst) && r.Str("reason") != string(StartScale)
				}), "no worker is restarted for TTOU")
				a.Signal(syscall.SIGTERM)
				assert.Equal(t, 0, a.ExitCode(10*time.Second))
			}
		})
	}
}

// kill -9 of a worker under load loses at most what was inside it: with 8
// clients, at most 8 requests.
func TestKillWorkerUnderLoad(t *testing.T) {
	a := startApp(t, appSpec{Workers: 2})
	pids := a.Started(2)
	load := flocktest.StartLoad(t, a.URL("/"), 8, false)
	load.WaitRequests(traffic)
	require.NoError(t, syscall.Kill(pids[0], syscall.SIGKILL))
	a.Started(3)
	load.WaitRequests(traffic)
	res := load.Stop()
	t.Log(res)
	assert.LessOrEqual(t, res.Failed.Load(), int64(8), res.String())
}

// A worker that stops answering (here: SIGSTOP) is killed after Timeout
// and replaced.
func TestHeartbeatReplacesStoppedWorker(t *testing.T) {
	a := startApp(t, appSpec{Workers: 2, Timeout: 500 * time.Millisecond})
	pids := a.Started(2)
	require.NoError(t, syscall.Kill(pids[0], syscall.SIGSTOP))
	start := time.Now()
	e := a.WaitFor("the hung worker's exit", 10*time.Second, func(r flocktest.Rec) bool { return r.Str("event") == "exited" })
	t.Logf("killed %v after SIGSTOP", time.Since(start))
	assert.Equal(t, pids[0], e.Int("pid"))
	assert.Equal(t, string(ExitTimeout), e.Str("reason"))
	a.Started(3)
	assert.True(t, flocktest.Alive(pids[1]), "the healthy worker is untouched")
}

// A master suspended for longer than Timeout does not kill its healthy
// workers when it resumes.
func TestSuspendedMasterKeepsHealthyWorkers(t *testing.T) {
	a := startApp(t, appSpec{Workers: 2, Timeout: 300 * time.Millisecond})
	pids := a.Started(2)
	require.NoError(t, syscall.Kill(a.PID, syscall.SIGSTOP))
	// The point of the test: time passes (five Timeouts) while the master
	// is stopped, so that it finds every worker silent when it resumes.
	time.Sleep(1500 * time.Millisecond)
	require.NoError(t, syscall.Kill(a.PID, syscall.SIGCONT))

	// On resuming, the master must ask each worker for a sign of life
	// (ping) and wait Timeout for the answer, not kill it. Wait until it
	// has heard from each worker twice since: a worker reports its request
	// count on a one-second ticker, and only when it changed, so sending
	// requests until every worker's count on the status page has grown
	// twice takes about a second of the master running, past the ping's
	// answer window and several heartbeats. A worker killed meanwhile
	// ends the wait, and the assertion below reports it.
	heard := func(what string, since map[int]int64) map[int]int64 {
		var counts map[int]int64
		a.WaitUntil(what, 10*time.Second, func() bool {
			if len(a.Events("exited")) > 0 {
				return true
			}
			counts = map[int]int64{}
			flocktest.Get(a.URL("/")) // a failure shows as an exit, reported below
			code, body, _ := a.Mon("GET", "/")
			require.Equal(t, 200, code, body)
			var st Status
			require.NoError(t, json.Unmarshal([]byte(body), &st))
			for _, w := range st.Workers {
				counts[w.PID] = w.Requests
			}
			for _, pid := range pids {
				if counts[pid] <= since[pid] {
					return false
				}
			}
			return true
		})
		return counts
	}
	first := heard("a report from each worker after the resume", nil)
	heard("a second report from each worker", first)
	assert.Empty(t, a.Events("exited"))
	for _, pid := range pids {
		assert.True(t, flocktest.Alive(pid))
	}
}

// A worker not ready within BootTimeout is killed; it counts as a crash.
func TestBootTimeout(t *testing.T) {
	a := startApp(t, appSpec{Workers: 1, InitDelay: time.Minute, BootTimeout: 300 * time.Millisecond})
	a.Listening()
	e := a.WaitFor("a boot timeout", 10*time.Second, func(r flocktest.Rec) bool { return r.Str("event") == "exited" })
	assert.Equal(t, string(ExitBootTimeout), e.Str("reason"))
	assert.NotEmpty(t, e.Str("restart_in"), "it is re-forked like a crash")
	code, state := ecvState(a)
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
