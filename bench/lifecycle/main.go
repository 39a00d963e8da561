// Command lifecycle measures what the example does under load while workers
// are added, removed, replaced, recycled and upgraded: failed requests per
// operation, TTIN-to-serving latency, the duration of rolling restarts, and
// the master's idle cost. Run from the repository root, as root for the
// TTOU-with-migration row (it needs a network namespace of its own):
//
//	go run ./bench/lifecycle
//
// All traffic goes to 127.0.0.1; every run is bounded in time.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/flockhq/flock/internal/loadgen"
)

var (
	clients = flag.Int("clients", 8, "concurrent clients of the load")
	only    = flag.String("only", "", "run one operation (used inside the network namespace)")
	exe     = flag.String("example", "", "example binary (default: built into a temporary directory)")
)

// running holds the examples started and not yet killed, so that an
// interrupted run (Ctrl-C, timeout) does not leave them behind: each runs
// in its own process group and would outlive this program.
var running sync.Map // *app → struct{}

func main() {
	flag.Parse()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sigs
		running.Range(func(a, _ any) bool { a.(*app).kill(); return true })
		os.Exit(1)
	}()
	if *exe == "" {
		dir, err := os.MkdirTemp("", "flock-bench-")
		check(err)
		defer os.RemoveAll(dir)
		*exe = filepath.Join(dir, "example")
		cmd := exec.Command("go", "build", "-o", *exe, "./example")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		check(cmd.Run())
	}
	if *only != "" {
		for _, op := range ops {
			if op.name == *only {
				for _, keepAlive := range []bool{true, false} {
					r := measure(op, keepAlive)
					fmt.Printf("%d %d\n", r.ok, r.failed)
				}
			}
		}
		return
	}
	fmt.Printf("machine: %d cores, %s; %d clients on 127.0.0.1\n\n", nproc(), goVersion(), *clients)
	fmt.Println("| operation under load | keep-alive: failed / requests | new connection each: failed / requests |")
	fmt.Println("|---|---|---|")
	for _, op := range ops {
		var cells []string
		if op.netns {
			cells = inNetns(op)
		} else {
			for _, keepAlive := range []bool{true, false} {
				r := measure(op, keepAlive)
				cells = append(cells, fmt.Sprintf("%d / %d", r.failed, r.ok+r.failed))
			}
		}
		fmt.Printf("| %s | %s | %s |\n", op.name, cells[0], cells[1])
	}
	fmt.Println()
	ttinLatency()
	for _, n := range []int{4, 16} {
		rollDuration(n)
	}
	idleCost()
}

// op is one operation applied to a running example under load.
type op struct {
	name  string
	args  []string
	netns bool // run in a network namespace with net.ipv4.tcp_migrate_req=1
	do    func(a *app)
}

var ops = []op{
	{name: "HUP (rolling restart, 4 workers)", args: []string{"-workers", "4"}, do: func(a *app) {
		a.signal(syscall.SIGHUP)
		a.wait(func(e event) bool { return e.Event == "roll" && e.Reason != "began" })
	}},
	{name: "TTIN ×3 (1 → 4 workers)", args: []string{"-workers", "1"}, do: func(a *app) {
		for range 3 {
			a.signal(syscall.SIGTTIN)
			time.Sleep(100 * time.Millisecond)
		}
		a.wait(func(e event) bool { return a.count("ready", "") == 4 })
	}},
	{name: "TTOU ×3 (4 → 1), tcp_migrate_req=0", args: []string{"-workers", "4"}, do: ttou},
	{name: "TTOU ×3 (4 → 1), tcp_migrate_req=1", args: []string{"-workers", "4"}, do: ttou, netns: true},
	{name: "recycling (-max-requests 3000, 2 workers)", args: []string{"-workers", "2", "-max-requests", "3000"}, do: func(a *app) {
		a.wait(func(e event) bool { return e.Event == "exited" && e.Reason == "recycle" })
	}},
	{name: "USR2 (binary upgrade, 2 workers)", args: []string{"-workers", "2"}, do: func(a *app) {
		a.signal(syscall.SIGUSR2)
		a.wait(func(e event) bool { return e.Event == "upgrade" && e.Reason == "handed over" })
		a.wait(func(e event) bool { return a.count("exited", "") == 2 })
	}},
	{name: "kill -9 of a worker (2 workers)", args: []string{"-workers", "2"}, do: func(a *app) {
		syscall.Kill(a.workers()[0], syscall.SIGKILL)
		a.wait(func(e event) bool { return a.count("ready", "") == 3 })
	}},
}

func ttou(a *app) {
	for range 3 {
		a.signal(syscall.SIGTTOU)
		time.Sleep(100 * time.Millisecond)
	}
	a.wait(func(e event) bool { return a.count("exited", "scale-down") == 3 })
}

type result struct{ ok, failed int64 }

func measure(o op, keepAlive bool) result {
	a := start(o.args...)
	defer a.kill()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res := make(chan result)
	go func() {
		r := loadgen.Run(ctx, "http://"+a.addr+"/", *clients, math.MaxInt, keepAlive)
		res <- result{r.OK.Load(), r.Failed.Load()}
	}()
	time.Sleep(300 * time.Millisecond)
	o.do(a)
	time.Sleep(500 * time.Millisecond)
	cancel()
	return <-res
}

