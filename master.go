package flock

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// master supervises the workers. Everything in it is owned by the goroutine
// running loop; other goroutines (child reapers, control-socket readers,
// timers, the monitor) only send it messages.
type master struct {
	c     *config
	log   *slog.Logger
	ip    net.IP // bound address; nil for all interfaces
	port  int
	slots []*slot // in creation order
	seq   int     // fork counter: orders workers by age
	next  int     // next slot id
	exe   string  // what workers are started from (see HUP)

	workers     map[*worker]struct{} // every live worker process
	state       masterState
	err         error // what Serve returns once every worker is gone
	started     time.Time
	disabled    bool // taken out of rotation through the monitor
	roll        *roll
	pending     []*roll // rolls waiting for the current one
	upgrade     *upgrade
	heir        *os.File // upgrade pipe to the old master, until handover
	announced   bool     // READY=1 sent to systemd
	mon         *monitor
	spares      []*os.File          // sockets of removed slots, kept open (see retireSocket)
	stopTimeout time.Duration       // ShutdownTimeout, or what a command asked for
	inh         *inherited          // what an old master handed down (USR2)
	extFiles    map[string]*os.File // extensions' listeners, to hand down on USR2

	exits chan exitMsg
	msgs  chan workerMsg
	inbox chan func()   // timers and callers (monitor, commands) run code here
	done  chan struct{} // closed when loop returns: unblocks late senders
	snap  atomic.Pointer[snapshot]
}

type masterState int

const (
	running  masterState = iota
	draining             // graceful shutdown, waiting out DrainDelay
	stopping             // workers told to stop (or killed); waiting for exits
)

// slot is one place for a worker: its SO_REUSEPORT socket outlives the
// worker, so connections queued on it wait for the replacement.
type slot struct {
	id       int
	sock     *os.File
	w        *worker     // the worker serving the slot; nil while none runs
	next     *worker     // its replacement, while that boots
	onReady  func(error) // called when next is ready (nil) or failed (why)
	reason   string      // why w is being replaced
	failures []time.Time // crash times within the last minute
	restart  *time.Timer // pending re-fork
	gaveUp   bool
	removing bool // TTOU: the slot goes away when its worker exits
}

type worker struct {
	pid         int
	seq         int
	slot        *slot
	cmd         *exec.Cmd
	ctrl        *os.File // master's end of the control socket pair
	started     time.Time
	ready       bool
	stopReason  string      // set when the master asks it to go
	onExit      []func()    // called when it has exited
	spares      []*os.File  // the spare sockets it accepts on too
	timer       *time.Timer // boot timeout, then heartbeat deadline
	kill        *time.Timer // after stopWorker: ShutdownTimeout
	uptime      *time.Timer // MaxUptime
	lastSeen    time.Time   // last message from the worker
	pinged      time.Time   // when the master last asked for a sign of life
	requests    int64       // served, as last reported by the worker
	maxRequests int64       // MaxRequests plus this worker's jitter
	recycling   bool
}

type exitMsg struct {
	w     *worker
	state *os.ProcessState
}

type workerMsg struct {
	w    *worker
	line string
}

