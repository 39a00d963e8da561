package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flockhq/flock/internal/flocktest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The test binary is the flock command when FLOCK_TEST_AS_FLOCK is set:
// the tests start it as a real master, with real signals, and it runs
// real programs nobody here wrote (Node, gunicorn) as its workers.
const envAsFlock = "FLOCK_TEST_AS_FLOCK"

func TestMain(m *testing.M) {
	if os.Getenv(envAsFlock) == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

// startFlock starts the flock command on loopback with args, its logs
// as JSON.
func startFlock(t *testing.T, args ...string) *flocktest.App {
	t.Helper()
	args = append([]string{"-log-json", "-addr", "127.0.0.1:0", "-monitor", "127.0.0.1:0"}, args...)
	return flocktest.Start(t, exec.Command(os.Args[0], args...), envAsFlock+"=1")
}

func need(t *testing.T, cmd string) string {
	t.Helper()
	path, err := exec.LookPath(cmd)
	if err != nil {
		t.Skipf("%s is not installed (.ci/run installs it): %v", cmd, err)
	}
	return path
}

// Node's HTTP module, listening on the sockets it is given ({fd: 3}).
func TestNode(t *testing.T) {
	need(t, "node")
	a := startFlock(t, "-workers", "2", "-shutdown-timeout", "20s", "--", "node", "../../example/node/server.js")
	flocktest.Lifecycle(a, 2)
}

// gunicorn from Debian, serving a WSGI app on the sockets it is given,
// ready when it says READY=1.
func TestGunicorn(t *testing.T) {
	need(t, "gunicorn")
	a := startFlock(t, "-workers", "2", "-ready", "notify", "-shutdown-timeout", "20s", "--",
		"gunicorn", "--workers", "1", "--graceful-timeout", "20", "--chdir", "../../example/gunicorn", "app:app")
	flocktest.Lifecycle(a, 2)
}

// Started by a .socket unit, the master takes systemd's socket instead of
// binding its own; systemd holds it through a full restart of the master,
// so that not even a stop and a start of the whole service, under load,
// fails a request. The test holds the socket, as systemd would, and starts
// the master through flock's own exec shim, which sets LISTEN_PID to the
// pid the master will have.
func TestSocketActivatedMasterRestarts(t *testing.T) {
	need(t, "node")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	sock, err := ln.(*net.TCPListener).File()
	require.NoError(t, err)
	defer sock.Close()
	start := func() *flocktest.App {
		cmd := exec.Command(os.Args[0], "-log-json", "-monitor", "127.0.0.1:0", "-workers", "2", "-shutdown-timeout", "20s",
			"--", "node", "../../example/node/server.js")
		cmd.ExtraFiles = []*os.File{sock}
		a := flocktest.Start(t, cmd, envAsFlock+"=1", "LISTEN_FDS=1", "LISTEN_FDNAMES=main", "FLOCK_EXEC="+os.Args[0])
		a.Started(2)
		require.Equal(t, ln.Addr().String(), a.Addr, "the master listens on systemd's socket")
		return a
	}
	first := start()
	url := "http://" + ln.Addr().String() + "/"
	fresh := flocktest.StartLoad(t, url, 4, false)
	kept := flocktest.StartLoad(t, url, 4, true)
	fresh.WaitRequests(200)
	kept.WaitRequests(200)

	first.Signal(syscall.SIGTERM)
	require.Equal(t, 0, first.ExitCode(30*time.Second))
	start()
	fresh.WaitRequests(200)
	kept.WaitRequests(200)
	flocktest.NoFailures(t, "a full restart of the master under load", map[string]*flocktest.LoadRun{"new connection per request": fresh, "keep-alive": kept})
}

// USR2 upgrades flock itself: a new master from the binary on disk takes
// the sockets and starts its own workers of the program; once they are
// ready the old master drains and exits 0. No request fails.
func TestUSR2(t *testing.T) {
	need(t, "node")
	a := startFlock(t, "-workers", "2", "-shutdown-timeout", "20s", "--", "node", "../../example/node/server.js")
	old := a.Started(2)
	fresh := flocktest.StartLoad(t, a.URL("/"), 4, false)
	kept := flocktest.StartLoad(t, a.URL("/"), 4, true)
	fresh.WaitRequests(200)
	kept.WaitRequests(200)
	a.Signal(syscall.SIGUSR2)
	assert.Equal(t, 0, a.ExitCode(30*time.Second), "the old master exits 0 once it has drained")
	fresh.WaitRequests(200)
	kept.WaitRequests(200)
	flocktest.NoFailures(t, "USR2 under load", map[string]*flocktest.LoadRun{"new connection per request": fresh, "keep-alive": kept})
	pid, err := flocktest.Get(a.URL("/"))
	require.NoError(t, err)
	assert.NotContains(t, old, pid, "the new master's workers serve")
}

// As root, -user runs the program as another user: the exec shim is
// executed from the master's open descriptor, and the program keeps its
// sockets.
func TestProgramAsAnotherUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: only root can start workers as another user")
	}
	python := "/usr/bin/python3" // the system's: a user's own (pyenv) is not the other user's to run
	if _, err := os.Stat(python); err != nil {
		t.Skipf("no %s (.ci/run installs it): %v", python, err)
	}
	serve := `import os, socket
s = socket.socket(fileno=3)
while True:
    c, _ = s.accept()
    c.recv(1024)
    c.sendall(b"HTTP/1.1 200 OK\r\nX-Worker-Pid: %d\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n" % os.getpid())
    c.close()`
	bin := flocktest.CopyBinary(t) // readable and executable by that user
	a := flocktest.Start(t, exec.Command(bin, "-log-json", "-addr", "127.0.0.1:0", "-monitor", "127.0.0.1:0", "-workers", "1",
		"-ready", "now", "-user", "nobody", "--", python, "-c", serve), envAsFlock+"=1")
	pid := a.Started(1)[0]
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	require.NoError(t, err)
	assert.Contains(t, string(status), "\nUid:\t65534\t65534\t65534\t65534\n")
	got, err := flocktest.Get(a.URL("/"))
	require.NoError(t, err)
	assert.Equal(t, pid, got)
}

