package flock

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The integration tests run real masters and workers: the test binary
// re-executes itself with FLOCK_TEST_APP set, and TestMain then runs the
// application below instead of the tests. Its workers are re-executions of
// the same binary, so they come back through here too.

const envTestApp = "FLOCK_TEST_APP"

// appSpec is the test application's configuration, passed as JSON.
type appSpec struct {
	Addr     string
	Workers  int
	Shutdown time.Duration
	Drain    time.Duration
	Restart  time.Duration
	Budget   int
	PIDFile  string
	TLSCert  string
	TLSKey   string
	User     string
	FailBoot bool // every worker's Init fails

	Monitor      string
	Probe        string
	ProbeTimeout time.Duration
	AccessKey    string
	ReadOnly     bool

	InitDelay      time.Duration // every worker's Init sleeps this long
	BootTimeout    time.Duration
	Timeout        time.Duration
	MaxRequests    int
	MaxUptime      time.Duration
	UpgradeTimeout time.Duration
}

func TestMain(m *testing.M) {
	if spec := os.Getenv(envTestApp); spec != "" {
		os.Exit(runTestApp(spec))
	}
	os.Exit(m.Run())
}

func runTestApp(js string) int {
	var s appSpec
	if err := json.Unmarshal([]byte(js), &s); err != nil {
		fmt.Fprintln(os.Stderr, "bad app spec:", err)
		return 2
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	o := Options{
		Addr: s.Addr, Workers: s.Workers, ShutdownTimeout: s.Shutdown, DrainDelay: s.Drain,
		RestartDelay: s.Restart, RestartsPerMinute: s.Budget, PIDFile: s.PIDFile,
		TLSCertFile: s.TLSCert, TLSKeyFile: s.TLSKey, User: s.User, Logger: log,
		MonitorAddr: s.Monitor, MonitorProbe: s.Probe, MonitorProbeTimeout: s.ProbeTimeout,
		AccessKey: s.AccessKey, MonitorReadOnly: s.ReadOnly,
		BootTimeout: s.BootTimeout, Timeout: s.Timeout, MaxRequests: s.MaxRequests,
		MaxUptime: s.MaxUptime, UpgradeTimeout: s.UpgradeTimeout,
	}
	// FLOCK_TEST_BREAK makes a "broken binary" of the same executable (a
	// wrapper script sets it): its workers fail at boot.
	switch {
	case s.FailBoot || os.Getenv("FLOCK_TEST_BREAK") != "":
		o.Init = func() error { return errors.New("init refuses on purpose") }
	case s.InitDelay > 0:
		o.Init = func() error { time.Sleep(s.InitDelay); return nil }
	}
	pid := strconv.Itoa(os.Getpid())
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Worker-Pid", pid)
		fmt.Fprintf(w, "Hello from worker %s\n", pid)
	})
	mux.HandleFunc("/fail", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "failing on purpose", http.StatusInternalServerError)
	})
	mux.HandleFunc("/sleep", func(w http.ResponseWriter, r *http.Request) {
		d, _ := time.ParseDuration(r.URL.Query().Get("d"))
		log.Info("sleeping", "event", "sleeping", "pid", os.Getpid(), "d", d.String())
		time.Sleep(d)
		w.Header().Set("X-Worker-Pid", pid)
		fmt.Fprintf(w, "Hello from worker %s\n", pid)
	})
	err := Serve(mux, o)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, ErrInterrupted):
		return 130
	default:
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
}

// app is one running master (and its workers) started by a test.
type app struct {
	t       *testing.T
	cmd     *exec.Cmd
	pid     int
	addr    string
	monitor string
	exited  chan struct{}

	mu     sync.Mutex
	recs   []rec
	stderr strings.Builder
}

// rec is one JSON log line of the master or a worker.
type rec map[string]any

func (r rec) str(k string) string { s, _ := r[k].(string); return s }
func (r rec) int(k string) int    { f, _ := r[k].(float64); return int(f) }

// startApp starts a master in its own process group and kills the whole
// group when the test ends, whatever happened.
func startApp(t *testing.T, s appSpec) *app {
	t.Helper()
	if s.Workers == 0 {
		s.Workers = 2
	}
	return startAppAt(t, os.Args[0], s)
}