// inNetns runs one operation in a new network namespace where
// net.ipv4.tcp_migrate_req is 1.
func inNetns(o op) []string {
	self, err := os.Executable()
	check(err)
	out, err := exec.Command("unshare", "-n", "--", "sh", "-c",
		`ip link set lo up && sysctl -qw net.ipv4.tcp_migrate_req=1 && exec "$0" -only "$1" -example "$2" -clients "$3"`,
		self, o.name, *exe, strconv.Itoa(*clients)).Output()
	if err != nil {
		return []string{"n/a (needs root for a network namespace)", "n/a"}
	}
	var cells []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var ok, failed int
		fmt.Sscan(line, &ok, &failed)
		cells = append(cells, fmt.Sprintf("%d / %d", failed, ok+failed))
	}
	return cells
}

// ttinLatency: from TTIN to the first answer from the new worker.
func ttinLatency() {
	a := start("-workers", "1")
	defer a.kill()
	var lat []time.Duration
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	for i := range 5 {
		known := a.workers()
		t0 := time.Now()
		a.signal(syscall.SIGTTIN)
		for time.Since(t0) < 10*time.Second {
			resp, err := c.Get("http://" + a.addr + "/")
			if err != nil {
				continue
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			pid, _ := strconv.Atoi(resp.Header.Get("X-Worker-Pid"))
			if !slices.Contains(known, pid) {
				lat = append(lat, time.Since(t0))
				break
			}
		}
		a.wait(func(e event) bool { return a.count("ready", "") == i+2 })
	}
	slices.Sort(lat)
	fmt.Printf("TTIN to first request served by the new worker: median %v (of %d; min %v, max %v)\n",
		lat[len(lat)/2].Round(100*time.Microsecond), len(lat), lat[0].Round(100*time.Microsecond), lat[len(lat)-1].Round(100*time.Microsecond))
}

// rollDuration: HUP to the end of the rolling restart of n workers.
func rollDuration(n int) {
	a := start("-workers", strconv.Itoa(n))
	defer a.kill()
	t0 := time.Now()
	a.signal(syscall.SIGHUP)
	e := a.wait(func(e event) bool { return e.Event == "roll" && e.Reason != "began" })
	fmt.Printf("rolling restart of %d workers (%s at once): %v (%s)\n", n, strconv.Itoa(1+int(float64(n)*0.33)), time.Since(t0).Round(time.Millisecond), e.Reason)
}

// idleCost: the master's memory and CPU while nothing happens.
func idleCost() {
	a := start("-workers", "2")
	defer a.kill()
	time.Sleep(time.Second)
	t0, c0 := time.Now(), cpuTicks(a.cmd.Process.Pid)
	time.Sleep(10 * time.Second)
	ticks := cpuTicks(a.cmd.Process.Pid) - c0
	statm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/statm", a.cmd.Process.Pid))
	f := strings.Fields(string(statm))
	pages, _ := strconv.Atoi(f[1])
	fmt.Printf("idle master (2 workers): RSS %.1f MiB, CPU %d ticks (1/100 s) in %v\n",
		float64(pages*os.Getpagesize())/(1<<20), ticks, time.Since(t0).Round(time.Second))
}

func cpuTicks(pid int) int {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	u, _ := strconv.Atoi(f[11])
	k, _ := strconv.Atoi(f[12])
	return u + k
}

// app is a running example in its own process group.
type app struct {
	cmd  *exec.Cmd
	addr string
	mu   sync.Mutex
	evs  []event
}

type event struct {
	Event  string `json:"event"`
	Reason string `json:"reason"`
	PID    int    `json:"pid"`
	Addr   string `json:"addr"`
}

func start(args ...string) *app {
	cmd := exec.Command(*exe, append([]string{"-addr", "127.0.0.1:0", "-log-json"}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stderr, err := cmd.StderrPipe()
	check(err)
	check(cmd.Start())
	a := &app{cmd: cmd}
	running.Store(a, struct{}{})
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var e event
			if json.Unmarshal(sc.Bytes(), &e) == nil {
				a.mu.Lock()
				a.evs = append(a.evs, e)
				a.mu.Unlock()
			}
		}
	}()
	a.addr = a.wait(func(e event) bool { return e.Event == "listening" }).Addr
	n := 1
	for i, s := range args {
		if s == "-workers" {
			n, _ = strconv.Atoi(args[i+1])
		}
	}
	a.wait(func(e event) bool { return a.count("ready", "") >= n })
	return a
}

func (a *app) wait(match func(event) bool) event {
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		a.mu.Lock()
		evs := slices.Clone(a.evs)
		a.mu.Unlock()
		for _, e := range evs {
			if match(e) {
				return e
			}
		}
	}
	a.kill()
	panic("timed out waiting for an event")
}

// count counts the events of a kind, with that reason unless reason is "".
func (a *app) count(kind, reason string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, e := range a.evs {
		if e.Event == kind && (reason == "" || e.Reason == reason) {
			n++
		}
	}
	return n
}

// workers are the pids of the workers that became ready, oldest first.
func (a *app) workers() []int {
	a.mu.Lock()
	defer a.mu.Unlock()
	var pids []int
	for _, e := range a.evs {
		if e.Event == "ready" {
			pids = append(pids, e.PID)
		}
	}
	return pids
}

func (a *app) signal(s syscall.Signal) { syscall.Kill(a.cmd.Process.Pid, s) }

// kill ends the whole process group (master, workers, a new master).
func (a *app) kill() {
	syscall.Kill(-a.cmd.Process.Pid, syscall.SIGKILL)
	a.cmd.Wait()
	running.Delete(a)
}

func nproc() int {
	b, _ := os.ReadFile("/proc/cpuinfo")
	return strings.Count(string(b), "processor\t:")
}

func goVersion() string {
	out, _ := exec.Command("go", "env", "GOVERSION").Output()
	return strings.TrimSpace(string(out))
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
