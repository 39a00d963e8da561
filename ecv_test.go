package flock

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var ecvBody = regexp.MustCompile(`^status=(AVAILABLE|DISABLED|WARNING)&ServeTraffic=(true|false)&ip=[0-9.]+&hostname=[^&]+&port=(\d+)&time=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$`)

// ecvState asks the monitor and checks the answer is well formed.
func (a *app) ecvState() (int, string) {
	a.t.Helper()
	code, body, h := a.mon("GET", "/ecv")
	m := ecvBody.FindStringSubmatch(body)
	require.NotNil(a.t, m, "malformed ECV body %q", body)
	assert.Equal(a.t, "text/plain; charset=utf-8", h.Get("Content-Type"))
	assert.Equal(a.t, "no-cache", h.Get("Cache-Control"))
	_, err := http.ParseTime(h.Get("Since"))
	assert.NoError(a.t, err, "Since: %q", h.Get("Since"))
	_, port, _ := net.SplitHostPort(a.addr)
	assert.Equal(a.t, port, m[3], "port is the application port")
	assert.Equal(a.t, m[1] == "AVAILABLE", m[2] == "true")
	return code, m[1]
}

func TestECV(t *testing.T) {
	a := startApp(t, appSpec{Workers: 2})
	a.started(2)

	code, state := a.ecvState()
	assert.Equal(t, 200, code)
	assert.Equal(t, "AVAILABLE", state)
	code, body, _ := a.mon("HEAD", "/ecv")
	assert.Equal(t, 200, code)
	assert.Empty(t, body)
	code, _, h := a.mon("POST", "/ecv")
	assert.Equal(t, 405, code)
	assert.Equal(t, "GET, HEAD", h.Get("Allow"))
	code, _, _ = a.mon("GET", "/ecv/disable")
	assert.Equal(t, 405, code)
	code, _, _ = a.mon("GET", "/nowhere")
	assert.Equal(t, 404, code)

	code, _, _ = a.mon("POST", "/ecv/disable")
	assert.Equal(t, 204, code)
	code, state = a.ecvState()
	assert.Equal(t, 400, code)
	assert.Equal(t, "DISABLED", state)
	_, err := get(a.url("/"))
	assert.NoError(t, err, "disabled in the ECV still serves")

	// The state lives in the master: killing every worker does not undo it.
	for _, pid := range a.started(2) {
		require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
	}
	a.started(4)
	code, state = a.ecvState()
	assert.Equal(t, 400, code)
	assert.Equal(t, "DISABLED", state)

	code, _, _ = a.mon("POST", "/ecv/enable")
	assert.Equal(t, 204, code)
	code, state = a.ecvState()
	assert.Equal(t, 200, code)
	assert.Equal(t, "AVAILABLE", state)
	assert.Len(t, a.find(func(r rec) bool { return r.str("event") == "ecv" }), 2)
}

func TestMonitorStatusPage(t *testing.T) {
	a := startApp(t, appSpec{Workers: 2})
	a.started(2)
	for range 10 {
		_, err := get(a.url("/"))
		require.NoError(t, err)
	}
	var st Status
	a.waitUntil("request counts to reach the master", 5*time.Second, func() bool {
		code, body, h := a.mon("GET", "/")
		require.Equal(t, 200, code)
		require.Equal(t, "application/json", h.Get("Content-Type"))
		require.NoError(t, json.Unmarshal([]byte(body), &st))
		var n int64
		for _, w := range st.Workers {
			n += w.Requests
		}
		return n == 10
	})
	assert.Equal(t, a.pid, st.PID)
	assert.Equal(t, "AVAILABLE", st.ECV)
	assert.Equal(t, "running", st.State)
	assert.WithinDuration(t, time.Now(), st.Started, time.Minute)
	require.Len(t, st.Workers, 2)
	for _, w := range st.Workers {
		assert.Equal(t, "ready", w.State)
		assert.Greater(t, w.RSS, int64(1<<20), "RSS of %d", w.PID)
		assert.True(t, alive(w.PID))
	}
}

// No worker ready: WARNING.
func TestECVWarningWithoutReadyWorker(t *testing.T) {
	a := startApp(t, appSpec{Workers: 1, FailBoot: true, Restart: 200 * time.Millisecond, Budget: 1000})
	a.listening()
	a.waitFor("a failed boot", 10*time.Second, func(r rec) bool { return r.str("event") == "exited" })
	code, state := a.ecvState()
	assert.Equal(t, 500, code)
	assert.Equal(t, "WARNING", state)
}