// What a program sees is what systemd-socket-activate gives it: the same
// LISTEN_* variables, LISTEN_PID its own pid, fd 3 a listening stream
// socket, blocking and inherited across exec, and nothing else open.
func TestSameEnvironmentAsSystemd(t *testing.T) {
	activate := need(t, "systemd-socket-activate")
	python := need(t, "python3")
	script, err := filepath.Abs("testdata/listenenv.py")
	require.NoError(t, err)
	dir := t.TempDir()

	// Under systemd-socket-activate, which starts the program (in its own
	// process: LISTEN_PID is its pid) at the first connection.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	ln.Close()
	sd := flocktest.Start(t, exec.Command(activate, "-l", addr, "--fdname=main", python, script, filepath.Join(dir, "systemd.json")))
	require.True(t, flocktest.Poll(10*time.Second, func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	}), "systemd-socket-activate does not listen on %s", addr)
	systemd := readSeen(t, filepath.Join(dir, "systemd.json"))
	sd.Signal(syscall.SIGTERM)

	a := startFlock(t, "-workers", "1", "-ready", "now", "--", python, script, filepath.Join(dir, "flock.json"))
	a.Started(1)
	got := readSeen(t, filepath.Join(dir, "flock.json"))
	t.Logf("systemd-socket-activate gave: %v", systemd)
	assert.Equal(t, systemd, got)
	assert.Equal(t, "1", got["LISTEN_FDS"])
	assert.Equal(t, true, got["LISTEN_PID is its pid"])
}

func readSeen(t *testing.T, path string) map[string]any {
	t.Helper()
	var b []byte
	require.True(t, flocktest.Poll(20*time.Second, func() bool {
		var err error
		b, err = os.ReadFile(path)
		return err == nil
	}), "the program did not write %s", path)
	var seen map[string]any
	require.NoError(t, json.Unmarshal(b, &seen))
	return seen
}