func runMaster(c *config) error {
	// Pdeathsig fires when the thread that forked the child exits: keep
	// every fork on this one thread, alive until Serve returns.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	m := &master{
		c:           c,
		log:         c.Logger,
		exe:         "/proc/self/exe",
		stopTimeout: c.ShutdownTimeout,
		workers:     map[*worker]struct{}{},
		started:     time.Now(),
		exits:       make(chan exitMsg),
		msgs:        make(chan workerMsg),
		inbox:       make(chan func()),
		done:        make(chan struct{}),
	}
	defer close(m.done)
	inh, err := inheritance()
	if err != nil {
		return err
	}
	m.inh, m.extFiles = inh, map[string]*os.File{}
	defer func() {
		for _, f := range m.extFiles {
			f.Close()
		}
	}()
	if inh != nil {
		err = m.adopt(inh)
	} else {
		err = m.bindAll()
	}
	if err != nil {
		return err
	}
	defer m.closeSockets()
	m.publish()
	if m.mon, err = startMonitor(m, inh); err != nil {
		return err
	}
	defer m.mon.close()
	ctl := &Controller{m: m}
	for i, x := range c.Extensions {
		if err := x.Start(ctl); err != nil {
			for _, y := range c.Extensions[:i] {
				y.Stop()
			}
			return fmt.Errorf("flock: extension %T: %w", x, err)
		}
	}
	defer func() {
		for _, x := range c.Extensions {
			x.Stop()
		}
	}()
	if c.PIDFile != "" && inh == nil {
		if err := writePIDFile(c.PIDFile, os.Getpid()); err != nil {
			return fmt.Errorf("flock: PIDFile %q: %v", c.PIDFile, err)
		}
	}
	if c.PIDFile != "" {
		defer removePIDFile(c.PIDFile, os.Getpid())
	}
	sigs, stop := notifyMaster()
	defer stop()

	m.emit(Event{Kind: EventListening, Addr: m.listenAddr(), Monitor: m.mon.addr()})
	if !migrating() {
		m.log.Info("flock: hint: net.ipv4.tcp_migrate_req is 0, so TTOU keeps each removed worker's socket open as a spare (and replaces one worker to serve it) instead of closing it; sysctl -w net.ipv4.tcp_migrate_req=1 lets the kernel hand its queue over and the socket close")
	}
	for _, s := range m.slots {
		m.fork(s, ReasonStart)
	}
	if c.MaxMemory > 0 {
		m.checkMemory()
	}
	err = m.loop(sigs)
	m.emit(Event{Kind: EventStopped})
	return err
}

func (m *master) loop(sigs <-chan os.Signal) error {
	for {
		select {
		case s := <-sigs:
			m.onSignal(s)
		case e := <-m.exits:
			m.onExit(e)
		case msg := <-m.msgs:
			m.onMessage(msg)
		case fn := <-m.inbox:
			fn()
		}
		if m.state == running && len(m.workers) == 0 && !m.anyRestartPending() {
			m.err = m.gaveUpError()
			m.state = stopping
			m.abortRolls(m.err)
		}
		m.publish()
		if m.state == stopping && len(m.workers) == 0 {
			return m.err
		}
	}
}

// after runs fn on the master's goroutine once d has passed.
func (m *master) after(d time.Duration, fn func()) *time.Timer {
	return time.AfterFunc(d, func() {
		select {
		case m.inbox <- fn:
		case <-m.done:
		}
	})
}

// call runs fn on the master's goroutine and waits for it. It reports
// false, without running fn, once the master has stopped.
func (m *master) call(fn func()) bool {
	done := make(chan struct{})
	select {
	case m.inbox <- func() { fn(); close(done) }:
		<-done
		return true
	case <-m.done:
		return false
	}
}

// snapshot is what the master's state looks like from other goroutines:
// rebuilt by the loop after every event, never modified once published.
type snapshot struct {
	state    masterState
	disabled bool
	ready    int // slots whose worker is ready
	workers  []WorkerStatus
}

// WorkerStatus describes one worker (the monitor's JSON status).
type WorkerStatus struct {
	PID      int       `json:"pid"`
	Slot     int       `json:"slot"`
	State    string    `json:"state"` // starting, ready, stopping
	Started  time.Time `json:"started"`
	Requests int64     `json:"requests"` // served, as last reported (every second at most)
	RSS      int64     `json:"rss"`      // resident memory in bytes, read from /proc when asked
}

func (m *master) publish() {
	s := &snapshot{state: m.state, disabled: m.disabled}
	for w := range m.workers {
		st := "starting"
		switch {
		case w.stopReason != "":
			st = "stopping"
		case w.ready:
			st = "ready"
		}
		if w.ready && w.slot.w == w && w.stopReason == "" {
			s.ready++
		}
		s.workers = append(s.workers, WorkerStatus{PID: w.pid, Slot: w.slot.id, State: st, Started: w.started, Requests: w.requests})
	}
	slices.SortFunc(s.workers, func(a, b WorkerStatus) int { return cmp.Or(a.Slot-b.Slot, a.Started.Compare(b.Started)) })
	m.snap.Store(s)
}

// setDisabled takes the node out of rotation (or back in).
func (m *master) setDisabled(v bool) {
	if m.disabled == v {
		return
	}
	m.disabled = v
	reason := "enabled"
	if v {
		reason = "disabled"
	}
	m.emit(Event{Kind: EventMonitor, Reason: reason})
}

