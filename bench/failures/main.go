// Command failures reproduces the failure scenarios of issue #9 against an
// example binary and prints what each one does:
//
//  1. TTOU while a binary that cannot boot is on disk (after one HUP, so
//     new workers come from the file on disk): forks in the 2 s after TTOU,
//     log lines in 10 s, and 30 probe requests (new connection each, 2 s
//     timeout) sent after the TTOU.
//  2. Which binary a new worker runs: (a) a worker killed after a roll and a
//     later deploy without a roll is re-forked from which file; (b) HUP and,
//     at once, TTIN: how many workers run each binary after the roll.
//  3. The master at its file-descriptor limit (prlimit --nofile=64:64):
//     40 TTIN, whether the monitor's GET /ecv answers, "Accept error" log
//     lines, then TTOU back to 2 workers, 40 application requests, and the
//     log lines of the 10 s after the TTOUs.
//
// Run from the repository root:
//
//	go run ./bench/failures -bin PATH/TO/example [-only 1|2a|2b|3]
//
// Every example runs from a copy in a temporary directory (so that a deploy
// can replace it: write a new file, rename it over the path), in its own
// process group, killed with the group when its scenario ends, even on
// failure or Ctrl-C. Each scenario is bounded in time (< 60 s) and in
// requests; all traffic goes to 127.0.0.1. Log lines are counted as they
// are read from the master's stderr, which the workers share.
//
// One file of about 1,000 lines on purpose: it is read top to bottom, one
// scenario after another, like a lab notebook; nothing in it is imported.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

var (
	bin  = flag.String("bin", "", "example binary to test (required)")
	only = flag.String("only", "", "run one scenario: 1, 2a, 2b or 3")
)

// running holds the examples started and not yet killed, and tmpDirs the
// temporary directories, so that an interrupted run cleans up: each example
// runs in its own process group and would outlive this program.
var (
	running sync.Map // *app → struct{}
	tmpDirs sync.Map // string → struct{}
)

// scenarioLimit bounds one scenario: past it, its examples are killed and
// every wait in it fails.
const scenarioLimit = 58 * time.Second

func main() {
	flag.Parse()
	if *bin == "" {
		fmt.Fprintln(os.Stderr, "usage: go run ./bench/failures -bin PATH [-only 1|2a|2b|3]")
		os.Exit(2)
	}
	abs, err := filepath.Abs(*bin)
	check(err)
	*bin = abs
	if _, err := os.Stat(*bin); err != nil {
		check(err)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sigs
		cleanup()
		os.Exit(1)
	}()
	defer cleanup()

	fmt.Printf("binary: %s\nmachine: %d cores, %s, net.ipv4.tcp_migrate_req=%s\n\n", *bin, nproc(), kernel(), migrateReq())
	scenarios := []struct {
		id, title string
		run       func(*scenario)
	}{
		{"1", "TTOU while a broken binary is on disk (4 workers)", scenario1},
		{"2a", "which binary a re-forked worker runs (kill -9 after a roll and a later deploy; 2 workers)", scenario2a},
		{"2b", "HUP and at once TTIN (2 workers, no Init): binaries after the roll", scenario2b},
		{"3", "the master at its file-descriptor limit (prlimit --nofile=64:64, 2 workers)", scenario3},
	}
	for _, s := range scenarios {
		if *only != "" && *only != s.id {
			continue
		}
		fmt.Printf("scenario %s: %s\n", s.id, s.title)
		fmt.Printf("  load average at start: %s\n", loadavg())
		t0 := time.Now()
		sc := newScenario()
		func() {
			defer sc.end()
			defer func() {
				if r := recover(); r != nil {
					f, ok := r.(failure)
					if !ok {
						panic(r)
					}
					sc.printf("ABORTED: %s", string(f))
				}
			}()
			s.run(sc)
		}()
		sc.printf("scenario time: %v", time.Since(t0).Round(100*time.Millisecond))
		fmt.Println()
	}
}

// failure aborts a scenario (recovered in main).
type failure string

func fail(format string, args ...any) { panic(failure(fmt.Sprintf(format, args...))) }

// scenario holds what one scenario started, and its deadline.
type scenario struct {
	deadline time.Time
	apps     []*app
	dir      string
	watchdog *time.Timer
}