// A program that ignores its socket and binds the port itself fails to,
// since the master's sockets hold it: it crashes at every start, which
// says why, and is given up; flock exits 1.
func TestProgramBindingThePortItselfFails(t *testing.T) {
	python := need(t, "python3")
	bind := `import os, socket; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", int(os.environ["PORT"]))); s.listen(); input()`
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := fmt.Sprint(ln.Addr().(*net.TCPAddr).Port)
	ln.Close()
	a := flocktest.Start(t, exec.Command(os.Args[0], "-log-json", "-monitor", "off", "-workers", "1", "-restart-delay", "1ms",
		"-restarts-per-minute", "2", "--", python, "-c", bind), envAsFlock+"=1", "PORT="+port)
	assert.Equal(t, 1, a.ExitCode(30*time.Second))
	assert.NotEmpty(t, a.Find(func(r flocktest.Rec) bool { return strings.Contains(r.Str("msg"), "Address already in use") }),
		"the program's own error is shown")
	assert.NotEmpty(t, a.Events("gave-up"))
}

// With -watchdog, a program that never says WATCHDOG=1 is killed once
// silent for -timeout, and replaced.
func TestWatchdogKillsASilentProgram(t *testing.T) {
	python := need(t, "python3")
	a := startFlock(t, "-workers", "1", "-ready", "now", "-watchdog", "-timeout", "1s", "--", python, "-c", "import signal; signal.pause()")
	pid := a.Started(1)[0]
	a.WaitFor("the silent worker killed", 20*time.Second, func(r flocktest.Rec) bool {
		return r.Str("event") == "exited" && r.Int("pid") == pid && r.Str("reason") == "timeout"
	})
	a.WaitFor("its replacement", 20*time.Second, func(r flocktest.Rec) bool { return r.Str("event") == "forked" && r.Str("reason") == "failure" })
}

// Bad input is an error naming it, and a defined exit status.
func TestBadInput(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{}, 2, "no program to run"},
		{[]string{"-ready", "soon", "--", "true"}, 2, `invalid value "soon" for flag -ready`},
		{[]string{"-stop-signal", "NOPE", "--", "true"}, 2, `"NOPE": not a signal name`},
		{[]string{"-output", "loud", "--", "true"}, 2, `"loud": want inherit, prefix or silent`},
		{[]string{"--", "no-such-program-here"}, 1, `flock: program "no-such-program-here": not found in PATH`},
		{[]string{"-max-requests", "5", "--", "true"}, 2, "flag provided but not defined: -max-requests"},
		{[]string{"-config", "testdata/unknown-key.json"}, 2, `testdata/unknown-key.json: unknown key "wokers"`},
		{[]string{"-config", "testdata/groups.json", "-ready", "notify"}, 2, `testdata/groups.json: with worker groups, ["ready"] belong in each group`},
		{[]string{"-config", "testdata/groups.json", "--", "true"}, 2, `worker groups ("workers") and a program (the command line's, or "program"): give one`},
		{[]string{"-config", "testdata/group-unknown-key.json"}, 2, `key "workers": group "web": json: unknown field "cmd"`},
		{[]string{"-config", "testdata/group-no-addr.json"}, 2, `the worker group the signals act on needs an "addr"`},
		{[]string{"-listen", "a:b=127.0.0.1:0", "--", "true"}, 1, `Listeners[0]: no colons in a name ("a:b")`},
	} {
		cmd := exec.Command(os.Args[0], tc.args...)
		cmd.Env = append(os.Environ(), envAsFlock+"=1")
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		require.ErrorAs(t, err, &exit, "%v: %s", tc.args, out)
		assert.Equal(t, tc.code, exit.ExitCode(), "%v: %s", tc.args, out)
		assert.Contains(t, string(out), tc.want, "%v", tc.args)
	}
}

