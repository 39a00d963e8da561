package flocktest

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Lifecycle puts an HTTP service of n workers through the README's signal
// table, as every kind of worker must survive it:
//
//   - HUP under load (keep-alive clients and a new connection per
//     request): every worker replaced, no request failed;
//   - TTOU under the same load: one worker fewer, no request failed;
//   - kill -9 of a worker: it is re-forked, and the service answers;
//   - TERM while a request is in flight: the request completes, the
//     master exits 0.
//
// The service must answer "/?sleep=MS" with its headers at once and the
// end of its body MS milliseconds later, so that the request is known to be
// in flight (its headers have come) when TERM is sent. Results are logged.
func Lifecycle(a *App, n int) {
	t := a.t
	t.Helper()
	first := a.Started(n)
	fresh := StartLoad(t, a.URL("/"), 4, false)
	kept := StartLoad(t, a.URL("/"), 4, true)
	both := func(k int64) { fresh.WaitRequests(k); kept.WaitRequests(k) }
	both(200)

	rolls := len(a.Find(rollDone))
	a.Signal(syscall.SIGHUP)
	a.WaitUntil("the HUP roll", 60*time.Second, func() bool { return len(a.Find(rollDone)) > rolls })
	ready := a.Events("ready")
	require.GreaterOrEqual(t, len(ready), 2*n, "every worker replaced")
	for _, r := range ready[n:] {
		assert.NotContains(t, first, r.Int("pid"), "a replacement is a new process")
	}
	both(200)

	a.Signal(syscall.SIGTTOU)
	a.WaitFor("a worker gone on TTOU", 30*time.Second, func(r Rec) bool { return r.Str("reason") == "scale-down" })
	both(200)
	NoFailures(t, "HUP and TTOU under load", map[string]*LoadRun{"new connection per request": fresh, "keep-alive": kept})

	a.Settled(n - 1) // a worker replaced to serve the TTOU's spare socket, say, is not the one to kill
	victim, err := Get(a.URL("/"))
	require.NoError(t, err)
	forks := len(a.Find(failureFork))
	require.NoError(t, syscall.Kill(victim, syscall.SIGKILL))
	a.WaitUntil("the killed worker re-forked", 20*time.Second, func() bool { return len(a.Find(failureFork)) > forks })
	WaitServed(a, 20*time.Second)

	resp, err := http.Get(a.URL("/?sleep=1000"))
	require.NoError(t, err)
	defer resp.Body.Close()
	a.Signal(syscall.SIGTERM)
	body, err := io.ReadAll(resp.Body)
	assert.NoError(t, err, "the request in flight at TERM")
	assert.Equal(t, 200, resp.StatusCode)
	t.Logf("in flight at TERM: %q", body)
	assert.Equal(t, 0, a.ExitCode(40*time.Second), "exit status after TERM")
	assert.Empty(t, a.Find(func(r Rec) bool { return r.Str("reason") == "killed" }), "a worker was killed instead of draining")
}

// Settled waits up to 20 s until the monitor's status shows n workers,
// every one ready: no replacement under way.
func (a *App) Settled(n int) {
	a.t.Helper()
	a.WaitUntil(fmt.Sprintf("%d workers, all ready", n), 20*time.Second, func() bool {
		var st struct{ Workers []struct{ State string } }
		_, body, _ := a.Mon("GET", "/")
		if json.Unmarshal([]byte(body), &st) != nil || len(st.Workers) != n {
			return false
		}
		for _, w := range st.Workers {
			if w.State != "ready" {
				return false
			}
		}
		return true
	})
}

// NoFailures stops the load runs, logs what each counted under what, and
// fails the test if any request failed.
func NoFailures(t *testing.T, what string, runs map[string]*LoadRun) {
	t.Helper()
	for name, l := range runs {
		res := l.Stop()
		t.Logf("%s, %s: %s", what, name, res)
		assert.Zero(t, res.Failed.Load(), "%s, %s: %s", what, name, res)
	}
}

func rollDone(r Rec) bool { return r.Str("event") == "roll" && r.Str("reason") != "began" }

func failureFork(r Rec) bool { return r.Str("event") == "forked" && r.Str("reason") == "failure" }

// WaitServed waits up to d until a request on a new connection is
// answered with 200.
func WaitServed(a *App, d time.Duration) {
	a.t.Helper()
	a.WaitUntil("a request answered", d, func() bool {
		_, err := Get(a.URL("/"))
		return err == nil
	})
}