func newScenario() *scenario {
	dir, err := os.MkdirTemp("", "flock-failures-")
	check(err)
	tmpDirs.Store(dir, struct{}{})
	s := &scenario{deadline: time.Now().Add(scenarioLimit), dir: dir}
	s.watchdog = time.AfterFunc(scenarioLimit, func() {
		for _, a := range s.apps {
			a.kill()
		}
	})
	return s
}

func (s *scenario) end() {
	s.watchdog.Stop()
	for _, a := range s.apps {
		a.kill()
	}
	os.RemoveAll(s.dir)
	tmpDirs.Delete(s.dir)
}

func (s *scenario) printf(format string, args ...any) {
	fmt.Printf("  "+format+"\n", args...)
}

// path is where the scenario's example lives (and where deploys go).
func (s *scenario) path() string { return filepath.Join(s.dir, "example") }

// deploy puts a new file at the example's path as a deploy does: written
// beside it, then renamed over it. It returns the new file's inode.
func (s *scenario) deploy(content []byte) uint64 {
	tmp := filepath.Join(s.dir, ".example.new")
	check(os.WriteFile(tmp, content, 0o755))
	check(os.Rename(tmp, s.path()))
	return inode(s.path())
}

// start runs the scenario's example (prefix: a command that execs it, such
// as prlimit) and waits until n workers are ready.
func (s *scenario) start(prefix []string, n int, args ...string) *app {
	args = append([]string{"-addr", "127.0.0.1:0", "-monitor", "127.0.0.1:0", "-log-json", "-workers", strconv.Itoa(n)}, args...)
	argv := append(slices.Clone(prefix), s.path())
	argv = append(argv, args...)
	a := startApp(argv)
	s.apps = append(s.apps, a)
	e, ok := a.waitEvent(0, 10*time.Second, func(e event) bool { return e.Event == "listening" })
	if !ok {
		fail("no listening event within 10s (%s)", a.topMessages(3))
	}
	a.addr, a.monitor = e.Addr, e.Monitor
	if !a.waitCond(15*time.Second, func() bool { _, ready := a.live(); return ready >= n }) {
		fail("%d workers not ready within 15s", n)
	}
	return a
}

// ---------------------------------------------------------------------
// Scenario 1: TTOU while a binary that cannot boot is on disk.

func scenario1(s *scenario) {
	good, err := os.ReadFile(*bin)
	check(err)
	s.deploy(good)
	a := s.start(nil, 4)
	m := a.mark()
	a.signal(syscall.SIGHUP)
	roll, ok := a.waitEvent(m, 15*time.Second, isRollEnd)
	if !ok {
		fail("the HUP roll did not end within 15s")
	}
	s.printf("HUP before the deploy: roll %s", roll.Reason)
	s.deploy([]byte("#!/bin/sh\nexit 1\n"))
	s.printf("deployed a binary that cannot boot (#!/bin/sh exit 1); net.ipv4.tcp_migrate_req=%s", migrateReq())

	lines0 := a.lines.Load()
	t0 := time.Now()
	a.signal(syscall.SIGTTOU)
	probes := probeSpaced("http://"+a.addr+"/", 30, 100*time.Millisecond, 2*time.Second)
	sleepUntil(t0.Add(2 * time.Second))
	forks2s := a.countEvents(func(e event) bool { return e.Event == "forked" && inWindow(e.Time, t0, 2*time.Second) })
	sleepUntil(t0.Add(10 * time.Second))
	lines10s := a.lines.Load() - lines0
	pr := <-probes

	s.printf("forked events in the 2 s after TTOU: %d", forks2s)
	s.printf("log lines in the 10 s after TTOU: %d", lines10s)
	s.printf("forked events per second after TTOU: %v", a.perSecond("forked", t0, 10))
	s.printf("probes after TTOU (new connection each, 2 s timeout, 100 ms apart): %d of %d failed%s", pr.failed, pr.n, pr.kinds())
	s.printf("exited events in the 10 s after TTOU, by reason: %s", a.reasons("exited", t0, 10*time.Second))
	total, ready := a.live()
	s.printf("workers at the end: %d running, %d ready", total, ready)
	s.printf("total forks: %d", a.count("forked"))
	s.printf("most frequent log lines: %s", a.topMessages(3))
}

// ---------------------------------------------------------------------
// Scenario 2a: which binary a worker re-forked after a crash runs.

