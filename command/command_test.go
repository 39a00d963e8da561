package command

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/flockhq/flock"
	"github.com/flockhq/flock/internal/flocktest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// The test binary re-executes itself as a flock application with the
// command surface (see flocktest): TestMain runs the app when
// FLOCK_TEST_CMD_APP is set.
const envApp = "FLOCK_TEST_CMD_APP"

const key = "s3cret"

// slowBoot: when this file exists, new workers take 10 s to get ready.
var slowBoot = os.TempDir() + "/flock-command-test-slow-" + strconv.Itoa(os.Getpid())

func TestMain(m *testing.M) {
	if spec := os.Getenv(envApp); spec != "" {
		os.Exit(runApp(spec))
	}
	code := m.Run()
	os.Remove(slowBoot)
	os.Exit(code)
}

type appSpec struct {
	Workers     int
	SlowFile    string
	CommandAddr string
	Console     bool
}

func runApp(js string) int {
	var s appSpec
	json.Unmarshal([]byte(js), &s)
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	pid := strconv.Itoa(os.Getpid())
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Worker-Pid", pid)
		fmt.Fprintln(w, "Hello from worker", pid)
	})
	surface := New(Options{
		Addr: cmp.Or(s.CommandAddr, "127.0.0.1:0"),
		Commands: []Command{
			{Name: "greet", Usage: "name", Help: "say hello", Run: func(_ context.Context, _ *flock.Controller, args []any) (any, error) {
				if len(args) != 1 {
					return nil, ErrUsage
				}
				return fmt.Sprintf("hello %v", args[0]), nil
			}},
			{Name: "version", Help: "overridden", Run: func(context.Context, *flock.Controller, []any) (any, error) { return "custom version", nil }},
			{Name: "start"}, // disabled
		},
		Levels:  map[string]Level{"info": Local},
		Console: s.Console,
		OnWorker: func(e WorkerEvent) {
			log.Info("worker event", "event", "worker-event", "kind", e.Kind, "pid", e.PID, "reason", e.Reason)
		},
	})
	err := flock.Serve(h, flock.Options{
		Addr: "127.0.0.1:0", Workers: s.Workers, AccessKey: key, Logger: log,
		Extensions: []flock.Extension{surface},
		Init: func() error {
			if _, err := os.Stat(s.SlowFile); err == nil {
				time.Sleep(10 * time.Second)
			}
			return nil
		},
	})
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flock.ErrInterrupted):
		return 130
	default:
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
}

// cmdApp is a running application with its command endpoint.
type cmdApp struct {
	*flocktest.App
	endpoint string
}

func startApp(t *testing.T, workers int) *cmdApp {
	js, _ := json.Marshal(appSpec{Workers: workers, SlowFile: slowBoot})
	a := flocktest.Start(t, exec.Command(os.Args[0]), envApp+"="+string(js))
	a.Started(workers)
	ep := a.WaitFor("the command endpoint", 5*time.Second, func(r flocktest.Rec) bool { return r.Str("msg") == "command: endpoint listening" })
	return &cmdApp{a, ep.Str("addr")}
}

// call posts a command line and returns the status and body.
func (a *cmdApp) call(line string, opts ...func(*http.Request)) (int, string, http.Header) {
	t := a.T()
	t.Helper()
	req, err := http.NewRequest("POST", "http://"+a.endpoint+"/cli?cmd="+url.QueryEscape(line), nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+key)
	for _, o := range opts {
		o(req)
	}
	code, body, h := flocktest.Do(t, req)
	return code, strings.TrimSpace(body), h
}