func startAppCmd(t *testing.T, cmd *exec.Cmd, spec string) *app {
	t.Helper()
	cmd.Env = append(os.Environ(), envTestApp+"="+spec)
	if os.Getenv("GORACE") == "" {
		// Race-enabled binaries sleep 1 s at exit by default; every worker
		// exit would cost that. Races in the children still fail the test
		// (see the cleanup below).
		cmd.Env = append(cmd.Env, "GORACE=atexit_sleep_ms=20")
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	r, w, err := os.Pipe()
	require.NoError(t, err)
	cmd.Stderr = w
	require.NoError(t, cmd.Start())
	w.Close()
	a := &app{t: t, cmd: cmd, pid: cmd.Process.Pid, exited: make(chan struct{})}
	go a.read(r)
	go func() { cmd.Wait(); close(a.exited) }()
	t.Cleanup(func() {
		// The process group holds the master, its workers, and any new
		// master a USR2 started with its own workers.
		syscall.Kill(-a.pid, syscall.SIGKILL)
		<-a.exited
		if races := a.find(func(r rec) bool { return strings.Contains(r.str("msg"), "WARNING: DATA RACE") }); len(races) > 0 {
			t.Errorf("the application's processes reported %d data races", len(races))
		}
		if t.Failed() || os.Getenv("FLOCK_TEST_LOGS") != "" {
			a.mu.Lock()
			t.Logf("output of the application:\n%s", a.stderr.String())
			a.mu.Unlock()
		}
	})
	return a
}

func (a *app) read(r io.ReadCloser) {
	defer r.Close()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		var v rec
		if json.Unmarshal([]byte(line), &v) != nil {
			v = rec{"msg": line, "raw": true}
		}
		a.mu.Lock()
		a.recs = append(a.recs, v)
		a.stderr.WriteString(line + "\n")
		a.mu.Unlock()
	}
}

// started waits until the master listens and n workers are ready, and
// returns their pids.
func (a *app) started(n int) []int {
	a.t.Helper()
	a.listening()
	a.waitUntil(fmt.Sprintf("%d workers ready", n), 20*time.Second, func() bool { return len(a.events("ready")) >= n })
	var pids []int
	for _, r := range a.events("ready") {
		pids = append(pids, r.int("pid"))
	}
	return pids
}

// listening waits until the master has bound its sockets.
func (a *app) listening() {
	a.t.Helper()
	l := a.waitFor("listening", 10*time.Second, func(r rec) bool { return r.str("event") == "listening" })
	a.addr, a.monitor = l.str("addr"), l.str("monitor")
}

func (a *app) events(kind string) []rec {
	return a.find(func(r rec) bool { return r.str("event") == kind })
}

func (a *app) find(match func(rec) bool) []rec {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []rec
	for _, r := range a.recs {
		if match(r) {
			out = append(out, r)
		}
	}
	return out
}

// waitFor polls the logs for the first record that matches.
func (a *app) waitFor(what string, d time.Duration, match func(rec) bool) rec {
	a.t.Helper()
	var found rec
	a.waitUntil(what, d, func() bool {
		if rs := a.find(match); len(rs) > 0 {
			found = rs[0]
			return true
		}
		return false
	})
	return found
}

func (a *app) waitUntil(what string, d time.Duration, cond func() bool) {
	a.t.Helper()
	require.True(a.t, poll(d, cond), "timed out after %v waiting for %s", d, what)
}