func scenario2a(s *scenario) {
	good, err := os.ReadFile(*bin)
	check(err)
	b0 := s.deploy(good)
	a := s.start(nil, 2)
	// B1, byte-different from the master's own binary B0, is what the HUP
	// rolls onto; B2 is deployed afterwards without a roll.
	b1 := s.deploy(withTrailer(good, "B1"))
	m := a.mark()
	a.signal(syscall.SIGHUP)
	roll, ok := a.waitEvent(m, 15*time.Second, isRollEnd)
	if !ok {
		fail("the HUP roll did not end within 15s")
	}
	s.printf("HUP onto the file on disk (B1): roll %s", roll.Reason)
	b2 := s.deploy(withTrailer(good, "B2"))
	names := map[uint64]string{b0: "B0 (the master's own binary)", b1: "B1 (rolled onto by the HUP)", b2: "B2 (deployed after the roll, now at the path)"}
	s.printf("inodes: B0 %d, B1 %d, B2 %d (now at %s)", b0, b1, b2, s.path())

	var victim int
	a.waitCond(5*time.Second, func() bool {
		for _, pid := range a.readySince(m) {
			victim = pid
			return true
		}
		return false
	})
	if victim == 0 {
		fail("no worker from the roll is running")
	}
	s.printf("killing worker %d (runs %s) with SIGKILL", victim, label(names, exeInode(victim)))
	m = a.mark()
	check(syscall.Kill(victim, syscall.SIGKILL))
	e, ok := a.waitEvent(m, 10*time.Second, func(e event) bool { return e.Event == "forked" })
	if !ok {
		fail("no worker forked within 10s of the kill")
	}
	pid := e.PID
	if !a.waitCond(10*time.Second, func() bool { return a.isReady(pid) }) {
		s.printf("(re-forked worker %d not ready within 10s)", pid)
	}
	ino := exeInode(pid)
	link, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	s.printf("re-forked worker %d (reason %s): exe inode %d = %s; /proc/%d/exe -> %s", pid, e.Reason, ino, label(names, ino), pid, link)
	switch ino {
	case b1:
		s.printf("result: the re-forked worker runs the ROLLED binary")
	case b2:
		s.printf("result: the re-forked worker runs the NEW FILE deployed without a roll")
	case b0:
		s.printf("result: the re-forked worker runs the MASTER'S binary (neither the rolled one nor the new file)")
	default:
		s.printf("result: the re-forked worker runs an unknown binary")
	}
	s.printf("total forks: %d", a.count("forked"))
}

// ---------------------------------------------------------------------
// Scenario 2b: HUP and, at once, TTIN.

func scenario2b(s *scenario) {
	good, err := os.ReadFile(*bin)
	check(err)
	b0 := s.deploy(good)
	a := s.start(nil, 2)
	b1 := s.deploy(withTrailer(good, "B1"))
	names := map[uint64]string{b0: "B0 (the master's own binary)", b1: "B1 (on disk at HUP)"}
	s.printf("inodes: B0 %d (master), B1 %d (deployed before the HUP)", b0, b1)
	m := a.mark()
	a.signal(syscall.SIGHUP)
	a.signal(syscall.SIGTTIN)
	roll, ok := a.waitEvent(m, 20*time.Second, isRollEnd)
	if !ok {
		fail("the roll did not end within 20s")
	}
	s.printf("HUP then TTIN at once: roll %s", roll.Reason)
	// Settle: every running worker ready, as many as the slots, for 500 ms
	// (a queued roll or a late fork may follow the first roll's end).
	var stableSince time.Time
	settled := a.waitCond(15*time.Second, func() bool {
		total, ready := a.live()
		if total == ready && total == a.slots(2) && a.rollsEnded() >= a.rollsBegun() {
			if stableSince.IsZero() {
				stableSince = time.Now()
			}
			return time.Since(stableSince) >= 500*time.Millisecond
		}
		stableSince = time.Time{}
		return false
	})
	if !settled {
		s.printf("(not settled within 15s: workers %v, slots %d)", a.livePIDs(), a.slots(2))
	}
	per := map[string][]int{}
	for _, pid := range a.livePIDs() {
		l := label(names, exeInode(pid))
		per[l] = append(per[l], pid)
	}
	keys := slices.Sorted(maps.Keys(per))
	for _, k := range keys {
		s.printf("%d worker(s) run %s: %v", len(per[k]), k, per[k])
	}
	if len(per) > 1 {
		s.printf("result: MIXED (%d binaries among %d workers)", len(per), len(a.livePIDs()))
	} else {
		s.printf("result: every worker runs the same binary")
	}
	s.printf("rolls: %s", strings.Join(a.rollReasons(), "; "))
	s.printf("total forks: %d", a.count("forked"))
}

