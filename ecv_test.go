package flock

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/flockhq/flock/internal/flocktest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var ecvBody = regexp.MustCompile(`^status=(AVAILABLE|DISABLED|WARNING)&ServeTraffic=(true|false)&ip=[0-9.]+&hostname=[^&]+&port=(\d+)&time=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$`)

// ecvState asks the monitor and checks the answer is well formed.
func ecvState(a *flocktest.App) (int, string) {
	t := a.T()
	t.Helper()
	code, body, h := a.Mon("GET", "/ecv")
	m := ecvBody.FindStringSubmatch(body)
	require.NotNil(t, m, "malformed ECV body %q", body)
	assert.Equal(t, "text/plain; charset=utf-8", h.Get("Content-Type"))
	assert.Equal(t, "no-cache", h.Get("Cache-Control"))
	_, err := http.ParseTime(h.Get("Since"))
	assert.NoError(t, err, "Since: %q", h.Get("Since"))
	_, port, _ := net.SplitHostPort(a.Addr)
	assert.Equal(t, port, m[3], "port is the application port")
	assert.Equal(t, m[1] == "AVAILABLE", m[2] == "true")
	return code, m[1]
}

func TestECV(t *testing.T) {
	a := startApp(t, appSpec{Workers: 2})
	a.Started(2)

	code, state := ecvState(a)
	assert.Equal(t, 200, code)
	assert.Equal(t, "AVAILABLE", state)
	code, body, _ := a.Mon("HEAD", "/ecv")
	assert.Equal(t, 200, code)
	assert.Empty(t, body)
	code, _, h := a.Mon("POST", "/ecv")
	assert.Equal(t, 405, code)
	assert.Equal(t, "GET, HEAD", h.Get("Allow"))
	code, _, _ = a.Mon("GET", "/ecv/disable")
	assert.Equal(t, 405, code)
	code, _, _ = a.Mon("GET", "/nowhere")
	assert.Equal(t, 404, code)

	code, _, _ = a.Mon("POST", "/ecv/disable")
	assert.Equal(t, 204, code)
	code, state = ecvState(a)
	assert.Equal(t, 400, code)
	assert.Equal(t, "DISABLED", state)
	_, err := flocktest.Get(a.URL("/"))
	assert.NoError(t, err, "disabled in the ECV still serves")

	// The state lives in the master: killing every worker does not undo it.
	for _, pid := range a.Started(2) {
		require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
	}
	a.Started(4)
	code, state = ecvState(a)
	assert.Equal(t, 400, code)
	assert.Equal(t, "DISABLED", state)

	code, _, _ = a.Mon("POST", "/ecv/enable")
	assert.Equal(t, 204, code)
	code, state = ecvState(a)
	assert.Equal(t, 200, code)
	assert.Equal(t, "AVAILABLE", state)
	assert.Len(t, a.Find(func(r flocktest.Rec) bool { return r.Str("event") == "ecv" }), 2)
}

func TestMonitorStatusPage(t *testing.T) {
	a := startApp(t, appSpec{Workers: 2})
	a.Started(2)
	for range 10 {
		_, err := flocktest.Get(a.URL("/"))
		require.NoError(t, err)
	}
	var st Status
	a.WaitUntil("request counts to reach the master", 5*time.Second, func() bool {
		code, body, h := a.Mon("GET", "/")
		require.Equal(t, 200, code)
		require.Equal(t, "application/json", h.Get("Content-Type"))
		require.NoError(t, json.Unmarshal([]byte(body), &st))
		var n int64
		for _, w := range st.Workers {
			n += w.Requests
		}
		return n == 10
	})
	assert.Equal(t, a.PID, st.PID)
	assert.Equal(t, "AVAILABLE", st.ECV)
	assert.Equal(t, MasterRunning, st.State)
	assert.WithinDuration(t, time.Now(), st.Started, time.Minute)
	require.Len(t, st.Workers, 2)
	for _, w := range st.Workers {
		assert.Equal(t, WorkerReady, w.State)
		assert.Greater(t, w.RSS, int64(1<<20), "RSS of %d", w.PID)
		assert.True(t, flocktest.Alive(w.PID))
	}
}

// No worker ready: WARNING.
func TestECVWarningWithoutReadyWorker(t *testing.T) {
	a := startApp(t, appSpec{Workers: 1, FailBoot: true, Restart: 200 * time.Millisecond, Budget: 1000})
	a.Listening()
	a.WaitFor("a failed boot", 10*time.Second, func(r flocktest.Rec) bool { return r.Str("event") == "exited" })
	code, state := ecvState(a)
	assert.Equal(t, 500, code)
	assert.Equal(t, "WARNING", state)
}

// A failing, slow or unreachable probe is a WARNING within the probe's
// bound; a passing one is AVAILABLE.
func TestECVProbe(t *testing.T) {
	nobody := flocktest.RefusingAddr(t)
	for _, tc := range []struct {
		probe string
		want  int
	}{
		{"/", 200},
		{"/fail", 500},
		{"/sleep?d=10s", 500},
		{"http://" + nobody + "/", 500},
	} {
		t.Run(tc.probe, func(t *testing.T) {
			a := startApp(t, appSpec{Workers: 1, Probe: tc.probe, ProbeTimeout: 300 * time.Millisecond})
			a.Started(1)
			start := time.Now()
			code, _ := ecvState(a)
			assert.Equal(t, tc.want, code)
			assert.Less(t, time.Since(start), 2*time.Second, "the ECV waited on the probe past its bound")
		})
	}
}

