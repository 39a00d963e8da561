package flock

import (
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The seam between the master and a worker process. The master decides
// when a worker starts, is replaced, stops or dies (supervise.go); a
// launcher knows how to start one kind of process and how to talk to it.
// Today there is one kind: this program re-executed, speaking flock's
// control protocol (flockLauncher). A foreign program speaking systemd's
// socket activation and sd_notify is a second launcher, not a second master.

// proc is one running worker process.
type proc interface {
	Pid() int
	Stop() // ask it to drain and exit
	Ping() // ask for a sign of life; it answers procAlive
	Kill()
	watched() bool // whether it gives signs of life: silence for Timeout kills it
}

// launcher starts worker processes of one kind.
type launcher interface {
	launch(spec launchSpec) (proc, error)
}

// launchSpec is what a launcher needs to start one worker.
type launchSpec struct {
	bin        *binary
	slot       int
	env        []string   // the environment, without the launcher's own variables
	socks      []*os.File // the slot's sockets, one per listener of its group
	names      []string   // their listeners'
	spares     []spare    // those of its group's listeners
	spareNames []string
	cred       *syscall.Credential
	program    string           // Supervise's program, as found now
	out        chan<- procEvent // what the process says, then its exit, in that order
	done       <-chan struct{}  // closed when the master stops: senders give up
}

// procEvent is something a worker process said or did.
type procEvent struct {
	p      proc
	kind   procEventKind
	counts counts           // procCounts: the totals so far
	text   string           // procSaid, procReport
	data   []byte           // procReport
	state  *os.ProcessState // procExited
}

type procEventKind int

const (
	procReady    procEventKind = iota // it accepts connections
	procAlive                         // it answered a ping
	procCounts                        // it reported what it served
	procSaid                          // it described its state (sd_notify STATUS=)
	procStopping                      // it said it is stopping (sd_notify STOPPING=1)
	procHung                          // it said it is stuck (sd_notify WATCHDOG=trigger)
	procReport                        // it sent a report (Report): text is the topic, data the report
	procExited                        // it is gone; nothing follows
)

// counts is what a worker last reported: what it served since it
// started, and its heap (the Go runtime's, as node-cluster-service shows
// V8's).
type counts struct {
	Requests    int64
	Connections int64 // accepted
	Open        int64 // connections open now
	HeapTotal   int64 // heap memory the runtime holds, in bytes
	HeapUsed    int64 // of which live objects
}

// set reads one report line ("requests N", "connections N", "open N",
// "heap TOTAL USED") into c, and reports whether it was one.
func (c *counts) set(verb, arg string) bool {
	var v [2]int64
	f := strings.Fields(arg)
	for i := range min(len(f), 2) {
		v[i], _ = strconv.ParseInt(f[i], 10, 64)
	}
	switch verb {
	case "requests":
		c.Requests = v[0]
	case "connections":
		c.Connections = v[0]
	case "open":
		c.Open = v[0]
	case "heap":
		c.HeapTotal, c.HeapUsed = v[0], v[1]
	default:
		return false
	}
	return true
}

// spawn starts a worker for slot s from bin. It boots until it says it is
// ready, and is killed if that takes longer than boot.
func (m *master) spawn(s *slot, bin *binary, boot time.Duration) (*worker, error) {
	if err := checkFDs("a new worker", fdsToStart); err != nil {
		return nil, err
	}
	g := s.g
	spec := launchSpec{bin: bin, slot: s.id, env: m.workerEnv(), cred: m.c.credential(), out: m.procs, done: m.done}
	for i, f := range s.socks {
		if f != nil {
			spec.socks, spec.names = append(spec.socks, f), append(spec.names, m.addrs[i].name)
		}
	}
	for _, sp := range m.spares {
		if g.owns(sp.ln) {
			spec.spares, spec.spareNames = append(spec.spares, sp), append(spec.spareNames, m.addrs[sp.ln].name)
		}
	}
	if g.program != nil {
		path, err := g.program.resolve()
		if err != nil {
			return nil, err
		}
		spec.program = path
	}
	p, err := g.launcher.launch(spec)
	if err != nil {
		return nil, startError(exe(g, bin), err)
	}
	m.seq++
	now := time.Now()
	w := &worker{p: p, seq: m.seq, slot: s, bin: bin, program: spec.program, started: now, lastSeen: now, limits: m.newLimits()}
	for _, sp := range spec.spares {
		w.spares = append(w.spares, sp.f)
	}
	w.timer = m.after(boot, func() { m.bootTimedOut(w, boot) })
	m.workers[p] = w
	m.c.writePID("worker", p.Pid())
	return w, nil
}

// workerEnv is the environment of every worker: the master's, without
// flock's own markers, with GOMAXPROCS set to the worker's share of CPUs.
func (m *master) workerEnv() []string {
	env := ownEnvRemoved()
	procs := m.c.WorkerGOMAXPROCS
	if procs == 0 {
		if _, set := os.LookupEnv("GOMAXPROCS"); set {
			return env
		}
		procs = max(1, runtime.NumCPU()/max(1, m.activeSlots()))
	}
	env = slices.DeleteFunc(env, func(kv string) bool { return strings.HasPrefix(kv, "GOMAXPROCS=") })
	return append(env, "GOMAXPROCS="+strconv.Itoa(procs))
}

// ownEnvRemoved is the environment without flock's own markers, which
// say what a process is and must not be inherited by the wrong one.
func ownEnvRemoved() []string {
	return slices.DeleteFunc(os.Environ(), func(kv string) bool {
		name, _, _ := strings.Cut(kv, "=")
		return name == envWorker || name == envMasterPID || name == envUpgrade || name == envSpares || name == envBinaryFD || name == envExec
	})
}