// A config file sets flags by name and gives the program; flags on the
// command line win; the program runs in the file's folder.
func TestConfigFile(t *testing.T) {
	need(t, "node")
	dir := t.TempDir()
	server, err := filepath.Abs("../../example/node/server.js")
	require.NoError(t, err)
	require.NoError(t, os.Symlink(server, filepath.Join(dir, "server.js")))
	cfg := filepath.Join(dir, "flock.json")
	require.NoError(t, os.WriteFile(cfg, []byte(`{
		"workers": 3,
		"shutdown-timeout": "5s",
		"output": "prefix",
		"env": {"GREETING": "hi"},
		"program": ["node", "server.js"]
	}`), 0o644))
	a := startFlock(t, "-config", cfg, "-workers", "2")
	pids := a.Started(2)
	flocktest.WaitServed(a, 10*time.Second)
	for _, pid := range pids {
		line := fmt.Sprintf("[node %d] server.js: serving 1 socket(s)", pid)
		a.WaitFor("the worker's first line, prefixed", 10*time.Second, func(r flocktest.Rec) bool { return r.Str("msg") == line })
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		require.NoError(t, err)
		assert.Contains(t, strings.Split(string(env), "\x00"), "GREETING=hi")
		cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
		require.NoError(t, err)
		assert.Equal(t, dir, cwd)
	}
	a.Signal(syscall.SIGTERM)
	assert.Equal(t, 0, a.ExitCode(20*time.Second))
	assert.Len(t, a.Events("forked"), 2, "the command line's -workers wins over the file's")
}