// A failing, slow or unreachable probe is a WARNING within the probe's
// bound; a passing one is AVAILABLE.
func TestECVProbe(t *testing.T) {
	nobody := freePort(t)
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
			a.started(1)
			start := time.Now()
			code, _ := a.ecvState()
			assert.Equal(t, tc.want, code)
			assert.Less(t, time.Since(start), 2*time.Second, "the ECV waited on the probe past its bound")
		})
	}
}

// On TERM the ECV turns DISABLED at once, while the workers keep serving
// for DrainDelay; the monitor answers until the master exits.
func TestECVLameDuck(t *testing.T) {
	a := startApp(t, appSpec{Workers: 1, Drain: 1500 * time.Millisecond})
	a.started(1)
	a.signal(syscall.SIGTERM)
	a.waitFor("shutdown", 5*time.Second, func(r rec) bool { return r.str("event") == "shutdown" })
	code, state := a.ecvState()
	assert.Equal(t, 400, code)
	assert.Equal(t, "DISABLED", state)
	_, err := get(a.url("/"))
	assert.NoError(t, err, "workers serve during the drain delay")
	assert.Empty(t, a.events("exited"), "no worker stops before DrainDelay")
	assert.Equal(t, 0, a.exitCode(10*time.Second))
}

func TestMonitorBusyPort(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	a := startApp(t, appSpec{Monitor: ln.Addr().String()})
	assert.Equal(t, 1, a.exitCode(10*time.Second))
	want := fmt.Sprintf("flock: monitor: listen %s: address already in use", ln.Addr())
	assert.NotEmpty(t, a.find(func(r rec) bool { return r.str("msg") == want }), "no line %q", want)
	assert.Empty(t, a.events("forked"))
}

func TestMonitorOffAndReadOnly(t *testing.T) {
	a := startApp(t, appSpec{Workers: 1, Monitor: "off"})
	a.started(1)
	assert.Empty(t, a.monitor)

	b := startApp(t, appSpec{Workers: 1, ReadOnly: true})
	b.started(1)
	code, _, _ := b.mon("POST", "/ecv/disable")
	assert.Equal(t, 404, code)
	code, _ = b.ecvState()
	assert.Equal(t, 200, code)
}

// Control from a caller that is not on loopback needs the access key. The
// test runs in its own network namespace with a TEST-NET address added to
// its lo, so the caller's address is not a loopback one and no traffic
// leaves the namespace.
func TestECVControlFromNonLoopback(t *testing.T) {
	const ip = "192.0.2.1" // TEST-NET-1
	if !inNetns(t, "ip addr add "+ip+"/32 dev lo") {
		return
	}
	a := startApp(t, appSpec{Workers: 1, Monitor: "0.0.0.0:0", AccessKey: "s3cret"})
	a.started(1)
	_, port, _ := net.SplitHostPort(a.monitor)
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
	code, _ := a.ecvState()
	assert.Equal(t, 200, code, "a refused caller changed nothing")
	assert.Equal(t, 204, post(base+"/ecv/disable?accessKey=s3cret", ""))
	assert.Equal(t, 204, post(base+"/ecv/enable", "Bearer s3cret"))
	// IPv6 loopback is loopback.
	assert.Equal(t, 204, post("http://[::1]:"+port+"/ecv/disable", ""))
	code, _ = a.ecvState()
	assert.Equal(t, 400, code)
}

// inNetns runs the calling test again inside a new network namespace (with
// lo up, then setup run as shell) and reports whether the caller is already
// there. Outside, it fails the test if the run inside failed, and skips when
// namespaces cannot be made here.
func inNetns(t *testing.T, setup string) bool {
	t.Helper()
	if os.Getenv("FLOCK_NETNS") == t.Name() {
		return true
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace")
	}
	script := "ip link set lo up && " + setup + ` && exec "$0" -test.run='^` + regexp.QuoteMeta(t.Name()) + `$' -test.v -test.count=1`
	cmd := exec.Command("unshare", "-n", "--", "sh", "-c", script, os.Args[0])
	cmd.Env = append(os.Environ(), "FLOCK_NETNS="+t.Name())
	out, err := cmd.CombinedOutput()
	if err != nil && regexp.MustCompile(`unshare failed|Operation not permitted|not found`).Match(out) && !regexp.MustCompile(`--- FAIL`).Match(out) {
		t.Skipf("cannot make a network namespace here: %s", out)
	}
	if err != nil {
		t.Errorf("inside the network namespace: %v\n%s", err, out)
	} else {
		t.Logf("inside the network namespace:\n%s", out)
	}
	return false
}
