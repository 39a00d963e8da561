package main

import (
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/flockhq/flock/internal/flocktest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The README's walkthrough of the proxy mode, with example/proxy's Node
// versions: a canary by header, a promotion under load, then USR2 of flock
// itself under load, the new master starting from the promoted default.
func TestProxyMode(t *testing.T) {
	need(t, "node")
	dir := t.TempDir()
	for _, v := range []string{"v1", "v2"} {
		require.NoError(t, os.Mkdir(filepath.Join(dir, v), 0o755))
		b, err := os.ReadFile(filepath.Join("../../example/proxy", v, "worker.js"))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dir, v, "worker.js"), b, 0o644))
	}
	cfg := filepath.Join(dir, "proxy.json")
	require.NoError(t, os.WriteFile(cfg, []byte(`{
  "defaultVersion": "v1",
  "bindings": [{"host": "127.0.0.1", "port": 0, "workerCount": 2}],
  "versionPorts": "22000-22999"
}`), 0o644))
	a := flocktest.Start(t, exec.Command(os.Args[0], "-log-json", "-monitor", "127.0.0.1:0", "-access-key", "k",
		"-command-addr", "127.0.0.1:0", "-shutdown-timeout", "20s", "-proxy", cfg), envAsFlock+"=1")
	a.Started(4) // 2 proxy workers, 2 of v1
	endpoint := a.WaitFor("the command endpoint", 5*time.Second, func(r flocktest.Rec) bool { return r.Str("msg") == "command: endpoint listening" }).Str("addr")
	get := func(version string) string {
		req, _ := http.NewRequest("GET", a.URL("/"), nil)
		if version != "" {
			req.Header.Set("x-version", version)
		}
		code, body, _ := flocktest.Do(t, req)
		require.Equal(t, http.StatusOK, code, body)
		return body
	}
	call := func(line string) string {
		code, body := flocktest.Command(t, endpoint, "k", line)
		require.Equal(t, http.StatusOK, code, "%s: %s", line, body)
		return body
	}

	assert.Contains(t, get(""), "Hello from v1")
	assert.Contains(t, get("v2"), "Hello from v2", "the canary, started on demand")
	assert.Contains(t, get(""), "Hello from v1")

	fresh := flocktest.StartLoad(t, a.URL("/"), 4, false)
	kept := flocktest.StartLoad(t, a.URL("/"), 4, true)
	fresh.WaitRequests(200)
	kept.WaitRequests(200)
	var vi struct{ Version, State string }
	require.NoError(t, json.Unmarshal([]byte(call("proxy promote v2 2")), &vi))
	assert.Equal(t, "running", vi.State)
	assert.Contains(t, get(""), "Hello from v2", "promoted: new requests go to v2")
	fresh.WaitRequests(200)
	kept.WaitRequests(200)
	b, err := os.ReadFile(cfg)
	require.NoError(t, err)
	assert.Contains(t, string(b), `"defaultVersion": "v2"`)

	// USR2: the new master runs the config file's default, v2, and v1,
	// now a canary, on the sockets it inherits; the old master drains and
	// exits. Requests for v1 go on too.
	canary := http.Header{"X-Version": {"v1"}}
	loads := map[string]*flocktest.LoadRun{
		"new connection per request": fresh, "keep-alive": kept,
		"canary v1, new connection per request": flocktest.StartLoadWith(t, a.URL("/"), canary, 2, false),
		"canary v1, keep-alive":                 flocktest.StartLoadWith(t, a.URL("/"), canary, 2, true),
	}
	for _, l := range loads {
		l.WaitRequests(100)
	}
	a.Signal(syscall.SIGUSR2)
	assert.Equal(t, 0, a.ExitCode(60*time.Second), "the old master exits 0 once it has drained")
	for _, l := range loads {
		l.WaitRequests(200)
	}
	flocktest.NoFailures(t, "promote, then USR2, under load", loads)
	assert.Contains(t, get(""), "Hello from v2")
	assert.Contains(t, get("v1"), "Hello from v1")
	var in struct {
		Versions []struct {
			Version, State string
			Workers, Ready int
		}
	}
	require.NoError(t, json.Unmarshal([]byte(call("proxy info")), &in))
	assert.Len(t, in.Versions, 2)
	for _, v := range in.Versions {
		want := map[string]int{"v1": 1, "v2": 2}[v.Version]
		assert.Equal(t, "running", v.State, v.Version)
		assert.Equal(t, want, v.Workers, "%s: the workers the old master had", v.Version)
		assert.Equal(t, want, v.Ready, v.Version)
	}
}