// ---------------------------------------------------------------------
// Scenario 3: the master at its file-descriptor limit.

func scenario3(s *scenario) {
	good, err := os.ReadFile(*bin)
	check(err)
	s.deploy(good)
	if _, err := exec.LookPath("prlimit"); err != nil {
		fail("prlimit not found")
	}
	a := s.start([]string{"prlimit", "--nofile=64:64", "--"}, 2)
	s.printf("master %d: %s", a.pid(), openFilesLimit(a.pid()))

	// 40 × TTIN, each followed by a wait for its scaled event or for the
	// master to log a refusal (bounded: a signal sent while the master is
	// still handling the previous one could coalesce with the next).
	outcome := map[string]int{}
	phase := time.Now().Add(20 * time.Second)
	sent := 0
	for range 40 {
		if time.Now().After(phase) {
			break
		}
		outcome[a.scaleStep(syscall.SIGTTIN)]++
		sent++
	}
	total, ready := a.live()
	s.printf("TTIN sent: %d; outcomes: %s; slots now %d, workers %d running, %d ready", sent, fmtCounts(outcome), a.slots(2), total, ready)

	ecv := probeSpaced("http://"+a.monitor+"/ecv", 10, 100*time.Millisecond, time.Second)
	er := <-ecv
	s.printf("GET /ecv on the monitor answered within 1 s: %d of %d%s", er.n-er.failed, er.n, er.kinds())
	s.printf("log lines mentioning \"Accept error\" so far: %d", a.acceptErrs.Load())

	// TTOU back to 2 workers (or 40 TTOU).
	outcome = map[string]int{}
	phase = time.Now().Add(12 * time.Second)
	sent = 0
	for range 40 {
		if a.slots(2) <= 2 || time.Now().After(phase) {
			break
		}
		outcome[a.scaleStep(syscall.SIGTTOU)]++
		sent++
	}
	s.printf("TTOU sent: %d; outcomes: %s; slots now %d", sent, fmtCounts(outcome), a.slots(2))
	lines0 := a.lines.Load()
	t0 := time.Now()
	// A bounded wait for the workers to settle (all ready, as many as the
	// slots), at least 1 s.
	a.waitCond(3*time.Second, func() bool {
		total, ready := a.live()
		return time.Since(t0) >= time.Second && total == ready && total == a.slots(2)
	})
	total, ready = a.live()
	s.printf("workers after the TTOUs (waited %v): %d running, %d ready", time.Since(t0).Round(100*time.Millisecond), total, ready)
	app := <-probeSpaced("http://"+a.addr+"/", 40, 50*time.Millisecond, 2*time.Second)
	s.printf("application requests (new connection each, 2 s timeout, 50 ms apart): %d of %d succeeded%s", app.n-app.failed, app.n, app.kinds())
	sleepUntil(t0.Add(10 * time.Second))
	s.printf("log lines in the 10 s after the TTOUs: %d", a.lines.Load()-lines0)
	s.printf("log lines mentioning \"Accept error\" in all: %d", a.acceptErrs.Load())
	s.printf("total forks: %d", a.count("forked"))
	s.printf("most frequent log lines: %s", a.topMessages(3))
}