func (m *master) onSignal(sig os.Signal) {
	m.emit(Event{Kind: EventSignal, Signal: sig})
	act := masterSignals[sig]
	if m.state != running && act != actImmediate {
		if act == actGraceful {
			m.log.Info("flock: already shutting down; send INT to stop at once", "signal", signalName(sig))
		} else {
			m.log.Info("flock: signal ignored while shutting down", "signal", signalName(sig))
		}
		return
	}
	switch act {
	case actAddWorker:
		m.addSlot()
	case actRemoveWorker:
		m.removeSlot()
	case actGraceful:
		m.shutdown(signalName(sig))
	case actImmediate:
		m.killAll()
	case actRoll:
		m.rollAll(ReasonRestart, "", nil)
	case actUpgrade:
		m.startUpgrade()
	}
}

// bindAll creates the first Workers slots, resolving port 0 once so that
// every slot shares the same port.
func (m *master) bindAll() error {
	addr, err := net.ResolveTCPAddr("tcp", m.c.Addr)
	if err != nil {
		return fmt.Errorf("flock: listen %s: %v", m.c.Addr, err)
	}
	m.ip, m.port = addr.IP, addr.Port
	for range m.c.Workers {
		if _, err := m.newSlot(); err != nil {
			m.closeSockets()
			return err
		}
	}
	return nil
}

func (m *master) newSlot() (*slot, error) {
	var f *os.File
	if n := len(m.spares); n > 0 { // reuse a removed slot's socket
		f, m.spares = m.spares[n-1], m.spares[:n-1]
	} else {
		var err error
		if f, err = m.bind(); err != nil {
			return nil, err
		}
	}
	s := &slot{id: m.next, sock: f}
	m.next++
	m.slots = append(m.slots, s)
	return s, nil
}

func (m *master) bind() (*os.File, error) {
	f, port, err := bindSocket(m.ip, m.port)
	if err != nil {
		return nil, fmt.Errorf("flock: listen %s: %w", net.JoinHostPort(m.c.host, strconv.Itoa(m.port)), err)
	}
	if m.port == 0 {
		// Set once, by the first bind (port 0 picks it), before any other
		// goroutine reads it (listenAddr).
		m.port = port
	}
	return f, nil
}

func (m *master) listenAddr() string {
	return net.JoinHostPort(m.c.host, strconv.Itoa(m.port))
}

func (m *master) closeSockets() {
	for _, s := range m.slots {
		s.closeSocket()
	}
	for _, f := range m.spares {
		f.Close()
	}
	m.spares = nil
}

// retireSocket takes a removed slot's socket out of service. With
// net.ipv4.tcp_migrate_req=1 closing it loses nothing: the kernel hands
// what is queued on it to the port's other sockets. Without, closing would
// reset those connections, so the master keeps the socket open as a spare,
// queue and all: every worker started from now on accepts on the spares
// too, and if no running worker has them all, one is replaced (readiness-
// gated) to take them over. A later TTIN reuses a spare as its socket.
func (m *master) retireSocket(s *slot) {
	if s.sock == nil {
		return
	}
	if migrating() {
		s.closeSocket()
		return
	}
	m.spares = append(m.spares, s.sock)
	s.sock = nil
	m.adoptSpares()
}

// adoptSpares makes sure some running worker accepts on every spare.
func (m *master) adoptSpares() {
	if len(m.spares) == 0 || m.roll != nil || len(m.pending) > 0 || m.state != running {
		return // a roll under way starts its workers with every spare
	}
	var pick *slot
	for _, s := range m.slots {
		w := s.w
		if s.removing || w == nil || w.stopReason != "" || s.next != nil {
			continue
		}
		if !slices.ContainsFunc(m.spares, func(f *os.File) bool { return !slices.Contains(w.spares, f) }) {
			return // w has them all
		}
		if pick == nil {
			pick = s
		}
	}
	if pick != nil {
		m.startRoll(&roll{reason: ReasonAdopt, exe: m.exe, queue: []*slot{pick}, expect: pick.w, width: 1, quiet: true})
	}
}

