package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flockhq/flock"
	"github.com/flockhq/flock/command"
	"github.com/flockhq/flock/internal/flocktest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const (
	envApp = "FLOCK_PROXY_TEST_CONFIG"
	key    = "proxy-test-key"
)

func TestMain(m *testing.M) {
	if path := os.Getenv(envApp); path != "" {
		os.Exit(runApp(path))
	}
	os.Exit(m.Run())
}

// runApp is the master (and, re-executed, each proxy worker) of a test.
func runApp(path string) int {
	cfg, err := Load(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	p := New(cfg)
	surface := command.New(command.Options{Addr: "127.0.0.1:0", Commands: []command.Command{p.Command()}})
	err = p.Run(flock.Options{MonitorAddr: "127.0.0.1:0", AccessKey: key, ShutdownTimeout: 10 * time.Second,
		Logger: slog.New(slog.NewJSONHandler(os.Stderr, nil)), Extensions: []flock.Extension{surface}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// proxyApp is a running proxy: its master, its command endpoint, and the
// folder of its config and versions.
type proxyApp struct {
	*flocktest.App
	dir, endpoint string
}

// startProxy writes a config (the test's keys over the defaults below)
// and a folder per version, each running testdata/worker.py, and starts
// the master.
func startProxy(t *testing.T, keys map[string]any, versions ...string) *proxyApp {
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("python3 is not installed (the versions' workers are Python)")
	}
	dir := t.TempDir()
	worker, err := filepath.Abs("testdata/worker.py")
	require.NoError(t, err)
	for _, v := range versions {
		require.NoError(t, os.Mkdir(filepath.Join(dir, v), 0o755))
		require.NoError(t, os.Symlink(worker, filepath.Join(dir, v, "worker.py")))
	}
	cfg := map[string]any{
		"bindings":            []map[string]any{{"host": "127.0.0.1", "port": 0, "workerCount": 2}},
		"workerFilename":      "worker.py",
		"versionPorts":        "21000-21999",
		"ready":               "notify",
		"versionStartTimeout": 10,
		"defaultWorkerCount":  2,
	}
	for k, v := range keys {
		cfg[k] = v
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	require.NoError(t, err)
	path := filepath.Join(dir, "proxy.json")
	require.NoError(t, os.WriteFile(path, b, 0o644))
	a := flocktest.Start(t, exec.Command(os.Args[0]), envApp+"="+path)
	ready := 2 // the proxy workers, and the default version's
	if cfg["defaultVersion"] != nil {
		ready += cfg["defaultWorkerCount"].(int)
	}
	a.Started(ready)
	ep := a.WaitFor("the command endpoint", 10*time.Second, func(r flocktest.Rec) bool { return r.Str("msg") == "command: endpoint listening" })
	return &proxyApp{App: a, dir: dir, endpoint: ep.Str("addr")}
}

// call runs a command line and returns the status and the body.
func (a *proxyApp) call(line string) (int, string) {
	a.T().Helper()
	return flocktest.Command(a.T(), a.endpoint, key, line)
}

func (a *proxyApp) info() Info {
	t := a.T()
	t.Helper()
	code, body := a.call("proxy info")
	require.Equal(t, http.StatusOK, code, body)
	var in Info
	require.NoError(t, json.Unmarshal([]byte(body), &in))
	return in
}

func (in Info) version(name string) VersionInfo {
	for _, v := range in.Versions {
		if v.Version == name {
			return v
		}
	}
	return VersionInfo{Version: name, State: "none"}
}

// get requests path from the proxy, naming version (none if ""), and
// returns the status and the body.
func (a *proxyApp) get(version, path string) (int, string) {
	t := a.T()
	t.Helper()
	req, err := http.NewRequest("GET", a.URL(path), nil)
	require.NoError(t, err)
	if version != "" {
		req.Header.Set("X-Version", version)
	}
	code, body, _ := flocktest.Do(t, req)
	return code, strings.TrimSpace(body)
}

// answeredBy is the version and the pid of an answer "VERSION PID".
func answeredBy(t *testing.T, body string) (string, int) {
	t.Helper()
	f := strings.Fields(body)
	require.GreaterOrEqual(t, len(f), 2, "not a worker's answer: %q", body)
	pid, err := strconv.Atoi(f[1])
	require.NoError(t, err, body)
	return f[0], pid
}

func TestRoutesByHeaderAndStartsOnDemand(t *testing.T) {
	a := startProxy(t, map[string]any{"defaultVersion": "v1"}, "v1", "v2")

	code, body := a.get("", "/")
	require.Equal(t, http.StatusOK, code, body)
	v, _ := answeredBy(t, body)
	assert.Equal(t, "v1", v, "no header: the default version")
	assert.Equal(t, "none", a.info().version("v2").State, "v2 is not started before it is asked for")

	// The first request for v2 waits while it starts, and is answered by it.
	code, body = a.get("v2", "/")
	require.Equal(t, http.StatusOK, code, body)
	v, pid := answeredBy(t, body)
	assert.Equal(t, "v2", v)
	in := a.info()
	assert.Equal(t, VersionInfo{Version: "v2", State: "running", Port: in.version("v2").Port, Workers: 1, Ready: 1}, in.version("v2"))
	assert.Equal(t, VersionInfo{Version: "v1", State: "running", Port: in.version("v1").Port, Workers: 2, Ready: 2, Default: true}, in.version("v1"))
	assert.Len(t, in.ProxyWorkers, 2)
	assert.Len(t, in.VersionWorkers, 3)
	for range 5 {
		_, body = a.get("v2", "/")
		_, again := answeredBy(t, body)
		assert.Equal(t, pid, again, "v2 has one worker (nonDefaultWorkerCount)")
	}

	// Unknown versions, and names that are no folder's, are 404s.
	for _, bad := range []string{"v3", "..", "../v1", "a/b"} {
		code, body = a.get(bad, "/")
		assert.Equal(t, http.StatusNotFound, code, "%s: %s", bad, body)
		assert.Contains(t, body, "unknown version", bad)
	}

	// A streaming request body and a protocol upgrade pass through.
	pr, pw := io.Pipe()
	go func() {
		for range 10 {
			pw.Write(make([]byte, 1000))
		}
		pw.Close()
	}()
	req, _ := http.NewRequest("POST", a.URL("/"), pr)
	req.Header.Set("X-Version", "v2")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Equal(t, fmt.Sprintf("v2 %d 10000", pid), strings.TrimSpace(string(b)), "a chunked body of 10,000 bytes")

	c, err := net.Dial("tcp", a.Addr)
	require.NoError(t, err)
	defer c.Close()
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x\r\nX-Version: v2\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err = http.ReadResponse(br, nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusSwitchingProtocols, resp.StatusCode)
	for _, msg := range []string{"ping\n", "pong\n"} {
		fmt.Fprint(c, msg)
		got, err := br.ReadString('\n')
		require.NoError(t, err)
		assert.Equal(t, msg, got, "echoed through the upgraded connection")
	}
}

func TestIdleVersionStops(t *testing.T) {
	a := startProxy(t, map[string]any{"defaultVersion": "v1", "nonDefaultWorkerIdleTime": 1}, "v1", "v2")
	_, body := a.get("v2", "/")
	_, pid := answeredBy(t, body)
	// Idle for a second: stopped, its worker gone; the default stays.
	a.WaitFor("v2's worker exits", 15*time.Second, func(r flocktest.Rec) bool { return r.Str("event") == "exited" && r.Int("pid") == pid })
	flocktest.Poll(5*time.Second, func() bool { return a.info().version("v2").State == "stopped" })
	in := a.info()
	assert.Equal(t, "stopped", in.version("v2").State)
	assert.Equal(t, "running", in.version("v1").State, "the default version never idles")
	assert.False(t, flocktest.Alive(pid))
	// Asked for again, it starts again.
	code, body := a.get("v2", "/")
	require.Equal(t, http.StatusOK, code, body)
	v, again := answeredBy(t, body)
	assert.Equal(t, "v2", v)
	assert.NotEqual(t, pid, again)
}

// A request in flight keeps its version from idling out, however long.
func TestInFlightIsNotIdle(t *testing.T) {
	a := startProxy(t, map[string]any{"nonDefaultWorkerIdleTime": 0.5}, "v2")
	code, body := a.get("", "/")
	assert.Equal(t, http.StatusNotFound, code, "no default version: 404")
	assert.Contains(t, body, "no live version")
	code, body = a.get("v2", "/?sleep=2500") // the first request of v2
	require.Equal(t, http.StatusOK, code, body)
	v, pid := answeredBy(t, body)
	assert.Equal(t, "v2", v)
	assert.Equal(t, "running", a.info().version("v2").State, "5 times its idle time with a request in flight")
	assert.True(t, flocktest.Alive(pid))
}

func TestPromoteUnderLoadLosesNothing(t *testing.T) {
	a := startProxy(t, map[string]any{"defaultVersion": "v1"}, "v1", "v2")
	runs := map[string]*flocktest.LoadRun{
		"new connection per request": flocktest.StartLoad(t, a.URL("/"), 4, false),
		"keep-alive":                 flocktest.StartLoad(t, a.URL("/"), 4, true),
	}
	for _, r := range runs {
		r.WaitRequests(200)
	}
	code, body := a.call("proxy promote v2 2")
	require.Equal(t, http.StatusOK, code, body)
	var vi VersionInfo
	require.NoError(t, json.Unmarshal([]byte(body), &vi))
	assert.Equal(t, VersionInfo{Version: "v2", State: "running", Port: vi.Port, Workers: 2, Ready: 2, Default: true}, vi)
	// Promote answers once every proxy worker sends new requests to v2.
	for range 10 {
		_, body := a.get("", "/")
		v, _ := answeredBy(t, body)
		assert.Equal(t, "v2", v)
	}
	// The old default is brought down to one worker (nonDefaultWorkerCount).
	a.WaitUntil("v1 down to 1 worker", 10*time.Second, func() bool {
		return len(a.Find(func(r flocktest.Rec) bool { return r.Str("event") == "exited" && r.Str("group") == "v1" })) == 1
	})
	assert.Equal(t, 1, a.info().version("v1").Workers)
	for _, r := range runs {
		r.WaitRequests(200)
	}
	flocktest.NoFailures(t, "promote", runs)
	// The config file says so, its other keys kept.
	cfg, err := Load(filepath.Join(a.dir, "proxy.json"))
	require.NoError(t, err)
	assert.Equal(t, "v2", cfg.DefaultVersion)
	assert.Equal(t, "worker.py", cfg.WorkerFilename)
}

func TestBrokenVersions(t *testing.T) {
	a := startProxy(t, map[string]any{"defaultVersion": "v1", "versionStartTimeout": 2}, "v1", "broken", "hang")

	// A version that crashes at boot: the request gets a 503 saying why,
	// and the next one within the back-off is answered at once.
	code, body := a.get("broken", "/")
	assert.Equal(t, http.StatusServiceUnavailable, code, body)
	assert.Contains(t, body, "exited (crash, status 3) before it was ready")
	start := time.Now()
	code, body = a.get("broken", "/")
	assert.Equal(t, http.StatusServiceUnavailable, code, body)
	assert.Contains(t, body, "tried again from")
	assert.Less(t, time.Since(start), time.Second, "no new start within the back-off")
	assert.Equal(t, "failed", a.info().version("broken").State)

	// Promoting it fails, says why, and leaves v1 the default.
	code, body = a.call("proxy promote broken 2")
	assert.Equal(t, http.StatusBadRequest, code, body)
	assert.Contains(t, body, `not promoted: "v1" still serves`)

	// A version never ready: stopped after versionStartTimeout.
	code, body = a.call("proxy version hang 1")
	assert.Equal(t, http.StatusBadRequest, code, body)
	assert.Contains(t, body, "hang: 0 of 1 workers ready after 2s (versionStartTimeout)")
	hang := a.WaitFor("hang's worker", time.Second, func(r flocktest.Rec) bool { return r.Str("event") == "forked" && r.Str("group") == "hang" })
	a.WaitFor("hang's worker exits", 15*time.Second, func(r flocktest.Rec) bool { return r.Str("event") == "exited" && r.Int("pid") == hang.Int("pid") })

	code, body = a.get("", "/")
	require.Equal(t, http.StatusOK, code, body)
	v, _ := answeredBy(t, body)
	assert.Equal(t, "v1", v)
	cfg, err := Load(filepath.Join(a.dir, "proxy.json"))
	require.NoError(t, err)
	assert.Equal(t, "v1", cfg.DefaultVersion, "the config file is unchanged")
}

func TestProxyCommands(t *testing.T) {
	a := startProxy(t, map[string]any{"defaultVersion": "v1"}, "v1", "v2")
	for line, want := range map[string]string{
		"proxy":                     "Proxy command  not recognized",
		"proxy what":                "Proxy command what not recognized",
		"proxy version v2":          "usage: proxy start configPath",
		"proxy promote v2 0":        "usage: proxy start configPath",
		"proxy version v2 -1":       "usage: proxy start configPath",
		"proxy start /x/other.json": "proxy already running, with " + filepath.Join(a.dir, "proxy.json"),
		"proxy version v1 0":        "version v1 is the default: promote another one first",
		"proxy version nope 1":      `unknown version "nope": no folder`,
	} {
		code, body := a.call(line)
		assert.Equal(t, http.StatusBadRequest, code, "%s: %s", line, body)
		assert.Contains(t, body, want, line)
	}
	code, body := a.call("proxy start " + filepath.Join(a.dir, "proxy.json"))
	assert.Equal(t, http.StatusBadRequest, code)
	assert.Equal(t, "proxy already running", body)

	// version: start with 2 workers, down to 1, stop.
	code, body = a.call("proxy version v2 2")
	require.Equal(t, http.StatusOK, code, body)
	assert.Contains(t, body, `"ready":2`)
	code, body = a.call("proxy version v2 1")
	require.Equal(t, http.StatusOK, code, body)
	assert.Contains(t, body, `"workers":1`)
	code, body = a.call("proxy version v2 0")
	require.Equal(t, http.StatusOK, code, body)
	assert.Contains(t, body, `"state":"stopped"`)
	in := a.info()
	assert.Equal(t, "v1", in.Default)
	assert.Equal(t, map[string]int{"min": 21000, "max": 21999}, in.PortRange)
	assert.Equal(t, "x-version", in.Options.VersionHeader)

	// stop: the whole service shuts down gracefully.
	code, body = a.call("proxy stop")
	require.Equal(t, http.StatusOK, code, body)
	assert.Equal(t, 0, a.ExitCode(30*time.Second))
}

// Bad input and a busy machine get a precise answer, and lose nothing.
func TestVersionPortsTakenAndConfigGone(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	only := fmt.Sprintf("%d-%d", port, port)

	// The one port of the range is someone else's: the default version
	// cannot start, and the master says so and exits 1.
	dir := t.TempDir()
	require.NoError(t, os.Mkdir(filepath.Join(dir, "v1"), 0o755))
	path := filepath.Join(dir, "proxy.json")
	require.NoError(t, os.WriteFile(path, []byte(`{"defaultVersion": "v1", "versionPorts": "`+only+`", "bindings": [{"host": "127.0.0.1", "port": 0}]}`), 0o644))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0])
	cmd.Env = append(os.Environ(), envApp+"="+path)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit, "%s", out)
	assert.Equal(t, 1, exit.ExitCode(), "%s", out)
	assert.Contains(t, string(out), "proxy: defaultVersion v1: versionPorts "+only+": no free port left")

	// Without a default, the proxy serves; a version asked for gets a 503
	// that says why.
	a := startProxy(t, map[string]any{"versionPorts": only}, "v2")
	code, body := a.get("v2", "/")
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.Equal(t, "flock proxy: versionPorts "+only+": no free port left", body)

	// The port free again, a promotion whose config file has gone fails
	// with why, and changes nothing.
	ln.Close()
	require.NoError(t, os.Rename(filepath.Join(a.dir, "proxy.json"), filepath.Join(a.dir, "moved.json")))
	code, body = a.call("proxy promote v2 1")
	assert.Equal(t, http.StatusBadRequest, code)
	assert.Contains(t, body, "not promoted: the config file: lstat "+filepath.Join(a.dir, "proxy.json")+": no such file or directory")
	in := a.info()
	assert.Equal(t, "", in.Default)
	assert.Equal(t, "running", in.version("v2").State, "started, as asked, but not the default")
	code, body = a.get("", "/")
	assert.Equal(t, http.StatusNotFound, code, body)
}

func TestTLSBindings(t *testing.T) {
	cert, key, both := flocktest.WriteCert(t)
	a := startProxy(t, map[string]any{"defaultVersion": "v1", "bindings": []map[string]any{
		{"host": "127.0.0.1", "port": 0, "tlsOptions": map[string]string{"cert": cert, "key": key}},
		{"host": "127.0.0.1", "port": 0, "tlsOptions": map[string]string{"pem": both}},
		{"host": "127.0.0.1", "port": 0},
	}}, "v1")
	code, body, _ := a.Mon("GET", "/")
	require.Equal(t, http.StatusOK, code, body)
	var st flock.Status
	require.NoError(t, json.Unmarshal([]byte(body), &st))
	addr := map[string]string{}
	for _, l := range st.Listens {
		addr[l.Name] = l.Addr
	}
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	for _, u := range []string{"https://" + addr["main"] + "/", "https://" + addr["binding1"] + "/", "http://" + addr["binding2"] + "/"} {
		req, _ := http.NewRequest("GET", u, nil)
		req.Header.Set("X-Version", "v1")
		resp, err := c.Do(req)
		require.NoError(t, err, u)
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		assert.Equal(t, http.StatusOK, resp.StatusCode, u)
		v, _ := answeredBy(t, string(b))
		assert.Equal(t, "v1", v, u)
		assert.Equal(t, strings.HasPrefix(u, "https"), resp.TLS != nil, u)
	}
}