func TestStatusCodes(t *testing.T) {
	a := startApp(t, 1)
	noAuth := func(r *http.Request) { r.Header.Del("Authorization") }
	do := func(method, path string) (int, string) {
		req, _ := http.NewRequest(method, "http://"+a.endpoint+path, nil)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, strings.TrimSpace(string(b))
	}

	code, body, h := a.call("health")
	assert.Equal(t, 200, code)
	assert.Equal(t, `"OK"`, body, "a string result is a JSON string")
	assert.Equal(t, "text/json; charset=UTF-8", h.Get("Content-Type"))

	code, body = do("POST", "/cli?cmd=health&accessKey="+key)
	assert.Equal(t, 200, code, "the key as a query parameter")
	assert.Equal(t, `"OK"`, body)

	for _, tc := range []struct {
		method, path string
		code         int
		body         string
	}{
		{"POST", "/other", 404, "Page Not Found"},
		{"GET", "/cli?cmd=health&accessKey=" + key, 405, "Method Not Allowed"},
		{"POST", "/cli?cmd=health", 401, "Not authorized"},
		{"POST", "/cli?cmd=health&accessKey=wrong", 401, "Not authorized"},
		{"POST", "/cli?cmd=" + strings.Repeat("x", 20000) + "&accessKey=" + key, 400, "command line too long: 20000 bytes (at most 16384)"},
	} {
		code, body := do(tc.method, tc.path)
		assert.Equal(t, tc.code, code, "%s %.40s", tc.method, tc.path)
		assert.Equal(t, tc.body, body, "%s %.40s", tc.method, tc.path)
	}
	code, body, _ = a.call("health", noAuth)
	assert.Equal(t, 401, code)
	assert.Equal(t, "Not authorized", body)

	code, body, _ = a.call("bogus")
	assert.Equal(t, 404, code)
	assert.Equal(t, "Not found. Try /help", body)
	code, body, _ = a.call("start 2")
	assert.Equal(t, 404, code, "a disabled command is unknown")
	assert.Equal(t, "Not found. Try /help", body)

	for line, want := range map[string]string{
		"restart GG":               `no such group "GG" (the groups are ["main"])`,
		"restart":                  `usage: restart all|pid|group [{"timeout":ms}]`,
		`restart all {"wait":1}`:   `usage: restart all|pid|group [{"timeout":ms}] (the options are {"timeout": milliseconds})`,
		"restart 999999":           "no worker with pid 999999",
		"shutdown 999999":          "no worker with pid 999999",
		"exit later":               "usage: exit now",
		"greet":                    "usage: greet name",
		`restart "unterminated`:    `unterminated quoted string: "unterminated`,
		"upgrade all /nonexisting": "upgrade: stat /nonexisting: no such file or directory",
	} {
		code, body, _ := a.call(line)
		assert.Equal(t, 400, code, line)
		assert.Equal(t, want, body, line)
	}
	assert.Len(t, a.Events("exited"), 0, "bad commands changed nothing")
}

