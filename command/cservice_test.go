package command

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flockhq/flock/internal/flocktest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// cserviceVersion is the node-cluster-service release whose CLI and
// answers the surface is compatible with.
const cserviceVersion = "2.1.4"

// cservice installs node-cluster-service's CLI from npm (once: it is kept
// in the user's cache directory) and returns its path. The test skips when
// Node or npm is missing; .ci/run installs them.
func cservice(t *testing.T) string {
	t.Helper()
	for _, tool := range []string{"node", "npm"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (apt-get install nodejs npm; .ci/run does it): the compatibility test drives node-cluster-service's own CLI", tool)
		}
	}
	cache, err := os.UserCacheDir()
	require.NoError(t, err)
	dir := filepath.Join(cache, "flock-test", "cluster-service-"+cserviceVersion)
	bin := filepath.Join(dir, "node_modules", ".bin", "cservice")
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	require.NoError(t, os.MkdirAll(dir, 0o755))
	install := exec.Command("npm", "install", "--prefix", dir, "--no-audit", "--no-fund", "--loglevel=error", "cluster-service@"+cserviceVersion)
	out, err := install.CombinedOutput()
	require.NoError(t, err, "npm install cluster-service@%s: %s", cserviceVersion, out)
	return bin
}

// The real cservice CLI of node-cluster-service 2.1.4 against the
// example's command endpoint: every built-in command answers in
// cluster-service's shape, errors come back as it prints them.
func TestCserviceCompatibility(t *testing.T) {
	cs := cservice(t)
	bin := filepath.Join(t.TempDir(), "example")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/flockhq/flock/example").CombinedOutput()
	require.NoError(t, err, "%s", out)
	a := flocktest.Start(t, exec.Command(bin, "-addr", "127.0.0.1:0", "-workers", "2", "-log-json",
		"-access-key", "K", "-command-addr", "127.0.0.1:0"))
	pids := a.Started(2)
	addr := a.WaitFor("the command endpoint", 5*time.Second, func(r flocktest.Rec) bool { return r.Str("msg") == "command: endpoint listening" }).Str("addr")
	port := addr[strings.LastIndexByte(addr, ':')+1:]
	_, err = flocktest.Get(a.URL("/"))
	require.NoError(t, err)

	// run prints what cservice --json prints: the answer's JSON, or for an
	// error {"statusCode": …, "error": body}. It always exits 0.
	run := func(line string, into any) {
		t.Helper()
		cmd := exec.Command(cs, line, "--accessKey", "K", "--port", port, "--json")
		out, err := cmd.Output()
		require.NoError(t, err, "cservice %q", line)
		require.NoError(t, json.Unmarshal(out, into), "cservice %q printed %s", line, out)
	}
	str := func(line string) string {
		t.Helper()
		var twice, once string // --json prints a string result JSON-encoded twice
		run(line, &twice)
		require.NoError(t, json.Unmarshal([]byte(twice), &once), "%q", twice)
		return once
	}

	assert.Equal(t, "OK", str("health"))
	assert.Equal(t, "example", str("version"), "the application's version")

	var help struct {
		More     string   `json:"more"`
		Commands []string `json:"commands"`
	}
	run("help", &help)
	assert.NotEmpty(t, help.More)
	assert.Subset(t, help.Commands, []string{"exit", "health", "help", "info", "restart", "shutdown", "start", "upgrade", "version", "workers"})
	var helpRestart map[string]string
	run("help restart", &helpRestart)
	assert.Equal(t, `restart all|pid|group [{"timeout":ms}]`, helpRestart["command"])
	assert.NotEmpty(t, helpRestart["info"])
	var helpBogus map[string]string
	run("help bogus", &helpBogus)
	assert.Equal(t, map[string]string{"command": "bogus", "err": "Command not found"}, helpBogus)

	type netStats struct {
		Requests, Connections, ConnectionsOpen *int64
		AvgRequests, AvgConnections            *float64
	}
	type memory struct{ RSS, HeapTotal, HeapUsed *int64 }
	var info struct {
		Workers struct{ Active int }
		Memory  memory
		Net     netStats
	}
	run("info", &info)
	assert.Equal(t, 2, info.Workers.Active, "info → .workers.active")
	require.NotNil(t, info.Memory.RSS)
	assert.Positive(t, *info.Memory.RSS)
	for name, v := range map[string]any{"heapTotal": info.Memory.HeapTotal, "heapUsed": info.Memory.HeapUsed,
		"requests": info.Net.Requests, "connections": info.Net.Connections, "connectionsOpen": info.Net.ConnectionsOpen,
		"avgRequests": info.Net.AvgRequests, "avgConnections": info.Net.AvgConnections} {
		assert.NotNil(t, v, "info: %s", name)
	}

	var ws struct {
		Workers []struct {
			ID      int
			PID     int
			State   string
			Worker  string
			CWD     string
			Process struct {
				Memory memory
				Uptime float64
				Net    netStats
			}
		}
	}
	for _, mode := range []string{"workers", "workers simple", "workers details"} {
		run(mode, &ws)
		require.Len(t, ws.Workers, 2, mode)
		for _, w := range ws.Workers {
			assert.Contains(t, pids, w.PID, "%s → .workers[].pid", mode)
			assert.Positive(t, w.ID)
			assert.Equal(t, "listening", w.State)
			assert.Equal(t, bin, w.Worker)
			assert.NotEmpty(t, w.CWD)
			assert.Positive(t, *w.Process.Memory.RSS)
			assert.Positive(t, *w.Process.Memory.HeapTotal, "the Go heap, reported at start")
			assert.Positive(t, w.Process.Uptime)
			require.NotNil(t, w.Process.Net.Requests)
			// One request per connection here: one report, one update of both.
			assert.Equal(t, *w.Process.Net.AvgRequests, *w.Process.Net.AvgConnections)
		}
	}

	type failure struct {
		StatusCode int    `json:"statusCode"`
		Error      string `json:"error"`
	}
	for line, want := range map[string]failure{
		"bogus":      {404, "Not found. Try /help"},
		"restart GG": {400, `no such group "GG" (the groups are ["main"])`},
		"exit later": {400, "usage: exit now"},
	} {
		var got failure
		run(line, &got)
		assert.Equal(t, want, got, "cservice %q: no trailing newline in the error", line)
	}

	assert.Equal(t, "2 workers restarted successfully", str("restart all"))
	now := a.Started(4)[2:]
	assert.Equal(t, "1 worker restarted successfully", str(fmt.Sprintf(`restart %d {"timeout":5000}`, now[0])))
	assert.Equal(t, "2 workers upgraded successfully", str("upgrade all "+bin))
	assert.Equal(t, "1 worker starting", str("start 1"))
	last := a.Started(8)[7]
	assert.Equal(t, "Worker shutdown", str(fmt.Sprintf("shutdown %d", last)))
	assert.Equal(t, "Exiting now.", str("exit now"))
	assert.Equal(t, 130, a.ExitCode(10*time.Second))
}