// On TERM the ECV turns DISABLED at once, while the workers keep serving
// for DrainDelay; the monitor answers until the master exits.
func TestECVLameDuck(t *testing.T) {
	a := startApp(t, appSpec{Workers: 1, Drain: 1500 * time.Millisecond})
	a.Started(1)
	a.Signal(syscall.SIGTERM)
	a.WaitFor("shutdown", 5*time.Second, func(r flocktest.Rec) bool { return r.Str("event") == "shutdown" })
	code, state := ecvState(a)
	assert.Equal(t, 400, code)
	assert.Equal(t, "DISABLED", state)
	_, err := flocktest.Get(a.URL("/"))
	assert.NoError(t, err, "workers serve during the drain delay")
	assert.Empty(t, a.Events("exited"), "no worker stops before DrainDelay")
	assert.Equal(t, 0, a.ExitCode(10*time.Second))
}

func TestMonitorOffAndReadOnly(t *testing.T) {
	a := startApp(t, appSpec{Workers: 1, Monitor: "off"})
	a.Started(1)
	assert.Empty(t, a.Monitor)

	b := startApp(t, appSpec{Workers: 1, ReadOnly: true})
	b.Started(1)
	code, _, _ := b.Mon("POST", "/ecv/disable")
	assert.Equal(t, 404, code)
	code, _ = ecvState(b)
	assert.Equal(t, 200, code)
}

// Control from a caller that is not on loopback needs the access key. The
// test runs in its own network namespace with a TEST-NET address added to
// its lo, so the caller's address is not a loopback one and no traffic
// leaves the namespace.
func TestECVControlFromNonLoopback(t *testing.T) {
	const ip = "192.0.2.1" // TEST-NET-1
	if !flocktest.InNetns(t, "ip addr add "+ip+"/32 dev lo") {
		return
	}
	a := startApp(t, appSpec{Workers: 1, Monitor: "0.0.0.0:0", AccessKey: "s3cret"})
	a.Started(1)
	_, port, _ := net.SplitHostPort(a.Monitor)
	c := &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}).DialContext}}
	post := func(url string, auth string) int {
		req, _ := http.NewRequest("POST", url, nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		c := c
		if strings.Contains(url, "[::1]") {
			c = http.DefaultClient
		}
		resp, err := c.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	base := "http://" + net.JoinHostPort(ip, port)
	assert.Equal(t, 403, post(base+"/ecv/disable", ""))
	assert.Equal(t, 403, post(base+"/ecv/disable?accessKey=wrong", ""))
	assert.Equal(t, 403, post(base+"/ecv/disable", "Bearer wrong"))
	code, _ := ecvState(a)
	assert.Equal(t, 200, code, "a refused caller changed nothing")
	assert.Equal(t, 204, post(base+"/ecv/disable?accessKey=s3cret", ""))
	assert.Equal(t, 204, post(base+"/ecv/enable", "Bearer s3cret"))
	// IPv6 loopback is loopback.
	assert.Equal(t, 204, post("http://[::1]:"+port+"/ecv/disable", ""))
	code, _ = ecvState(a)
	assert.Equal(t, 400, code)
}

// The monitor reads the master's state from its own goroutines. Hammer it
// while TTIN, TTOU and HUP reshape the workers: every answer is well formed,
// and the race detector (the master is race-enabled in tests; a report
// fails the test) sees no unsynchronised access.
func TestMonitorUnderChurn(t *testing.T) {
	a := startApp(t, appSpec{Workers: 2})
	a.Started(2)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var bad atomic.Int64
	var wg sync.WaitGroup
	for _, path := range []string{"/", "/ecv"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				resp, err := http.Get("http://" + a.Monitor + path)
				if err != nil {
					bad.Add(1)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 && resp.StatusCode != 500 {
					bad.Add(1)
				}
			}
		}()
	}
	// Each signal once the master has acted on the one before, so that
	// none coalesces with the next of its kind.
	// (The roll HUP asks for may wait for the one TTOU starts to take the
	// removed slot's socket over; the signal event says HUP was taken.)
	scaled := flocktest.Event("scaled")
	a.SignalUntil(syscall.SIGTTIN, "a slot added", scaled)
	a.SignalUntil(syscall.SIGTTIN, "a slot added", scaled)
	a.SignalUntil(syscall.SIGTTOU, "a slot removed", scaled)
	a.SignalUntil(syscall.SIGHUP, "HUP taken", func(r flocktest.Rec) bool { return r.Str("event") == "signal" && r.Str("signal") == "SIGHUP" })
	a.SignalUntil(syscall.SIGTTOU, "a slot removed", scaled)
	a.WaitFor("the roll", 10*time.Second, func(r flocktest.Rec) bool { return r.Str("event") == "roll" && r.Str("reason") != "began" })
	cancel()
	wg.Wait()
	assert.Zero(t, bad.Load(), "failed or malformed monitor answers")
}