func TestCommands(t *testing.T) {
	a := startApp(t, 2)
	first := a.Started(2)
	ok := func(line string) string {
		t.Helper()
		code, body, _ := a.call(line)
		require.Equal(t, 200, code, "%s: %s", line, body)
		return body
	}
	assert.Equal(t, `"hello world"`, ok("greet world"), "a custom command")
	assert.Equal(t, `"custom version"`, ok("version"), "an overridden built-in")

	var help struct {
		More     string
		Commands []string
	}
	require.NoError(t, json.Unmarshal([]byte(ok("help")), &help))
	assert.Contains(t, help.Commands, "greet")
	assert.NotContains(t, help.Commands, "start", "disabled")
	assert.Contains(t, ok("help restart"), `restart all|pid|group [{\"timeout\":ms}]`)

	var info map[string]any
	require.NoError(t, json.Unmarshal([]byte(ok("info")), &info))
	assert.Equal(t, float64(a.PID), info["pid"])
	assert.Equal(t, "AVAILABLE", info["ecv"])
	assert.Equal(t, map[string]any{"active": 2.0}, info["workers"])

	var ws struct{ Workers []map[string]any }
	require.NoError(t, json.Unmarshal([]byte(ok("workers")), &ws))
	require.Len(t, ws.Workers, 2)
	for _, w := range ws.Workers {
		for _, k := range []string{"id", "pid", "state", "worker", "cwd", "process", "slot", "started", "binary"} {
			assert.Contains(t, w, k)
		}
		assert.Contains(t, first, int(w["pid"].(float64)))
	}

	assert.Equal(t, `"2 workers restarted successfully"`, ok("restart all"))
	assert.Equal(t, `"1 worker restarted successfully"`, ok(fmt.Sprintf(`restart %d {"timeout":5000}`, a.Started(4)[2])))
	exe, _ := os.Executable()
	assert.Equal(t, `"2 workers upgraded successfully"`, ok("upgrade all "+exe))
	// readyOnly waits until n workers run, all ready (old ones drain
	// meanwhile), and returns their pids.
	readyOnly := func(n int) (pids []int) {
		a.WaitUntil(fmt.Sprintf("%d ready workers alone", n), 10*time.Second, func() bool {
			pids = nil
			require.NoError(t, json.Unmarshal([]byte(ok("workers")), &ws))
			for _, w := range ws.Workers {
				if w["state"] == "listening" {
					pids = append(pids, int(w["pid"].(float64)))
				}
			}
			return len(ws.Workers) == n && len(pids) == n
		})
		return pids
	}
	now := readyOnly(2)
	assert.Equal(t, `"Worker shutdown"`, ok(fmt.Sprintf("shutdown %d", now[0])))
	now = readyOnly(1)
	code, body, _ := a.call(fmt.Sprintf("shutdown %d", now[0]))
	assert.Equal(t, 400, code)
	assert.Contains(t, body, "that would stop every worker")

	// workerStart / workerExit reach the application.
	events := func(kind, reason string) int {
		return len(a.Find(func(r flocktest.Rec) bool { return r.Str("kind") == kind && r.Str("reason") == reason }))
	}
	assert.Equal(t, 2, events("workerStart", "start"))
	assert.Equal(t, 3, events("workerStart", "restart"))
	assert.Equal(t, 3, events("workerExit", "restart"))
	assert.Equal(t, 2, events("workerStart", "upgrade"))
	assert.Equal(t, 1, events("workerExit", "scale"))

	assert.Equal(t, `"Exiting now."`, ok("exit now"))
	assert.Equal(t, 130, a.ExitCode(10*time.Second))
}

func TestShutdownAll(t *testing.T) {
	a := startApp(t, 2)
	code, body, _ := a.call(`shutdown all {"timeout":5000}`)
	assert.Equal(t, 200, code)
	assert.Equal(t, `"Shutting down..."`, body)
	assert.Equal(t, 0, a.ExitCode(10*time.Second))
}

// restart all under load: no request fails.
func TestRestartUnderLoad(t *testing.T) {
	a := startApp(t, 4)
	load := flocktest.StartLoad(t, a.URL("/"), 8, false)
	load.WaitRequests(200) // every client busy before the restart
	code, body, _ := a.call("restart all")
	res := load.Stop()
	assert.Equal(t, 200, code, body)
	assert.Equal(t, `"4 workers restarted successfully"`, body)
	assert.Zero(t, res.Failed.Load(), res.String())
}

// A replacement that is not ready within the timeout stops the restart,
// and the old workers keep serving.
func TestRestartTimeout(t *testing.T) {
	a := startApp(t, 2)
	old := a.Started(2)
	require.NoError(t, os.WriteFile(slowBoot, nil, 0o644))
	defer os.Remove(slowBoot)
	start := time.Now()
	code, body, _ := a.call(`restart all {"timeout":300}`)
	assert.Less(t, time.Since(start), 5*time.Second)
	assert.Equal(t, 400, code)
	assert.Contains(t, body, "timed out: 0 workers restarted before")
	a.StillServedBy(old)
}