// scaleStep sends TTIN or TTOU and waits (at most 1 s) for what the master
// did with it: "scaled" (a scaled event); "refused, logged" (a log line
// naming the signal, or a warning or error other than an accept error);
// "handled, not scaled, no log line" (its signal event, then nothing within
// 200 ms: a refusal whose log line is rate-limited, say); or "no reaction
// within 1s".
func (a *app) scaleStep(sig syscall.Signal) string {
	name := strings.TrimPrefix(unixName(sig), "SIG")
	m := a.mark()
	p0, n0 := a.problems.Load(), a.sigMsgs[name].Load()
	a.signal(sig)
	var seen time.Time
	result := "no reaction within 1s"
	a.waitCond(time.Second, func() bool {
		if _, ok := a.find(m, func(e event) bool { return e.Event == "scaled" }); ok {
			result = "scaled"
			return true
		}
		if a.sigMsgs[name].Load() > n0 || a.problems.Load() > p0 {
			result = "refused, logged"
			return true
		}
		if seen.IsZero() {
			if _, ok := a.find(m, func(e event) bool { return e.Event == "signal" && strings.HasSuffix(e.Signal, name) }); ok {
				seen = time.Now()
			}
		} else if time.Since(seen) > 200*time.Millisecond {
			result = "handled, not scaled, no log line"
			return true
		}
		return false
	})
	return result
}

// ---------------------------------------------------------------------
// Probes.

type probeResult struct {
	n, failed int
	errs      map[string]int
}

func (p probeResult) kinds() string {
	if len(p.errs) == 0 {
		return ""
	}
	return " (" + fmtCounts(p.errs) + ")"
}

