// Package flocktest runs flock applications as real process trees for
// tests: a master in its own process group (killed whole when the test
// ends), its JSON logs parsed as they come, a bounded load driver, and
// helpers for signals, sockets and network namespaces. Nothing here mocks
// the operating system.
package flocktest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/flockhq/flock/internal/loadgen"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// App is one running master (and its workers) started by a test.
type App struct {
	t   *testing.T
	Cmd *exec.Cmd
	PID int
	// Addr and Monitor are the application's and the monitor's addresses,
	// known once Listening (or Started) has returned.
	Addr, Monitor string
	exited        chan struct{}
	// readDone is closed when the reader of the processes' stderr has
	// reached end of file: every process holding the pipe has exited, and
	// the cleanup has closed w.
	readDone chan struct{}
	// w is the test's own write end of that pipe, for marks (see caughtUp).
	w *os.File

	mu     sync.Mutex
	recs   []Rec
	stderr strings.Builder
	marks  map[string]chan struct{} // written, not yet read
	nmarks int
}

// markPrefix starts the lines the test itself writes into the stderr pipe
// (see caughtUp); the reader keeps them out of the records.
const markPrefix = "flocktest: mark "

// Rec is one JSON log line of the master or a worker.
type Rec map[string]any

// T is the test the App belongs to.
func (a *App) T() *testing.T { return a.t }

// StillServedBy asserts that each worker in pids is alive and that a
// request is answered by one of them: what a failed replacement must leave.
func (a *App) StillServedBy(pids []int) {
	a.t.Helper()
	for _, pid := range pids {
		assert.True(a.t, Alive(pid), "old worker %d was stopped", pid)
	}
	pid, err := Get(a.URL("/"))
	require.NoError(a.t, err)
	assert.Contains(a.t, pids, pid)
}

// Str is the string at k, or "".
func (r Rec) Str(k string) string { s, _ := r[k].(string); return s }

// Int is the number at k, or 0.
func (r Rec) Int(k string) int { f, _ := r[k].(float64); return int(f) }

// Start starts cmd, with env added to the environment, as the master of a
// new process group, and kills the whole group when the test ends,
// whatever happened. The test fails if any of the processes reports a data
// race.
func Start(t *testing.T, cmd *exec.Cmd, env ...string) *App {
	t.Helper()
	cmd.Env = append(os.Environ(), env...)
	if os.Getenv("GORACE") == "" {
		// Race-enabled binaries sleep 1 s at exit by default; every worker
		// exit would cost that. Races in the children still fail the test
		// (see the cleanup below).
		cmd.Env = append(cmd.Env, "GORACE=atexit_sleep_ms=20")
	}
	// Its own process group, so the cleanup below can kill the whole tree;
	// and killed with the test binary, should that die before the cleanup
	// runs (a go test timeout): its workers then follow it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	r, w, err := os.Pipe()
	require.NoError(t, err)
	cmd.Stderr = w
	if err := cmd.Start(); err != nil {
		r.Close()
		w.Close()
		require.NoError(t, err)
	}
	// The test keeps its write end open until the cleanup, to write marks.
	a := &App{t: t, Cmd: cmd, PID: cmd.Process.Pid, w: w, exited: make(chan struct{}), readDone: make(chan struct{}), marks: map[string]chan struct{}{}}
	go a.read(r)
	go func() { cmd.Wait(); close(a.exited) }()
	t.Cleanup(func() {
		// The process group holds the master, its workers, and any new
		// master a USR2 started with its own workers. Foreign workers
		// (Supervise) are process groups of their own.
		killGroupsBelow(a.PID)
		syscall.Kill(-a.PID, syscall.SIGKILL)
		<-a.exited
		// Only at end of file is every line read, a race report a worker
		// wrote just before it was killed included. It comes once the
		// test's own end is closed and every process of the group has gone,
		// which SIGKILL makes quick; the bound is for a process that
		// escaped the group, which would be a leak.
		a.w.Close()
		select {
		case <-a.readDone:
		case <-time.After(10 * time.Second):
			t.Errorf("the application's stderr is still open 10 s after its process group was killed: some process outside the group holds it (leaked), and its last lines, race reports included, may be missing")
		}
		if races := a.Find(func(r Rec) bool { return strings.Contains(r.Str("msg"), "WARNING: DATA RACE") }); len(races) > 0 {
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

// killGroupsBelow kills the process groups that processes of group pgid
// started: a foreign worker (Supervise) leads one, so that its own
// children die with it. The group is stopped first, so that no master
// forks a replacement meanwhile; a process that has not stopped within
// the bound may have forked one, which the walk then misses.
func killGroupsBelow(pgid int) {
	syscall.Kill(-pgid, syscall.SIGSTOP)
	members := groupMembers(pgid)
	Poll(2*time.Second, func() bool {
		for _, p := range members {
			if Alive(p) && !Stopped(p) {
				return false
			}
		}
		return true
	})
	var walk func(pid int)
	walk = func(pid int) {
		for _, c := range children(pid) {
			if g, err := syscall.Getpgid(c); err == nil && g != pgid {
				syscall.Kill(-g, syscall.SIGKILL)
			}
			syscall.Kill(c, syscall.SIGKILL)
			walk(c)
		}
	}
	for _, p := range members {
		walk(p)
	}
}

// groupMembers are the processes of group pgid.
func groupMembers(pgid int) []int {
	dirs, _ := os.ReadDir("/proc")
	var pids []int
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		if g, err := syscall.Getpgid(pid); err == nil && g == pgid {
			pids = append(pids, pid)
		}
	}
	return pids
}

// children are pid's child processes.
func children(pid int) []int {
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	var out []int
	for _, t := range tasks {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, t.Name()))
		for _, f := range strings.Fields(string(b)) {
			if c, err := strconv.Atoi(f); err == nil {
				out = append(out, c)
			}
		}
	}
	return out
}

// read parses the processes' stderr, a record per line, until end of file.
// Lines of any length are read: stopping early would leave the writers
// blocked on a full pipe, or killed by SIGPIPE.
func (a *App) read(r io.ReadCloser) {
	defer close(a.readDone)
	defer r.Close()
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := br.ReadString('\n')
		if line = strings.TrimSuffix(line, "\n"); line != "" {
			a.record(line)
		}
		if err != nil {
			return
		}
	}
}