// From a caller that is not on loopback, commands above Remote are refused
// (shutdown and exit by default, info by the application's override). The
// test runs in a network namespace of its own with a TEST-NET address on
// its lo, so no traffic leaves it.
func TestLevelsFromNonLoopback(t *testing.T) {
	const ip = "192.0.2.1"
	if !flocktest.InNetns(t, "ip addr add "+ip+"/32 dev lo") {
		return
	}
	js, _ := json.Marshal(appSpec{Workers: 1, CommandAddr: "0.0.0.0:0"})
	app := flocktest.Start(t, exec.Command(os.Args[0]), envApp+"="+string(js))
	app.Started(1)
	ep := app.WaitFor("the command endpoint", 5*time.Second, func(r flocktest.Rec) bool { return r.Str("msg") == "command: endpoint listening" })
	_, port, _ := net.SplitHostPort(ep.Str("addr"))
	remote := &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}).DialContext}}
	call := func(c *http.Client, host, line string) (int, string) {
		req, _ := http.NewRequest("POST", "http://"+net.JoinHostPort(host, port)+"/cli?cmd="+url.QueryEscape(line), nil)
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := c.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, strings.TrimSpace(string(b))
	}
	code, _ := call(remote, ip, "health")
	assert.Equal(t, 200, code, "a Remote command from a remote caller")
	for _, line := range []string{"shutdown all", "exit now", "info"} {
		code, body := call(remote, ip, line)
		assert.Equal(t, 401, code, line)
		assert.Equal(t, fmt.Sprintf("Not authorized to execute '%s' remotely", strings.Fields(line)[0]), body)
	}
	code, _ = call(http.DefaultClient, "::1", "info")
	assert.Equal(t, 200, code, "IPv6 loopback is local")
	code, _ = call(http.DefaultClient, "127.0.0.1", "info")
	assert.Equal(t, 200, code, "IPv4 loopback is local")
	assert.Empty(t, app.Events("shutdown"), "nothing was shut down")
}

// With Console, the master reads commands from its terminal, as inproc:
// even exit runs. The terminal is a real pseudo-terminal.
func TestConsole(t *testing.T) {
	ptm, pts := openPTY(t)
	js, _ := json.Marshal(appSpec{Workers: 1, Console: true})
	cmd := exec.Command(os.Args[0])
	cmd.Stdin, cmd.Stdout = pts, pts
	a := flocktest.Start(t, cmd, envApp+"="+string(js))
	pts.Close()
	a.Started(1)

	var mu sync.Mutex
	var screen strings.Builder
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := ptm.Read(buf)
			mu.Lock()
			screen.Write(buf[:n])
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	shows := func(what string) bool {
		return flocktest.Poll(10*time.Second, func() bool {
			mu.Lock()
			defer mu.Unlock()
			return strings.Contains(screen.String(), what)
		})
	}
	require.True(t, shows("flock> "), "no prompt")
	ptm.Write([]byte("health\n"))
	assert.True(t, shows("OK"), "no answer to health")
	ptm.Write([]byte("restart 1.5\n"))
	assert.True(t, shows(`usage: restart all|pid|group [{"timeout":ms}]`))
	ptm.Write([]byte("exit now\n"))
	assert.Equal(t, 130, a.ExitCode(10*time.Second), "exit (level local) runs from the console")
}

// openPTY opens a pseudo-terminal pair: the master side and the terminal.
func openPTY(t *testing.T) (*os.File, *os.File) {
	ptm, err := os.OpenFile("/dev/ptmx", os.O_RDWR, 0)
	require.NoError(t, err)
	t.Cleanup(func() { ptm.Close() })
	require.NoError(t, unix.IoctlSetPointerInt(int(ptm.Fd()), unix.TIOCSPTLCK, 0))
	n, err := unix.IoctlGetInt(int(ptm.Fd()), unix.TIOCGPTN)
	require.NoError(t, err)
	pts, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	require.NoError(t, err)
	return ptm, pts
}

// Across a USR2 upgrade the endpoint keeps its address: the new master
// inherits the socket and answers there once it has taken over.
func TestEndpointSurvivesUpgrade(t *testing.T) {
	a := startApp(t, 1)
	a.Signal(syscall.SIGUSR2)
	up := a.WaitFor("the handover", 20*time.Second, func(r flocktest.Rec) bool {
		return r.Str("event") == "upgrade" && r.Str("reason") == "handed over"
	})
	assert.Equal(t, 0, a.ExitCode(10*time.Second), "the old master drains and exits")
	code, body, _ := a.call("info")
	require.Equal(t, 200, code, body)
	var info map[string]any
	require.NoError(t, json.Unmarshal([]byte(body), &info))
	assert.Equal(t, float64(up.Int("new_master")), info["pid"], "the new master answers on the same address")
}