// probeSpaced sends n GET requests to url, one every gap, each on a new
// connection and bounded by timeout, and delivers the tally when all are
// done (within n × gap + timeout).
func probeSpaced(url string, n int, gap, timeout time.Duration) <-chan probeResult {
	out := make(chan probeResult, 1)
	go func() {
		c := &http.Client{Timeout: timeout, Transport: &http.Transport{DisableKeepAlives: true}}
		var mu sync.Mutex
		res := probeResult{n: n, errs: map[string]int{}}
		var wg sync.WaitGroup
		for i := range n {
			if i > 0 {
				time.Sleep(gap)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := get(c, url)
				if err != nil {
					mu.Lock()
					res.failed++
					res.errs[errKind(err)]++
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		out <- res
	}()
	return out
}

func get(c *http.Client, url string) error {
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

func errKind(err error) string {
	var ne net.Error
	switch s := err.Error(); {
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case strings.Contains(s, "connection refused"):
		return "refused"
	case strings.Contains(s, "connection reset"):
		return "reset"
	case strings.Contains(s, "EOF"):
		return "EOF"
	case strings.HasPrefix(s, "status "):
		return s
	default:
		return s
	}
}

// ---------------------------------------------------------------------
// A running example.

type app struct {
	cmd           *exec.Cmd
	addr, monitor string
	eof           chan struct{}
	killOnce      sync.Once

	lines, acceptErrs, problems atomic.Int64
	sigMsgs                     map[string]*atomic.Int64 // log lines (not events) naming TTIN, TTOU

	mu      sync.Mutex
	evs     []event
	counts  map[string]int
	workers map[int]bool // running worker pid → ready
	msgs    map[string]int
}

type event struct {
	Event   string    `json:"event"`
	Reason  string    `json:"reason"`
	PID     int       `json:"pid"`
	Slot    int       `json:"slot"`
	Workers int       `json:"workers"`
	Addr    string    `json:"addr"`
	Monitor string    `json:"monitor"`
	Signal  string    `json:"signal"`
	Level   string    `json:"level"`
	Msg     string    `json:"msg"`
	Time    time.Time `json:"time"`
}

func startApp(argv []string) *app {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stderr, err := cmd.StderrPipe()
	check(err)
	check(cmd.Start())
	a := &app{cmd: cmd, eof: make(chan struct{}), counts: map[string]int{}, workers: map[int]bool{}, msgs: map[string]int{},
		sigMsgs: map[string]*atomic.Int64{"TTIN": {}, "TTOU": {}}}
	running.Store(a, struct{}{})
	go a.read(stderr)
	return a
}

// read consumes the master's stderr (its workers write there too): every
// line is counted; JSON events are kept.
func (a *app) read(r io.Reader) {
	defer close(a.eof)
	br := bufio.NewReaderSize(r, 1<<20)
	var long []byte
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			long = append(long, line...)
			continue
		}
		if len(long) > 0 {
			line = append(long, line...)
			long = nil
		}
		if len(line) > 0 {
			a.line(bytes.TrimRight(line, "\n"))
		}
		if err != nil {
			return
		}
	}
}

var digits = regexp.MustCompile(`[0-9]+`)

func (a *app) line(b []byte) {
	a.lines.Add(1)
	if bytes.Contains(b, []byte("Accept error")) {
		a.acceptErrs.Add(1)
	}
	var e event
	key := ""
	if len(b) > 0 && b[0] == '{' && json.Unmarshal(b, &e) == nil {
		key = e.Msg
		if e.Event == "" {
			if (e.Level == "WARN" || e.Level == "ERROR") && !strings.Contains(e.Msg, "Accept error") {
				a.problems.Add(1)
			}
			for name, n := range a.sigMsgs {
				if strings.Contains(e.Msg, name) {
					n.Add(1)
				}
			}
		} else if e.Reason != "" {
			key += " (" + e.Reason + ")"
		}
	} else {
		// A plain line, such as net/http's log: drop the date.
		s := string(b)
		if len(s) > 20 && s[4] == '/' && s[7] == '/' {
			s = s[20:]
		}
		key = s
	}
	key = digits.ReplaceAllString(key, "N")
	if len(key) > 100 {
		key = key[:100] + "…"
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.msgs[key]; ok || len(a.msgs) < 200 {
		a.msgs[key]++
	} else {
		a.msgs["(other)"]++
	}
	if e.Event == "" {
		return
	}
	a.evs = append(a.evs, e)
	a.counts[e.Event]++
	switch e.Event {
	case "forked":
		a.workers[e.PID] = false
	case "ready":
		a.workers[e.PID] = true
	case "exited":
		delete(a.workers, e.PID)
	}
}

func (a *app) pid() int                { return a.cmd.Process.Pid }
func (a *app) signal(s syscall.Signal) { syscall.Kill(a.pid(), s) }

// kill ends the whole process group (master and workers).
func (a *app) kill() {
	a.killOnce.Do(func() {
		syscall.Kill(-a.pid(), syscall.SIGKILL)
		select {
		case <-a.eof:
		case <-time.After(3 * time.Second):
		}
		a.cmd.Wait()
		running.Delete(a)
	})
}

func (a *app) exited() bool {
	select {
	case <-a.eof:
		return true
	default:
		return false
	}
}

// mark is the position of the next event, for waits on what follows.
func (a *app) mark() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.evs)
}

// find looks for an event at or after position from.
func (a *app) find(from int, match func(event) bool) (event, bool) {
	a.mu.Lock()
	evs := a.evs[from:len(a.evs):len(a.evs)]
	a.mu.Unlock()
	for _, e := range evs {
		if match(e) {
			return e, true
		}
	}
	return event{}, false
}

// waitEvent waits at most d for an event at or after position from.
func (a *app) waitEvent(from int, d time.Duration, match func(event) bool) (event, bool) {
	var found event
	ok := a.waitCond(d, func() bool {
		a.mu.Lock()
		evs := a.evs[from:len(a.evs):len(a.evs)]
		a.mu.Unlock()
		for _, e := range evs {
			if match(e) {
				found = e
				return true
			}
		}
		from += len(evs)
		return false
	})
	return found, ok
}

// waitCond polls cond every 5 ms for at most d (and not past the process's
// end).
func (a *app) waitCond(d time.Duration, cond func() bool) bool {
	for deadline := time.Now().Add(d); ; time.Sleep(5 * time.Millisecond) {
		if cond() {
			return true
		}
		if time.Now().After(deadline) || a.exited() {
			return false
		}
	}
}

func (a *app) count(kind string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.counts[kind]
}

func (a *app) countEvents(match func(event) bool) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, e := range a.evs {
		if match(e) {
			n++
		}
	}
	return n
}

// live counts the running workers, and those of them that are ready.
func (a *app) live() (total, ready int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, r := range a.workers {
		total++
		if r {
			ready++
		}
	}
	return
}

func (a *app) livePIDs() []int {
	a.mu.Lock()
	defer a.mu.Unlock()
	pids := slices.Collect(maps.Keys(a.workers))
	slices.Sort(pids)
	return pids
}

func (a *app) isReady(pid int) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.workers[pid]
}

// readySince: running workers that became ready at or after position from.
func (a *app) readySince(from int) []int {
	a.mu.Lock()
	defer a.mu.Unlock()
	var pids []int
	for _, e := range a.evs[from:] {
		if e.Event == "ready" && a.workers[e.PID] {
			pids = append(pids, e.PID)
		}
	}
	return pids
}