func (a *App) record(line string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if strings.HasPrefix(line, markPrefix) {
		if ch, ok := a.marks[line]; ok {
			close(ch)
			delete(a.marks, line)
		}
		return
	}
	var v Rec
	if json.Unmarshal([]byte(line), &v) != nil {
		v = Rec{"msg": line, "raw": true}
	}
	a.recs = append(a.recs, v)
	a.stderr.WriteString(line + "\n")
}

// caughtUp reports whether, within d, the reader has read everything
// written to the stderr pipe before the call. It writes a mark line into
// the pipe and waits for the reader to come to it: a pipe is read in the
// order it was written. The mark begins with a newline, so that it is a
// line of its own even if it lands after an unfinished one.
func (a *App) caughtUp(d time.Duration) bool {
	a.mu.Lock()
	a.nmarks++
	mark := fmt.Sprintf("%s%d", markPrefix, a.nmarks)
	seen := make(chan struct{})
	a.marks[mark] = seen
	a.mu.Unlock()
	if _, err := a.w.WriteString("\n" + mark + "\n"); err != nil {
		// The reader is gone (end of file): it has read everything.
		select {
		case <-a.readDone:
			return true
		case <-time.After(d):
			return false
		}
	}
	select {
	case <-seen:
		return true
	case <-a.readDone:
		return true
	case <-time.After(d):
		return false
	}
}

// Started waits until the master listens and n workers are ready, and
// returns the pids of the workers that became ready, in order.
func (a *App) Started(n int) []int {
	a.t.Helper()
	a.Listening()
	a.WaitUntil(fmt.Sprintf("%d workers ready", n), 20*time.Second, func() bool { return len(a.Events("ready")) >= n })
	var pids []int
	for _, r := range a.Events("ready") {
		pids = append(pids, r.Int("pid"))
	}
	return pids
}

// Listening waits until the master has bound its sockets, and sets Addr
// and Monitor.
func (a *App) Listening() {
	a.t.Helper()
	l := a.WaitFor("listening", 10*time.Second, func(r Rec) bool { return r.Str("event") == "listening" })
	a.Addr, a.Monitor = l.Str("addr"), l.Str("monitor")
}

// Events is every record of the event kind so far.
func (a *App) Events(kind string) []Rec {
	return a.Find(func(r Rec) bool { return r.Str("event") == kind })
}