// migrating reports whether net.ipv4.tcp_migrate_req is on.
func migrating() bool {
	b, _ := os.ReadFile("/proc/sys/net/ipv4/tcp_migrate_req")
	return strings.TrimSpace(string(b)) == "1"
}

func (s *slot) closeSocket() {
	if s.sock != nil {
		s.sock.Close()
		s.sock = nil
	}
}

func (m *master) addSlot() {
	s, err := m.newSlot()
	if err != nil {
		m.log.Error("flock: TTIN failed", "err", err)
		return
	}
	m.emit(Event{Kind: EventScaled, Workers: m.activeSlots()})
	m.fork(s, ReasonScale)
}

// removeSlot takes one slot away: preferably one with no running worker
// (given up, or waiting to be re-forked), otherwise the oldest worker's.
func (m *master) removeSlot() {
	if m.activeSlots() <= 1 {
		m.log.Info("flock: TTOU ignored: never fewer than one worker")
		return
	}
	var victim *slot
	for _, s := range m.slots {
		if s.removing {
			continue
		}
		if s.w == nil && s.next == nil {
			victim = s
			break
		}
		if victim == nil || victim.w == nil || (s.w != nil && s.w.seq < victim.w.seq) {
			victim = s
		}
	}
	m.retireSlot(victim, m.c.ShutdownTimeout)
	m.emit(Event{Kind: EventScaled, Workers: m.activeSlots()})
}

// retireSlot takes slot s away: its worker, and a replacement booting
// beside it, drain within timeout; its socket is retired; the slot goes
// once both have exited.
func (m *master) retireSlot(s *slot, timeout time.Duration) {
	s.removing = true
	if s.w == nil && s.next == nil {
		m.dropSlot(s)
		return
	}
	m.retireSocket(s)
	for _, w := range []*worker{s.w, s.next} {
		if w != nil {
			m.stopWorker(w, ReasonScaleDown, timeout)
		}
	}
}

func (m *master) dropSlot(s *slot) {
	if s.restart != nil {
		s.restart.Stop()
	}
	m.retireSocket(s)
	m.slots = slices.DeleteFunc(m.slots, func(x *slot) bool { return x == s })
}

func (m *master) shutdown(reason string) {
	m.state = draining
	m.emit(Event{Kind: EventShutdown, Reason: reason})
	sdNotify("STOPPING=1")
	m.abortRolls(errors.New("shutting down"))
	m.cancelUpgrade("shutting down")
	for _, s := range m.slots {
		if s.restart != nil {
			s.restart.Stop()
		}
	}
	m.after(m.c.DrainDelay, func() {
		if m.state != draining {
			return // INT came first
		}
		m.stopAll(ReasonShutdown)
	})
}

// stopAll closes the master's copies of the sockets, so that once each
// worker has closed its own new connections are refused instead of queueing
// unserved, and tells every worker to drain.
func (m *master) stopAll(reason string) {
	m.state = stopping
	m.closeSockets()
	for w := range m.workers {
		m.stopWorker(w, reason, m.stopTimeout)
	}
}

func (m *master) killAll() {
	if m.state == stopping && errors.Is(m.err, ErrInterrupted) {
		return
	}
	if m.state != running {
		m.log.Warn("flock: INT during graceful shutdown: killing every worker now")
	}
	m.state, m.err = stopping, ErrInterrupted
	m.emit(Event{Kind: EventShutdown, Reason: signalName(syscall.SIGINT)})
	m.abortRolls(ErrInterrupted)
	m.cancelUpgrade("interrupted")
	m.closeSockets()
	for _, s := range m.slots {
		if s.restart != nil {
			s.restart.Stop()
		}
	}
	for w := range m.workers {
		w.stopReason = ReasonKilled
		w.cmd.Process.Kill()
	}
}

// stopWorker asks w to drain and exit, and kills it if it is still there
// after timeout.
func (m *master) stopWorker(w *worker, reason string, timeout time.Duration) {
	if w.stopReason != "" {
		return
	}
	w.stopReason = reason
	stopTimer(w.timer, w.uptime)
	m.send(w, "stop")
	w.kill = m.after(timeout, func() {
		if _, alive := m.workers[w]; alive {
			m.log.Warn("flock: worker still running after its shutdown timeout; killing it", "pid", w.pid, "slot", w.slot.id, "timeout", timeout)
			w.stopReason = ReasonKilled
			w.cmd.Process.Kill()
		}
	})
}