// Worker groups from a config file (node-cluster-service's "workers"): a
// web server and a worker with no socket under one master. TTIN acts on
// the web group; HUP rolls both; a killed worker of either is re-forked;
// the command surface starts and restarts a group by name; TERM stops all.
func TestWorkerGroups(t *testing.T) {
	need(t, "node")
	python := need(t, "python3")
	dir := t.TempDir()
	server, err := filepath.Abs("../../example/node/server.js")
	require.NoError(t, err)
	// The queue consumer: no socket; it says which variables it got.
	consumer := `import os, signal, sys
print("consumer %d LISTEN_FDS=%s" % (os.getpid(), os.environ.get("LISTEN_FDS")), file=sys.stderr, flush=True)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    signal.pause()`
	cfg := filepath.Join(dir, "flock.json")
	js, err := json.Marshal(map[string]any{
		"access-key":   "k",
		"command-addr": "127.0.0.1:0",
		"workers": map[string]any{
			// Prefixed output: whole lines, so that the two programs' lines
			// never mix (inherited, a line written in two pieces can).
			"web":  map[string]any{"program": []string{"node", server}, "count": 2, "addr": "127.0.0.1:0", "output": "prefix"},
			"jobs": map[string]any{"program": []string{python, "-c", consumer}, "ready": "now", "output": "prefix"},
		},
	})
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(cfg, js, 0o644))
	a := flocktest.Start(t, exec.Command(os.Args[0], "-log-json", "-monitor", "127.0.0.1:0", "-shutdown-timeout", "20s", "-config", cfg),
		envAsFlock+"=1")
	a.Started(3)
	groups := func() map[string][]int {
		var st struct {
			Workers []struct {
				PID          int
				Group, State string
			}
		}
		_, body, _ := a.Mon("GET", "/")
		require.NoError(t, json.Unmarshal([]byte(body), &st))
		out := map[string][]int{}
		for _, w := range st.Workers {
			if w.State == "ready" {
				out[w.Group] = append(out[w.Group], w.PID)
			}
		}
		return out
	}
	g := groups()
	require.Len(t, g["web"], 2)
	require.Len(t, g["jobs"], 1)
	a.WaitFor("the consumer's line", 10*time.Second, func(r flocktest.Rec) bool {
		return r.Str("msg") == fmt.Sprintf("[jobs %d] consumer %d LISTEN_FDS=None", g["jobs"][0], g["jobs"][0])
	})
	flocktest.WaitServed(a, 10*time.Second)

	load := flocktest.StartLoad(t, a.URL("/"), 4, false)
	load.WaitRequests(100)
	a.SignalUntil(syscall.SIGTTIN, "a web worker more", func(r flocktest.Rec) bool { return r.Str("event") == "scaled" })
	a.WaitUntil("3 web workers", 20*time.Second, func() bool { return len(groups()["web"]) == 3 })
	assert.Len(t, groups()["jobs"], 1, "TTIN is the web group's")

	a.SignalUntil(syscall.SIGHUP, "the roll", func(r flocktest.Rec) bool { return r.Str("event") == "roll" && r.Str("reason") != "began" })
	a.WaitUntil("every worker replaced", 20*time.Second, func() bool {
		now := groups()
		return len(now["web"]) == 3 && len(now["jobs"]) == 1 && !slices.Contains(now["jobs"], g["jobs"][0])
	})
	load.WaitRequests(100)
	res := load.Stop()
	t.Logf("TTIN and HUP under load: %s", res)
	assert.Zero(t, res.Failed.Load(), res.String())

	job := groups()["jobs"][0]
	require.NoError(t, syscall.Kill(job, syscall.SIGKILL))
	a.WaitUntil("the consumer re-forked", 20*time.Second, func() bool {
		now := groups()["jobs"]
		return len(now) == 1 && now[0] != job
	})

	cmdAddr := a.WaitFor("the command endpoint", 10*time.Second, func(r flocktest.Rec) bool { return r.Str("msg") == "command: endpoint listening" }).Str("addr")
	call := func(line string) (int, string) {
		resp, err := http.Post("http://"+cmdAddr+"/cli?accessKey=k&cmd="+url.QueryEscape(line), "", nil)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, body := call(`start jobs {"count":1}`)
	assert.Equal(t, 200, code, body)
	a.WaitUntil("2 consumers", 20*time.Second, func() bool { return len(groups()["jobs"]) == 2 })
	before := groups()["jobs"]
	code, body = call("restart jobs")
	assert.Equal(t, 200, code, body)
	assert.Equal(t, `"2 workers restarted successfully"`, body)
	now := groups()
	assert.Len(t, now["web"], 3)
	for _, pid := range now["jobs"] {
		assert.NotContains(t, before, pid, "restart jobs replaced the consumers")
	}
	code, body = call("start nope")
	assert.Equal(t, 400, code)
	assert.Contains(t, body, `no such group "nope" (the groups are ["web" "jobs"])`)
	code, body = call("upgrade all /bin/true")
	assert.Equal(t, 400, code)
	assert.Contains(t, body, "a program's workers start from its Program.Path")
	jobs := groups()["jobs"]
	code, _ = call(fmt.Sprintf("shutdown %d", jobs[0]))
	assert.Equal(t, 200, code, "one of two consumers")
	a.WaitUntil("1 consumer", 20*time.Second, func() bool { return len(groups()["jobs"]) == 1 })
	code, body = call(fmt.Sprintf("shutdown %d", groups()["jobs"][0]))
	assert.Equal(t, 400, code)
	assert.Contains(t, body, `that would stop every worker of group "jobs"`)

	a.Signal(syscall.SIGTERM)
	assert.Equal(t, 0, a.ExitCode(30*time.Second))
}

// When the service's group (the port's) gives up, the master stops the
// other groups and exits 1: a queue consumer alone is not the service.
func TestWorkerGroupsGiveUpWithTheService(t *testing.T) {
	python := need(t, "python3")
	cfg := filepath.Join(t.TempDir(), "flock.json")
	js, err := json.Marshal(map[string]any{"restart-delay": "1ms", "restarts-per-minute": 2, "workers": map[string]any{
		"web":  map[string]any{"program": []string{python, "-c", "raise SystemExit(3)"}, "addr": "127.0.0.1:0"},
		"jobs": map[string]any{"program": []string{python, "-c", "import signal, sys\nsignal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\nwhile True: signal.pause()"}, "ready": "now"},
	}})
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(cfg, js, 0o644))
	a := flocktest.Start(t, exec.Command(os.Args[0], "-log-json", "-monitor", "127.0.0.1:0", "-config", cfg), envAsFlock+"=1")
	assert.Equal(t, 1, a.ExitCode(30*time.Second))
	assert.NotEmpty(t, a.Find(func(r flocktest.Rec) bool { return strings.Contains(r.Str("msg"), "no worker left") }))
	jobs := a.Find(func(r flocktest.Rec) bool { return r.Str("event") == "exited" && r.Str("reason") == "shutdown" })
	assert.NotEmpty(t, jobs, "the consumer was stopped, gracefully")
}