// slots is the number of worker slots the last scaled event reported
// (initial before any).
func (a *app) slots(initial int) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	for i := len(a.evs) - 1; i >= 0; i-- {
		if a.evs[i].Event == "scaled" {
			return a.evs[i].Workers
		}
	}
	return initial
}

func isRollEnd(e event) bool { return e.Event == "roll" && e.Reason != "began" }

func (a *app) rollsBegun() int {
	return a.countEvents(func(e event) bool { return e.Event == "roll" && e.Reason == "began" })
}

func (a *app) rollsEnded() int { return a.countEvents(isRollEnd) }

func (a *app) rollReasons() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var r []string
	for _, e := range a.evs {
		if e.Event == "roll" {
			r = append(r, e.Reason)
		}
	}
	return r
}

// reasons tallies the events of a kind within d of t0 by reason.
func (a *app) reasons(kind string, t0 time.Time, d time.Duration) string {
	m := map[string]int{}
	a.mu.Lock()
	for _, e := range a.evs {
		if e.Event == kind && inWindow(e.Time, t0, d) {
			m[e.Reason]++
		}
	}
	a.mu.Unlock()
	if len(m) == 0 {
		return "none"
	}
	return fmtCounts(m)
}

// perSecond counts the events of a kind in each of the n seconds from t0.
func (a *app) perSecond(kind string, t0 time.Time, n int) []int {
	c := make([]int, n)
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, e := range a.evs {
		if i := int(e.Time.Sub(t0) / time.Second); e.Event == kind && !e.Time.Before(t0) && i < n {
			c[i]++
		}
	}
	return c
}

// topMessages: the n most frequent log lines (digits as N), with counts.
func (a *app) topMessages(n int) string {
	a.mu.Lock()
	type kv struct {
		k string
		v int
	}
	var all []kv
	for k, v := range a.msgs {
		all = append(all, kv{k, v})
	}
	a.mu.Unlock()
	sort.Slice(all, func(i, j int) bool { return all[i].v > all[j].v || all[i].v == all[j].v && all[i].k < all[j].k })
	var out []string
	for i := 0; i < n && i < len(all); i++ {
		out = append(out, fmt.Sprintf("%d× %q", all[i].v, all[i].k))
	}
	return strings.Join(out, ", ")
}

// ---------------------------------------------------------------------
// Helpers.

func inWindow(t, t0 time.Time, d time.Duration) bool { return !t.Before(t0) && t.Before(t0.Add(d)) }

func sleepUntil(t time.Time) { time.Sleep(time.Until(t)) }

// withTrailer is the binary with bytes appended: it runs the same, but is a
// different file.
func withTrailer(b []byte, tag string) []byte {
	return append(slices.Clone(b), []byte("\nflock-bench-failures "+tag+"\n")...)
}

func inode(path string) uint64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

// exeInode is the inode of the file process pid runs (stat follows the
// /proc link even when the file has been replaced).
func exeInode(pid int) uint64 { return inode(fmt.Sprintf("/proc/%d/exe", pid)) }

func label(names map[uint64]string, ino uint64) string {
	if ino == 0 {
		return "unknown (process gone)"
	}
	if n, ok := names[ino]; ok {
		return n
	}
	return fmt.Sprintf("unknown inode %d", ino)
}

func fmtCounts(m map[string]int) string {
	keys := slices.Sorted(maps.Keys(m))
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

func unixName(s syscall.Signal) string {
	switch s {
	case syscall.SIGTTIN:
		return "SIGTTIN"
	case syscall.SIGTTOU:
		return "SIGTTOU"
	}
	return s.String()
}

func openFilesLimit(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "Max open files") {
			return strings.Join(strings.Fields(l), " ")
		}
	}
	return "open-files limit unknown"
}

func migrateReq() string {
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_migrate_req")
	if err != nil {
		return "unavailable"
	}
	return strings.TrimSpace(string(b))
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

func nproc() int {
	b, _ := os.ReadFile("/proc/cpuinfo")
	return strings.Count(string(b), "processor\t:")
}

func kernel() string {
	b, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return "Linux " + strings.TrimSpace(string(b))
}

func cleanup() {
	running.Range(func(a, _ any) bool { a.(*app).kill(); return true })
	tmpDirs.Range(func(d, _ any) bool { os.RemoveAll(d.(string)); return true })
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		cleanup()
		os.Exit(1)
	}
}