func (m *master) send(w *worker, line string) {
	if _, err := w.ctrl.Write([]byte(line + "\n")); err != nil {
		m.log.Debug("flock: cannot write to worker; it is probably exiting", "pid", w.pid, "err", err)
	}
}

func stopTimer(ts ...*time.Timer) {
	for _, t := range ts {
		if t != nil {
			t.Stop()
		}
	}
}

// fork starts the worker of slot s. A failure to start counts as a crash.
func (m *master) fork(s *slot, reason string) {
	w, err := m.startWorker(s, m.exe, m.c.BootTimeout)
	if err != nil {
		m.log.Error("flock: cannot start worker", "slot", s.id, "exe", m.exe, "err", err)
		m.crashed(s, nil)
		return
	}
	s.w = w
	m.emit(Event{Kind: EventForked, PID: w.pid, Slot: s.id, Reason: reason})
}

// replace starts a replacement for slot s beside its current worker. Both
// share the slot's socket, so nothing queued is lost. Once the replacement
// is ready the old worker drains with reason, and onReady(nil) is called;
// if it fails to become ready the old one keeps serving, and onReady hears
// why.
func (m *master) replace(s *slot, reason, exe string, boot time.Duration, onReady func(error)) {
	if s.sock == nil { // given up: it needs a socket again
		f, err := m.bind()
		if err != nil {
			m.log.Error("flock: cannot revive slot", "slot", s.id, "err", err)
			m.after(0, func() { onReady(fmt.Errorf("slot %d: %w", s.id, err)) })
			return
		}
		s.sock, s.gaveUp, s.failures = f, false, nil
	}
	w, err := m.startWorker(s, exe, boot)
	if err != nil {
		m.log.Error("flock: cannot start worker", "slot", s.id, "exe", exe, "err", err)
		m.after(0, func() { onReady(fmt.Errorf("slot %d: cannot start %s: %w", s.id, exe, err)) })
		return
	}
	s.next, s.reason, s.onReady = w, reason, onReady
	m.emit(Event{Kind: EventForked, PID: w.pid, Slot: s.id, Reason: reason})
}

func (m *master) startWorker(s *slot, exe string, boot time.Duration) (*worker, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	unix.SetNonblock(fds[0], true) // read through the poller, not a blocked thread per worker
	mine, theirs := os.NewFile(uintptr(fds[0]), "flock-control"), os.NewFile(uintptr(fds[1]), "flock-control")
	defer theirs.Close()

	cmd := exec.Command(exe, os.Args[1:]...)
	cmd.Args[0] = os.Args[0]
	cmd.Env = m.workerEnv(s)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.ExtraFiles = append([]*os.File{s.sock, theirs}, m.spares...) // fd 3, fd 4, then spares
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if m.c.uid != nil {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: *m.c.uid, Gid: *m.c.gid}
	}
	if err := cmd.Start(); err != nil {
		mine.Close()
		return nil, err
	}
	m.seq++
	now := time.Now()
	w := &worker{pid: cmd.Process.Pid, seq: m.seq, slot: s, cmd: cmd, ctrl: mine, started: now, lastSeen: now, spares: slices.Clone(m.spares)}
	if n := int64(m.c.MaxRequests); n > 0 {
		// Jitter (up to 10 %) keeps workers started together from
		// recycling together.
		w.maxRequests = n + rand.Int64N(n/10+1)
	}
	w.timer = m.after(boot, func() { m.bootTimedOut(w, boot) })
	m.workers[w] = struct{}{}
	go func() {
		sc := bufio.NewScanner(mine)
		for sc.Scan() {
			select {
			case m.msgs <- workerMsg{w, sc.Text()}:
			case <-m.done:
				return
			}
		}
	}()
	go func() {
		cmd.Wait()
		select {
		case m.exits <- exitMsg{w, cmd.ProcessState}:
		case <-m.done:
		}
	}()
	return w, nil
}