// poll checks cond every 10 ms until it holds or d has passed.
func poll(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (a *app) signal(sig syscall.Signal) {
	a.t.Helper()
	require.NoError(a.t, syscall.Kill(a.pid, sig))
}

// exitCode waits for the master to exit and returns its status.
func (a *app) exitCode(d time.Duration) int {
	a.t.Helper()
	select {
	case <-a.exited:
		return a.cmd.ProcessState.ExitCode()
	case <-time.After(d):
		require.FailNow(a.t, "master still running", "after %v", d)
		return 0
	}
}

func (a *app) url(path string) string { return "http://" + a.addr + path }

// mon sends a request to the monitor and returns the status and body.
func (a *app) mon(method, path string) (int, string, http.Header) {
	a.t.Helper()
	req, err := http.NewRequest(method, "http://"+a.monitor+path, nil)
	require.NoError(a.t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(a.t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(a.t, err)
	return resp.StatusCode, string(b), resp.Header
}

// get makes one request on a fresh connection.
func get(url string) (pid int, err error) {
	c := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if _, err := io.ReadAll(resp.Body); err != nil {
		return 0, err
	}
	if resp.StatusCode != 200 {
		return 0, fmt.Errorf("status %d", resp.StatusCode)
	}
	return strconv.Atoi(resp.Header.Get("X-Worker-Pid"))
}

// alive reports whether pid is a running (not zombie) process.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && len(s) > i+2 && s[i+2] != 'Z'
}

// procState is the one-letter state in /proc/pid/stat (R, S, T, Z…).
func procState(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i > 0 && len(s) > i+2 {
		return s[i+2 : i+3]
	}
	return ""
}

// startLoad runs load in the background until the returned function is
// called (or a minute has passed), and returns what it counted.
func startLoad(url string, clients int, keepAlive bool) func() *loadResult {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	done := make(chan *loadResult)
	go func() { done <- load(ctx, url, clients, 1_000_000, keepAlive) }()
	return func() *loadResult { cancel(); return <-done }
}

// copyTestBinary copies the test binary into a fresh directory everyone may
// read, and returns its path: a test can then replace the file as a deploy
// would.
func copyTestBinary(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "flock-bin-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	require.NoError(t, os.Chmod(dir, 0o755))
	bin := dir + "/app"
	installBinary(t, bin, "")
	return bin
}

// installBinary puts a new file at path, by rename as a deploy does: a
// fresh copy of the test binary, or, when script is set, that shell script.
func installBinary(t *testing.T, path, script string) {
	t.Helper()
	data := []byte(script)
	if script == "" {
		var err error
		data, err = os.ReadFile(os.Args[0])
		require.NoError(t, err)
	}
	require.NoError(t, os.WriteFile(path+".new", data, 0o755))
	require.NoError(t, os.Rename(path+".new", path))
}

// startAppAt starts the test application from the binary at bin.
func startAppAt(t *testing.T, bin string, s appSpec) *app {
	t.Helper()
	if s.Addr == "" {
		s.Addr = "127.0.0.1:0"
	}
	js, err := json.Marshal(s)
	require.NoError(t, err)
	return startAppCmd(t, exec.Command(bin), string(js))
}

// loadResult counts what a load run saw.
type loadResult struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	firstErrs  []string
}

func (l *loadResult) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return fmt.Sprintf("%d ok, %d failed %v", l.ok.Load(), l.failed.Load(), l.firstErrs)
}

// load runs clients goroutines sending GET requests to url until ctx ends
// or maxRequests have been sent. keepAlive chooses between reusing
// connections and opening a new one per request.
func load(ctx context.Context, url string, clients, maxRequests int, keepAlive bool) *loadResult {
	res := &loadResult{}
	tr := &http.Transport{DisableKeepAlives: !keepAlive, MaxIdleConnsPerHost: clients}
	defer tr.CloseIdleConnections()
	c := &http.Client{Timeout: 10 * time.Second, Transport: tr}
	var sent atomic.Int64
	var wg sync.WaitGroup
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil && sent.Add(1) <= int64(maxRequests) {
				resp, err := c.Get(url)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if err == nil && resp.StatusCode != 200 {
						err = fmt.Errorf("status %d", resp.StatusCode)
					}
				}
				if err != nil {
					res.failed.Add(1)
					res.mu.Lock()
					if len(res.firstErrs) < 5 {
						res.firstErrs = append(res.firstErrs, err.Error())
					}
					res.mu.Unlock()
					continue
				}
				res.ok.Add(1)
			}
		}()
	}
	wg.Wait()
	return res
}

