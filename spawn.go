package flock

import (
	"bufio"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
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
}

// launcher starts worker processes of one kind.
type launcher interface {
	launch(spec launchSpec) (proc, error)
}

// launchSpec is what a launcher needs to start one worker.
type launchSpec struct {
	bin   *binary
	slot  int
	env   []string   // the environment, without the launcher's own variables
	socks []*os.File // bound sockets: the slot's first, then the spares
	cred  *syscall.Credential
	out   chan<- procEvent // what the process says, then its exit, in that order
	done  <-chan struct{}  // closed when the master stops: senders give up
}

// procEvent is something a worker process said or did.
type procEvent struct {
	p      proc
	kind   procEventKind
	counts counts           // procCounts: the totals so far
	state  *os.ProcessState // procExited
}

type procEventKind int

const (
	procReady  procEventKind = iota // it accepts connections
	procAlive                       // it answered a ping
	procCounts                      // it reported what it served
	procExited                      // it is gone; nothing follows
)

// counts is what a worker reports having served since it started.
type counts struct {
	Requests    int64
	Connections int64 // accepted
}

// binary is an executable that workers start from.
type binary struct {
	path string
}

func (b *binary) String() string { return b.path }

// spawn starts a worker for slot s from bin. It boots until it says it is
// ready, and is killed if that takes longer than boot.
func (m *master) spawn(s *slot, bin *binary, boot time.Duration) (*worker, error) {
	spec := launchSpec{bin: bin, slot: s.id, env: m.workerEnv(), socks: append([]*os.File{s.sock}, m.spares...),
		cred: m.c.credential(), out: m.procs, done: m.done}
	p, err := m.launcher.launch(spec)
	if err != nil {
		return nil, err
	}
	m.seq++
	now := time.Now()
	w := &worker{p: p, seq: m.seq, slot: s, bin: bin, started: now, lastSeen: now,
		spares: slices.Clone(m.spares), limits: m.newLimits()}
	w.timer = m.after(boot, func() { m.bootTimedOut(w, boot) })
	m.workers[p] = w
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
		return name == envWorker || name == envMasterPID || name == envUpgrade || name == envSpares
	})
}

// flockLauncher starts this program again as a worker: Serve in the new
// process finds FLOCK_WORKER and serves on the inherited sockets. The
// worker's files: fd 3 the slot's socket, fd 4 one end of a control
// socket pair (EOF tells either side the other is gone), then the spares.
type flockLauncher struct {
	log *slog.Logger
}

type flockProc struct {
	cmd  *exec.Cmd
	ctrl *os.File // the master's end of the control socket pair
	log  *slog.Logger
}

func (l flockLauncher) launch(s launchSpec) (proc, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	unix.SetNonblock(fds[0], true) // read through the poller, not a blocked thread per worker
	mine, theirs := os.NewFile(uintptr(fds[0]), "flock-control"), os.NewFile(uintptr(fds[1]), "flock-control")
	defer theirs.Close()

	cmd := exec.Command(s.bin.path, os.Args[1:]...)
	cmd.Args[0] = os.Args[0]
	cmd.Env = append(s.env, envWorker+"="+strconv.Itoa(s.slot), envMasterPID+"="+strconv.Itoa(os.Getpid()),
		envSpares+"="+strconv.Itoa(len(s.socks)-1))
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.ExtraFiles = append([]*os.File{s.socks[0], theirs}, s.socks[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM, Credential: s.cred}
	if err := cmd.Start(); err != nil {
		mine.Close()
		return nil, err
	}
	p := &flockProc{cmd: cmd, ctrl: mine, log: l.log.With("pid", cmd.Process.Pid)}
	read := make(chan struct{})
	go p.read(s, read)
	go p.wait(s, read)
	return p, nil
}

func (p *flockProc) Pid() int { return p.cmd.Process.Pid }
func (p *flockProc) Stop()    { p.send("stop") }
func (p *flockProc) Ping()    { p.send("ping") }
func (p *flockProc) Kill()    { p.cmd.Process.Kill() }

func (p *flockProc) send(line string) {
	if _, err := p.ctrl.Write([]byte(line + "\n")); err != nil {
		p.log.Debug("flock: cannot write to worker; it is probably exiting", "err", err)
	}
}

// read turns the worker's lines into events until EOF.
func (p *flockProc) read(s launchSpec, done chan<- struct{}) {
	defer close(done)
	var c counts
	warned := false
	sc := bufio.NewScanner(p.ctrl)
	for sc.Scan() {
		verb, arg, _ := strings.Cut(sc.Text(), " ")
		e := procEvent{p: p}
		switch verb {
		case "ready":
			e.kind = procReady
		case "alive":
			e.kind = procAlive
		case "requests", "connections":
			n, _ := strconv.ParseInt(arg, 10, 64)
			if verb == "requests" {
				c.Requests = n
			} else {
				c.Connections = n
			}
			e.kind, e.counts = procCounts, c
		default:
			if !warned { // once per worker: it may speak a newer protocol
				warned = true
				p.log.Warn("flock: unknown message from worker", "message", sc.Text())
			}
			continue
		}
		select {
		case s.out <- e:
		case <-s.done:
			return
		}
	}
}

// wait reaps the process and reports its exit once what it said before
// has been read: its end of the control socket closes with it, unless a
// process it started holds it, hence the bound.
func (p *flockProc) wait(s launchSpec, read <-chan struct{}) {
	p.cmd.Wait()
	select {
	case <-read:
	case <-time.After(100 * time.Millisecond):
		p.ctrl.Close() // ends the reader once it has handed over what it holds
		<-read
	}
	p.ctrl.Close()
	select {
	case s.out <- procEvent{p: p, kind: procExited, state: p.cmd.ProcessState}:
	case <-s.done:
	}
}