func (m *master) workerEnv(s *slot) []string {
	env := append(ownEnvRemoved(), envWorker+"="+strconv.Itoa(s.id), envMasterPID+"="+strconv.Itoa(os.Getpid()),
		envSpares+"="+strconv.Itoa(len(m.spares)))
	procs := m.c.WorkerGOMAXPROCS
	if procs == 0 {
		if _, set := os.LookupEnv("GOMAXPROCS"); set {
			return env
		}
		procs = max(1, runtime.NumCPU()/m.activeSlots())
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

func (m *master) onMessage(msg workerMsg) {
	w := msg.w
	if _, alive := m.workers[w]; !alive {
		return
	}
	w.lastSeen = time.Now()
	verb, arg, _ := strings.Cut(msg.line, " ")
	switch verb {
	case "ready":
		m.onReady(w)
	case "requests":
		w.requests, _ = strconv.ParseInt(arg, 10, 64)
		if w.maxRequests > 0 && w.requests >= w.maxRequests {
			m.recycle(w, fmt.Sprintf("served %d requests (MaxRequests %d with jitter)", w.requests, m.c.MaxRequests))
		}
	case "alive":
	default:
		m.log.Warn("flock: unknown message from worker", "pid", w.pid, "message", msg.line)
	}
}

func (m *master) onReady(w *worker) {
	if w.ready || w.stopReason != "" {
		return
	}
	w.ready = true
	stopTimer(w.timer)
	w.timer = m.after(m.c.Timeout, func() { m.heartbeat(w) })
	if m.c.MaxUptime > 0 {
		d := m.c.MaxUptime + rand.N(m.c.MaxUptime/10+1)
		w.uptime = m.after(d, func() { m.recycle(w, fmt.Sprintf("up for %v (MaxUptime %v with jitter)", d, m.c.MaxUptime)) })
	}
	s := w.slot
	m.emit(Event{Kind: EventReady, PID: w.pid, Slot: s.id})
	if s.next == w {
		old, done := s.w, s.onReady
		s.w, s.next, s.onReady = w, nil, nil
		if old != nil {
			m.stopWorker(old, s.reason, m.c.ShutdownTimeout)
		}
		done(nil)
	}
	m.handoverIfReady()
}

// bootTimedOut kills a worker that did not become ready in BootTimeout; it
// counts as a failed start.
func (m *master) bootTimedOut(w *worker, boot time.Duration) {
	if _, alive := m.workers[w]; !alive || w.ready || w.stopReason != "" {
		return
	}
	m.log.Warn("flock: worker not ready within its boot timeout; killing it", "pid", w.pid, "slot", w.slot.id, "timeout", boot)
	w.stopReason = ReasonBootTimeout
	w.cmd.Process.Kill()
}

// heartbeat runs when a worker has been silent for Timeout. It asks the
// worker for a sign of life first, and kills it only if that gets no answer
// either: a master that was itself suspended (SIGSTOP, laptop sleep) finds
// every worker silent when it resumes, though their messages are waiting.
func (m *master) heartbeat(w *worker) {
	if _, alive := m.workers[w]; !alive || w.stopReason != "" {
		return
	}
	now := time.Now()
	switch {
	case now.Sub(w.lastSeen) < m.c.Timeout:
		w.timer = m.after(m.c.Timeout-now.Sub(w.lastSeen), func() { m.heartbeat(w) })
	case w.pinged.IsZero() || w.lastSeen.After(w.pinged):
		w.pinged = now
		m.send(w, "ping")
		w.timer = m.after(min(m.c.Timeout, time.Second), func() { m.heartbeat(w) })
	default:
		m.log.Warn("flock: worker did not answer within Timeout; killing it", "pid", w.pid, "slot", w.slot.id, "timeout", m.c.Timeout)
		w.stopReason = ReasonTimeout
		w.cmd.Process.Kill()
	}
}

// checkMemory recycles workers above MaxMemory; it runs every 2 s only
// when MaxMemory is set.
func (m *master) checkMemory() {
	for w := range m.workers {
		if w.ready && w.stopReason == "" {
			if r := rss(w.pid); r > m.c.MaxMemory {
				m.recycle(w, fmt.Sprintf("RSS %d bytes above MaxMemory %d", r, m.c.MaxMemory))
			}
		}
	}
	m.after(memoryCheckInterval, m.checkMemory)
}

const memoryCheckInterval = 2 * time.Second

func (m *master) onExit(e exitMsg) {
	w, s := e.w, e.w.slot
	delete(m.workers, w)
	w.ctrl.Close()
	stopTimer(w.timer, w.kill, w.uptime)
	defer func() {
		for _, fn := range w.onExit {
			fn()
		}
	}()
	reason := w.stopReason
	if reason == "" {
		reason = ReasonCrash
	}
	ev := Event{Kind: EventExited, PID: w.pid, Slot: s.id, Reason: reason, Status: e.state.ExitCode()}
	if ws, ok := e.state.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		ev.Signal = ws.Signal()
	}
	failed := reason == ReasonCrash || reason == ReasonTimeout || reason == ReasonBootTimeout
	switch {
	case s.next == w: // a replacement that never became ready
		done := s.onReady
		s.next, s.onReady = nil, nil
		switch {
		case s.removing && s.w == nil:
			m.dropSlot(s)
			m.emit(ev)
		case s.w == nil && failed && m.state == running:
			m.crashed(s, &ev)
		default:
			m.emit(ev)
		}
		how := fmt.Sprintf("exited (%v)", e.state)
		if reason == ReasonBootTimeout {
			how = "timed out: not ready within its boot timeout"
		}
		done(fmt.Errorf("slot %d: new worker %d %s", s.id, w.pid, how))
	case s.w == w:
		s.w = nil
		switch {
		case s.next != nil: // its replacement will take the slot
			m.emit(ev)
		case s.removing:
			m.dropSlot(s)
			m.emit(ev)
		case failed && m.state == running:
			m.crashed(s, &ev)
		default:
			m.emit(ev)
		}
	default: // replaced, or its slot already removed
		m.emit(ev)
	}
}

// crashed records a crash of slot s and schedules its next worker, or gives
// up on the slot. exited, when set, is the exit event, emitted with the
// delay before the re-fork.
func (m *master) crashed(s *slot, exited *Event) {
	now := time.Now()
	s.failures = recentFailures(append(s.failures, now), now)
	s.gaveUp = len(s.failures) > m.c.RestartsPerMinute
	if !s.gaveUp {
		d := restartDelay(m.c.RestartDelay, len(s.failures))
		s.restart = m.after(d, func() {
			s.restart = nil
			if m.state == running && !s.removing && s.w == nil && s.next == nil {
				m.fork(s, ReasonFailure)
			}
		})
		if exited != nil {
			exited.Delay = d
		}
	}
	if exited != nil {
		m.emit(*exited)
	}
	if s.gaveUp {
		// Nobody will accept on this socket again: close it so the kernel
		// stops queueing connections on it.
		s.closeSocket()
		m.emit(Event{Kind: EventGaveUp, Slot: s.id, Reason: fmt.Sprintf("more than %d crashes within a minute (RestartsPerMinute); HUP tries again", m.c.RestartsPerMinute)})
	}
}

// recentFailures keeps the crash times of the last minute.
func recentFailures(times []time.Time, now time.Time) []time.Time {
	return slices.DeleteFunc(times, func(t time.Time) bool { return now.Sub(t) >= time.Minute })
}

// restartDelay is the back-off before re-forking a slot that crashed n
// times within the last minute: base, doubling per crash, capped at
// maxRestartDelay.
func restartDelay(base time.Duration, n int) time.Duration {
	d := base
	for i := 1; i < n && d < maxRestartDelay; i++ {
		d *= 2
	}
	return min(d, maxRestartDelay)
}

func (m *master) anyRestartPending() bool {
	return slices.ContainsFunc(m.slots, func(s *slot) bool { return s.restart != nil })
}

// activeSlots counts the slots that are not being removed.
func (m *master) activeSlots() int {
	n := 0
	for _, s := range m.slots {
		if !s.removing {
			n++
		}
	}
	return n
}

func (m *master) gaveUpError() error {
	return fmt.Errorf("flock: no worker left: every slot crashed more than %d times within a minute (RestartsPerMinute)", m.c.RestartsPerMinute)
}

func (m *master) emit(e Event) {
	e.Time = time.Now()
	level, msg := slog.LevelInfo, "flock: "+string(e.Kind)
	attrs := []any{"event", string(e.Kind)}
	switch e.Kind {
	case EventListening:
		attrs = append(attrs, "addr", e.Addr, "monitor", e.Monitor, "workers", len(m.slots), "master", os.Getpid())
	case EventSignal:
		attrs = append(attrs, "signal", signalName(e.Signal))
	case EventScaled:
		attrs = append(attrs, "workers", e.Workers)
	case EventShutdown, EventMonitor:
		attrs = append(attrs, "reason", e.Reason)
	case EventRoll:
		attrs = append(attrs, "reason", e.Reason, "workers", e.Workers)
	case EventUpgrade:
		attrs = append(attrs, "reason", e.Reason, "new_master", e.PID)
	case EventGaveUp:
		level = slog.LevelError
		attrs = append(attrs, "slot", e.Slot, "reason", e.Reason)
	case EventForked:
		attrs = append(attrs, "pid", e.PID, "slot", e.Slot, "reason", e.Reason)
	case EventReady:
		attrs = append(attrs, "pid", e.PID, "slot", e.Slot)
	case EventExited:
		attrs = append(attrs, "pid", e.PID, "slot", e.Slot, "reason", e.Reason, "status", e.Status)
		if e.Signal != nil {
			attrs = append(attrs, "signal", signalName(e.Signal))
		}
		if e.Delay > 0 {
			level = slog.LevelWarn
			attrs = append(attrs, "restart_in", e.Delay.String())
		}
	}
	m.log.Log(context.Background(), level, msg, attrs...)
	if m.c.OnEvent != nil {
		m.c.OnEvent(e)
	}
	for _, x := range m.c.Extensions {
		x.Event(e)
	}
}

// bindSocket creates a TCP socket with SO_REUSEPORT bound to ip:port, but
// does not listen: the worker calls listen once it is ready, which is when
// the kernel starts handing the socket connections. It returns the bound
// port (useful when port is 0).
func bindSocket(ip net.IP, port int) (*os.File, int, error) {
	family, sa := unix.AF_INET6, unix.Sockaddr(&unix.SockaddrInet6{Port: port})
	if ip4 := ip.To4(); ip4 != nil {
		family, sa = unix.AF_INET, &unix.SockaddrInet4{Port: port, Addr: [4]byte(ip4)}
	} else if ip != nil {
		sa = &unix.SockaddrInet6{Port: port, Addr: [16]byte(ip.To16())}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil && ip == nil { // no IPv6 on this machine: all IPv4 interfaces
		family, sa = unix.AF_INET, &unix.SockaddrInet4{Port: port}
		fd, err = unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	}
	if err != nil {
		return nil, 0, err
	}
	opts := [][2]int{{unix.SOL_SOCKET, unix.SO_REUSEADDR}, {unix.SOL_SOCKET, unix.SO_REUSEPORT}}
	if family == unix.AF_INET6 && ip == nil {
		opts = append(opts, [2]int{unix.IPPROTO_IPV6, unix.IPV6_V6ONLY}) // set to 0 below: dual stack
	}
	for _, o := range opts {
		v := 1
		if o[1] == unix.IPV6_V6ONLY {
			v = 0
		}
		if err := unix.SetsockoptInt(fd, o[0], o[1], v); err != nil {
			unix.Close(fd)
			return nil, 0, err
		}
	}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return nil, 0, err
	}
	if port == 0 {
		got, err := unix.Getsockname(fd)
		if err != nil {
			unix.Close(fd)
			return nil, 0, err
		}
		_, port = sockAddr(got)
	}
	return os.NewFile(uintptr(fd), "flock-slot"), port, nil
}

func sockAddr(sa unix.Sockaddr) (net.IP, int) {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return net.IP(a.Addr[:]), a.Port
	case *unix.SockaddrInet6:
		return net.IP(a.Addr[:]), a.Port
	}
	return nil, 0
}

// writePIDFile writes pid atomically: a reader sees the old file or the new
// one, never a half-written one.
func writePIDFile(path string, pid int) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".flock-pid-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := fmt.Fprintf(tmp, "%d\n", pid); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// removePIDFile removes path only if it still names pid (a successor may
// have replaced it).
func removePIDFile(path string, pid int) {
	b, err := os.ReadFile(path)
	if err == nil && strings.TrimSpace(string(b)) == strconv.Itoa(pid) {
		os.Remove(path)
	}
}
