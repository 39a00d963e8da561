package flock

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flockhq/flock/internal/flocktest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRestartDelay(t *testing.T) {
	base := 100 * time.Millisecond
	for n, want := range map[int]time.Duration{
		0: base, 1: base, 2: 200 * time.Millisecond, 3: 400 * time.Millisecond,
		8: 12800 * time.Millisecond, 9: maxRestartDelay, 60: maxRestartDelay,
	} {
		assert.Equal(t, want, restartDelay(base, n), "after %d crashes", n)
	}
	assert.Equal(t, maxRestartDelay, restartDelay(time.Minute, 1), "the cap holds for a large base too")
}

func TestRecentFailures(t *testing.T) {
	now := time.Now()
	got := recentFailures([]time.Time{now.Add(-2 * time.Minute), now.Add(-time.Minute), now.Add(-59 * time.Second), now}, now)
	assert.Equal(t, []time.Time{now.Add(-59 * time.Second), now}, got)
}

// A worker killed with SIGKILL is re-forked in the same slot.
func TestCrashedWorkerIsReforked(t *testing.T) {
	a := startApp(t, appSpec{Workers: 2})
	pids := a.Started(2)
	require.NoError(t, syscall.Kill(pids[0], syscall.SIGKILL))
	exit := a.WaitFor("the crash", 5*time.Second, func(r flocktest.Rec) bool { return r.Str("event") == "exited" })
	assert.Equal(t, string(ExitCrash), exit.Str("reason"))
	assert.Equal(t, "SIGKILL", exit.Str("signal"))
	assert.Equal(t, "100ms", exit.Str("restart_in"))
	again := a.WaitFor("a new worker in the slot", 5*time.Second, func(r flocktest.Rec) bool {
		return r.Str("event") == "ready" && r.Int("slot") == exit.Int("slot") && r.Int("pid") != pids[0]
	})
	assert.True(t, flocktest.Alive(again.Int("pid")))
	assert.True(t, flocktest.Alive(pids[1]), "the other worker is untouched")
}

// A worker that fails at boot is re-forked with a growing delay; past the
// budget the slot gives up, and with no slot left Serve returns an error.
func TestBootFailureBacksOffThenGivesUp(t *testing.T) {
	a := startApp(t, appSpec{Workers: 1, FailBoot: true, Restart: 20 * time.Millisecond, Budget: 3})
	assert.Equal(t, 1, a.ExitCode(20*time.Second))
	var delays []string
	for _, e := range a.Events("exited") {
		assert.Equal(t, string(ExitCrash), e.Str("reason"))
		assert.Equal(t, exitBootFailure, e.Int("status"))
		delays = append(delays, e.Str("restart_in"))
	}
	assert.Equal(t, []string{"20ms", "40ms", "80ms", ""}, delays, "the last crash is not re-forked")
	assert.Len(t, a.Events("gave-up"), 1)
	assert.Len(t, a.Find(func(r flocktest.Rec) bool {
		return r.Str("step") == "Init" && r.Str("err") == "init refuses on purpose"
	}), 4)
	assert.NotEmpty(t, a.Find(func(r flocktest.Rec) bool {
		return r.Str("msg") == "flock: no worker left: every slot crashed more than 3 times within a minute (RestartsPerMinute)"
	}))
}

// Workers exit within 2 s of their master, even when it is killed with
// SIGKILL and cannot tell them.
func TestWorkersDieWithMaster(t *testing.T) {
	a := startApp(t, appSpec{Workers: 3})
	pids := a.Started(3)
	require.NoError(t, syscall.Kill(a.PID, syscall.SIGKILL))
	start := time.Now()
	ok := flocktest.Poll(2*time.Second, func() bool {
		for _, pid := range pids {
			if flocktest.Alive(pid) {
				return false
			}
		}
		return true
	})
	assert.True(t, ok, "workers still alive %v after the master was killed", time.Since(start))
}

// Connections queued on a slot's socket while its worker is dead are
// served by the replacement: the master keeps the socket open.
func TestQueuedConnectionsSurviveWorkerCrash(t *testing.T) {
	a := startApp(t, appSpec{Workers: 1})
	old := a.Started(1)[0]
	// Freeze the worker so connections pile up in the accept queue; not
	// one of its threads may run once the test dials (one that still did
	// could accept a connection, which would die with the worker).
	require.NoError(t, syscall.Kill(old, syscall.SIGSTOP))
	a.WaitUntil("the worker to stop", 5*time.Second, func() bool { return flocktest.Stopped(old) })
	// Dial returns once the handshake is done: the connection is queued.
	conns := make([]net.Conn, 20)
	for i := range conns {
		c, err := net.Dial("tcp", a.Addr)
		require.NoError(t, err)
		defer c.Close()
		_, err = c.Write([]byte("GET / HTTP/1.1\r\nHost: flock\r\nConnection: close\r\n\r\n"))
		require.NoError(t, err)
		conns[i] = c
	}
	require.NoError(t, syscall.Kill(old, syscall.SIGKILL))
	var failed []string
	for _, c := range conns {
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err == nil {
			resp.Body.Close()
			switch {
			case resp.StatusCode != 200:
				err = fmt.Errorf("status %d", resp.StatusCode)
			case resp.Header.Get("X-Worker-Pid") == strconv.Itoa(old):
				err = fmt.Errorf("served by the frozen worker")
			}
		}
		if err != nil {
			failed = append(failed, err.Error())
		}
	}
	assert.Empty(t, failed, "queued requests lost: %s", strings.Join(failed, "; "))
}

// A worker told to stop (here by a TERM of its own) drains without losing
// a request, and the master replaces it; the slot's socket stays open, so
// no connection is refused meanwhile.
func TestWorkerRestartUnderLoadLosesNothing(t *testing.T) {
	for _, keepAlive := range []bool{true, false} {
		t.Run(fmt.Sprintf("keepalive=%v", keepAlive), func(t *testing.T) {
			a := startApp(t, appSpec{Workers: 2})
			pids := a.Started(2)
			load := flocktest.StartLoad(t, a.URL("/"), 8, keepAlive)
			load.WaitRequests(traffic)
			for i, pid := range pids {
				require.NoError(t, syscall.Kill(pid, syscall.SIGTERM))
				a.WaitUntil("a replacement", 5*time.Second, func() bool { return len(a.Events("ready")) == len(pids)+i+1 })
			}
			load.WaitRequests(2 * traffic) // the replacements serve under load
			res := load.Stop()
			assert.Zero(t, res.Failed.Load(), res.String())
			assert.Greater(t, res.OK.Load(), int64(500), res.String())
			t.Log(res)
		})
	}
}

// A worker still in Init when its master dies exits too: it has accepted
// nothing, so it goes at once.
func TestBootingWorkersDieWithMaster(t *testing.T) {
	a := startApp(t, appSpec{Workers: 2, InitDelay: time.Minute})
	a.Listening()
	a.WaitUntil("2 workers in Init", 10*time.Second, func() bool { return len(a.Events("init")) == 2 })
	var pids []int
	for _, r := range a.Events("init") {
		pids = append(pids, r.Int("pid"))
	}
	require.NoError(t, syscall.Kill(a.PID, syscall.SIGKILL))
	ok := flocktest.Poll(2*time.Second, func() bool { return !slices.ContainsFunc(pids, flocktest.Alive) })
	assert.True(t, ok, "booting workers outlived their master")
}