// Find is every record so far that matches.
func (a *App) Find(match func(Rec) bool) []Rec {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []Rec
	for _, r := range a.recs {
		if match(r) {
			out = append(out, r)
		}
	}
	return out
}

// WaitFor waits up to d for a record that matches, and returns the first
// one; the test fails if none comes.
func (a *App) WaitFor(what string, d time.Duration, match func(Rec) bool) Rec {
	a.t.Helper()
	var found Rec
	a.WaitUntil(what, d, func() bool {
		if rs := a.Find(match); len(rs) > 0 {
			found = rs[0]
			return true
		}
		return false
	})
	return found
}

// WaitUntil waits up to d for cond to hold; the test fails if it does not,
// naming what it waited for.
func (a *App) WaitUntil(what string, d time.Duration, cond func() bool) {
	a.t.Helper()
	require.True(a.t, Poll(d, cond), "timed out after %v waiting for %s", d, what)
}

// Poll checks cond every 10 ms until it holds or d has passed, and reports
// whether it held.
func Poll(d time.Duration, cond func() bool) bool {
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

// Signal sends sig to the master.
func (a *App) Signal(sig syscall.Signal) {
	a.t.Helper()
	require.NoError(a.t, syscall.Kill(a.PID, sig))
}

// SignalUntil sends sig to the master and waits up to 10 s for one more
// record matching than there was before: the effect of that signal. A test
// that sends several signals of one kind waits this way between them,
// since signals sent faster than the master takes them coalesce in the
// kernel and would be acted on once.
func (a *App) SignalUntil(sig syscall.Signal, what string, match func(Rec) bool) Rec {
	a.t.Helper()
	before := len(a.Find(match))
	a.Signal(sig)
	var found Rec
	a.WaitUntil(what, 10*time.Second, func() bool {
		rs := a.Find(match)
		if len(rs) > before {
			found = rs[before]
			return true
		}
		return false
	})
	return found
}

// Event matches the records of the event kind.
func Event(kind string) func(Rec) bool {
	return func(r Rec) bool { return r.Str("event") == kind }
}

// ExitCode waits up to d for the master to exit, then until every line it
// wrote has been read, and returns its exit status.
//
// Every line: its writes all happened before it exited, so a mark written
// into the pipe after the exit comes behind them, and once the reader has
// come to the mark they have been read (see caughtUp). Waiting for end of
// file instead would be right only when the master leaves no process
// behind: the pipe stays open while any process holding it runs, and a
// USR2 upgrade leaves, by design, a new master and its workers running
// until the test's cleanup kills them.
func (a *App) ExitCode(d time.Duration) int {
	a.t.Helper()
	select {
	case <-a.exited:
	case <-time.After(d):
		require.FailNow(a.t, "master still running", "after %v", d)
	}
	require.True(a.t, a.caughtUp(10*time.Second), "the master's last lines were not read within 10 s of its exit")
	return a.Cmd.ProcessState.ExitCode()
}

// URL is the application's URL for path.
func (a *App) URL(path string) string { return "http://" + a.Addr + path }

// Mon sends a request to the monitor and returns the status, the body and
// the header.
func (a *App) Mon(method, path string) (int, string, http.Header) {
	a.t.Helper()
	req, err := http.NewRequest(method, "http://"+a.Monitor+path, nil)
	require.NoError(a.t, err)
	return Do(a.t, req)
}

// Do sends req and returns the status, the whole body and the header;
// the test fails if there is no answer.
func Do(t *testing.T, req *http.Request) (int, string, http.Header) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b), resp.Header
}

// Command runs a command line on the command surface at endpoint, with
// the access key, and returns the status and the answer.
func Command(t *testing.T, endpoint, key, line string) (int, string) {
	t.Helper()
	req, err := http.NewRequest("POST", "http://"+endpoint+"/cli?cmd="+url.QueryEscape(line), nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+key)
	code, body, _ := Do(t, req)
	return code, strings.TrimSpace(body)
}

// Get makes one request on a fresh connection and returns the pid of the
// worker that answered; any status but 200 is an error.
func Get(url string) (pid int, err error) {
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

// Alive reports whether pid is a running (not zombie) process.
func Alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && len(s) > i+2 && s[i+2] != 'Z'
}