// USR2 hands each slot back to its group: the new master runs the same
// groups, on the same sockets, and no request fails.
func TestWorkerGroupsSurviveUSR2(t *testing.T) {
	need(t, "node")
	python := need(t, "python3")
	server, err := filepath.Abs("../../example/node/server.js")
	require.NoError(t, err)
	cfg := filepath.Join(t.TempDir(), "flock.json")
	js, err := json.Marshal(map[string]any{"workers": map[string]any{
		"jobs": map[string]any{"program": []string{python, "-c", "import signal\nwhile True: signal.pause()"}, "ready": "now", "count": 2},
		"web":  map[string]any{"program": []string{"node", server}, "count": 2, "addr": "127.0.0.1:0", "listen": []string{"admin=127.0.0.1:0"}},
	}})
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(cfg, js, 0o644))
	a := flocktest.Start(t, exec.Command(os.Args[0], "-log-json", "-monitor", "127.0.0.1:0", "-config", cfg), envAsFlock+"=1")
	a.Started(4)
	var st struct {
		Listeners []struct{ Name, Addr string }
	}
	_, body, _ := a.Mon("GET", "/")
	require.NoError(t, json.Unmarshal([]byte(body), &st))
	require.Len(t, st.Listeners, 2)
	assert.Equal(t, "main", st.Listeners[0].Name, "the group the signals act on is the first with an address, and its address the main listener")
	load := flocktest.StartLoad(t, a.URL("/"), 4, false)
	admin := flocktest.StartLoad(t, "http://"+st.Listeners[1].Addr+"/", 2, true)
	load.WaitRequests(100)
	admin.WaitRequests(100)
	a.Signal(syscall.SIGUSR2)
	assert.Equal(t, 0, a.ExitCode(30*time.Second))
	load.WaitRequests(100)
	admin.WaitRequests(100)
	flocktest.NoFailures(t, "USR2 with two groups", map[string]*flocktest.LoadRun{"web": load, "admin": admin})
	heir := a.WaitFor("the handover", time.Second, func(r flocktest.Rec) bool { return r.Str("event") == "upgrade" && r.Str("reason") == "handed over" }).Int("new_master")
	// The new master's status: both groups, whole.
	var after struct {
		Workers []struct{ Group, State string }
	}
	a.WaitUntil("the new master's 4 workers ready", 20*time.Second, func() bool {
		_, body, _ := a.Mon("GET", "/")
		if json.Unmarshal([]byte(body), &after) != nil {
			return false
		}
		n := map[string]int{}
		for _, w := range after.Workers {
			if w.State == "ready" {
				n[w.Group]++
			}
		}
		return n["web"] == 2 && n["jobs"] == 2 && len(after.Workers) == 4
	})
	assert.True(t, flocktest.Alive(heir))
}

// Recycling (-max-uptime) replaces a program's workers as flock's own,
// readiness-gated, under load, and the output can be silenced.
func TestRecycleSilently(t *testing.T) {
	need(t, "node")
	a := startFlock(t, "-workers", "2", "-max-uptime", "1500ms", "-output", "silent", "--", "node", "../../example/node/server.js")
	a.Started(2)
	load := flocktest.StartLoad(t, a.URL("/"), 4, false)
	kept := flocktest.StartLoad(t, a.URL("/"), 4, true)
	a.WaitUntil("4 workers recycled", 30*time.Second, func() bool {
		return len(a.Find(func(r flocktest.Rec) bool { return r.Str("event") == "exited" && r.Str("reason") == "recycle" })) >= 4
	})
	flocktest.NoFailures(t, "recycling under load", map[string]*flocktest.LoadRun{"new connection per request": load, "keep-alive": kept})
	assert.Empty(t, a.Find(func(r flocktest.Rec) bool { return strings.HasPrefix(r.Str("msg"), "server.js:") }), "-output silent")
}