func TestResolveDefaults(t *testing.T) {
	env := func(kv map[string]string) func(string) string { return func(k string) string { return kv[k] } }

	c, err := Options{}.resolve(env(nil))
	require.NoError(t, err)
	assert.Equal(t, ":5000", c.Addr)
	assert.Equal(t, 30*time.Second, c.ShutdownTimeout)
	assert.Equal(t, 100*time.Millisecond, c.RestartDelay)
	assert.Equal(t, 10, c.RestartsPerMinute)
	assert.Equal(t, 30*time.Second, c.IdleTimeout)
	assert.Equal(t, 10*time.Second, c.ReadHeaderTimeout)
	assert.Positive(t, c.Workers)

	c, err = Options{}.resolve(env(map[string]string{"PORT": "8080", "WEB_CONCURRENCY": "3"}))
	require.NoError(t, err)
	assert.Equal(t, ":8080", c.Addr)
	assert.Equal(t, 8080, c.port)
	assert.Equal(t, 3, c.Workers)

	// Explicit options win over the environment.
	c, err = Options{Addr: "127.0.0.1:7000", Workers: 5}.resolve(env(map[string]string{"PORT": "8080", "WEB_CONCURRENCY": "3"}))
	require.NoError(t, err)
	assert.Equal(t, "127.0.0.1:7000", c.Addr)
	assert.Equal(t, 5, c.Workers)
}

func TestResolveRejects(t *testing.T) {
	for _, tc := range []struct {
		o    Options
		env  map[string]string
		want string
	}{
		{Options{Workers: -1}, nil, "Workers -1"},
		{Options{Addr: "localhost"}, nil, `Addr "localhost"`},
		{Options{Addr: ":99999"}, nil, `Addr ":99999"`},
		{Options{}, map[string]string{"PORT": "http"}, `PORT="http"`},
		{Options{}, map[string]string{"WEB_CONCURRENCY": "0"}, `WEB_CONCURRENCY="0"`},
		{Options{ShutdownTimeout: -time.Second}, nil, "ShutdownTimeout -1s"},
		{Options{RestartDelay: -1}, nil, "RestartDelay -1ns"},
		{Options{RestartsPerMinute: -2}, nil, "RestartsPerMinute -2"},
		{Options{WorkerGOMAXPROCS: -1}, nil, "WorkerGOMAXPROCS -1"},
		{Options{TLSCertFile: "cert.pem"}, nil, `TLSCertFile "cert.pem" and TLSKeyFile ""`},
		{Options{TLSCertFile: "/nonexistent.pem", TLSKeyFile: "/nonexistent.key"}, nil, `TLSCertFile "/nonexistent.pem"`},
		{Options{User: "no-such-user-here"}, nil, `User "no-such-user-here": no such user`},
		{Options{Group: "no-such-group-here"}, nil, `Group "no-such-group-here": no such group`},
	} {
		_, err := tc.o.resolve(func(k string) string { return tc.env[k] })
		if assert.Error(t, err, "%+v", tc.o) {
			assert.Contains(t, err.Error(), tc.want)
		}
	}
}

// Serve itself reports bad options before it starts anything.
func TestServeRejectsBadOptions(t *testing.T) {
	err := Serve(http.NotFoundHandler(), Options{Workers: -3})
	require.Error(t, err)
	assert.Equal(t, "flock: Workers -3: must be at least 1 (0 means the default)", err.Error())
}

func TestServesFromEveryWorker(t *testing.T) {
	a := startApp(t, appSpec{Workers: 2})
	pids := a.started(2)
	seen := map[int]bool{}
	require.True(t, poll(10*time.Second, func() bool {
		pid, err := get(a.url("/"))
		require.NoError(t, err)
		seen[pid] = true
		return len(seen) == 2
	}), "answers came only from %v", seen)
	assert.ElementsMatch(t, pids, keys(seen))
}

func keys(m map[int]bool) []int {
	var out []int
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestBusyPort(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	a := startApp(t, appSpec{Addr: ln.Addr().String()})
	assert.Equal(t, 1, a.exitCode(10*time.Second))
	want := fmt.Sprintf("flock: listen %s: address already in use", ln.Addr())
	assert.NotEmpty(t, a.find(func(r rec) bool { return r.str("msg") == want }), "no line %q", want)
	assert.Empty(t, a.events("forked"), "no worker may start when the port is busy")
}

func TestPIDFile(t *testing.T) {
	path := t.TempDir() + "/flock.pid"
	a := startApp(t, appSpec{PIDFile: path})
	a.started(2)
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, strconv.Itoa(a.pid)+"\n", string(b))
	a.signal(syscall.SIGTERM)
	assert.Equal(t, 0, a.exitCode(10*time.Second))
	assert.NoFileExists(t, path)
}