// ProcState is the one-letter state in /proc/pid/stat (R, S, T, Z…).
func ProcState(pid int) string {
	return statState(fmt.Sprintf("/proc/%d/stat", pid))
}

func statState(path string) string {
	b, _ := os.ReadFile(path)
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i > 0 && len(s) > i+2 {
		return s[i+2 : i+3]
	}
	return ""
}

// Stopped reports whether every thread of pid is stopped. kill(SIGSTOP)
// returns before the signal has taken effect, and each thread stops on its
// own way back to user space; until all have, a Go process can still run
// (accept a connection, answer a request).
func Stopped(pid int) bool {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil || len(tasks) == 0 {
		return false
	}
	for _, task := range tasks {
		if statState(fmt.Sprintf("/proc/%d/task/%s/stat", pid, task.Name())) != "T" {
			return false
		}
	}
	return true
}

// LoadRun is a load run in the background, started by StartLoad.
type LoadRun struct {
	t      *testing.T
	res    *LoadResult
	cancel context.CancelFunc
	done   <-chan struct{}
}

// StartLoad runs clients clients sending requests to url in the background
// (see Load) until Stop is called, the test ends, or a minute has passed.
func StartLoad(t *testing.T, url string, clients int, keepAlive bool) *LoadRun {
	return StartLoadWith(t, url, nil, clients, keepAlive)
}

// StartLoadWith is StartLoad with header added to every request.
func StartLoadWith(t *testing.T, url string, header http.Header, clients int, keepAlive bool) *LoadRun {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	res, done := loadgen.StartWith(ctx, url, header, clients, 1_000_000, keepAlive)
	l := &LoadRun{t: t, res: res, cancel: cancel, done: done}
	t.Cleanup(func() { l.Stop() })
	return l
}

// Stop ends the run, once the requests under way have completed, and
// returns what it counted. It may be called more than once.
func (l *LoadRun) Stop() *LoadResult {
	l.cancel()
	<-l.done
	return l.res
}

// WaitRequests waits until n more requests have completed (answered or
// failed) than when it was called: traffic, rather than time, before or
// after an operation under load. The test fails if that takes more than
// 20 s or the run ends first.
func (l *LoadRun) WaitRequests(n int64) {
	l.t.Helper()
	want := l.res.Completed() + n
	ended := false
	require.True(l.t, Poll(20*time.Second, func() bool {
		select {
		case <-l.done:
			ended = true
		default:
		}
		return ended || l.res.Completed() >= want
	}), "timed out waiting for %d more requests: %s", n, l.res)
	require.False(l.t, ended && l.res.Completed() < want, "the load ended before %d more requests: %s", n, l.res)
}

// CopyBinary copies the test binary into a fresh directory everyone may
// read, and returns its path: a test can then replace the file as a deploy
// would.
func CopyBinary(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "flock-bin-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	require.NoError(t, os.Chmod(dir, 0o755))
	bin := dir + "/app"
	InstallBinary(t, bin, "")
	return bin
}

// InstallBinary puts a new file at path, by rename as a deploy does: a
// fresh copy of the test binary, or, when script is set, that shell script.
func InstallBinary(t *testing.T, path, script string) {
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

// LoadResult counts what a load run saw.
type LoadResult = loadgen.Result

// Load runs clients goroutines sending GET requests to url until ctx ends
// or maxRequests have been sent (see loadgen.Run).
func Load(ctx context.Context, url string, clients, maxRequests int, keepAlive bool) *LoadResult {
	return loadgen.Run(ctx, url, clients, maxRequests, keepAlive)
}

// InNetns runs the calling test again inside a new network namespace (with
// lo up, then setup run as shell) and reports whether the caller is already
// there. Outside, it fails the test if the run inside failed, and skips when
// namespaces cannot be made here.
func InNetns(t *testing.T, setup string) bool {
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

// RefusingAddr returns a loopback address that refuses connections until
// the test ends. A socket is bound there and never listens: nothing else
// can bind the port meanwhile (the socket does not set SO_REUSEADDR or
// SO_REUSEPORT), and a connection gets a reset. Closing a listener and
// handing out its address instead would leave the port for anyone to take
// before the test uses it.
func RefusingAddr(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	t.Cleanup(func() { syscall.Close(fd) })
	require.NoError(t, syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}))
	sa, err := syscall.Getsockname(fd)
	require.NoError(t, err)
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(sa.(*syscall.SockaddrInet4).Port))
}
