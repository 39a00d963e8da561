package flock

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// master supervises the workers. Everything in it is owned by the goroutine
// running loop; other goroutines (process readers and reapers, timers, the
// monitor, extensions) only send it messages, or read the snapshot it
// publishes.
type master struct {
	c        *config
	log      *slog.Logger
	groups   []*group      // the first is Addr's and Workers'
	added    []WorkerGroup // the groups added while running (AddGroup), handed down by USR2
	pred     int           // the master this one took over from (USR2), or 0
	bin      *binary       // what new slots start from: this program, then the last full roll's
	binaries []*binary     // every binary pinned, until nothing refers to it
	quiet    *limiter      // log lines on paths that can repeat

	sockets
	slots    []*slot // in creation order, retiring ones included
	nextSlot int     // id of the next slot
	seq      int     // fork counter
	workers  map[proc]*worker

	state        masterState
	err          error // what Serve returns once every worker is gone
	started      time.Time
	stopTimeout  time.Duration // ShutdownTimeout, or what a command asked for
	disabled     bool          // taken out of rotation through the monitor
	roll         *roll
	pending      []*roll // rolls waiting for the current one
	mon          *monitor
	upgrades     // USR2, from either side
	extListeners // the extensions' listeners

	events   []Event // emitted since the last flush
	delivery *delivery

	phase  atomic.Int32 // starting, looping, stopped: what Controller calls may do
	procs  chan procEvent
	inbox  chan func()   // timers and callers (monitor, Controller) run code here
	done   chan struct{} // closed when the master has stopped: unblocks late senders
	looped chan struct{} // closed when the loop has returned, before the teardown
	snap   atomic.Pointer[snapshot]
	recent atomic.Pointer[[]Recent] // the last events, for the status page
}

// masterState is where the master is in its life.
type masterState int

const (
	running  masterState = iota
	draining             // graceful shutdown, waiting out DrainDelay
	stopping             // workers told to stop (or killed); waiting for their exits
)

// The master's phases, for the Controller: extensions start before the
// loop runs, and calls that need the loop must not wait for it then.
const (
	phaseStarting int32 = iota
	phaseLooping
	phaseStopped
)

func runMaster(c *config) error {
	// Pdeathsig fires when the thread that forked the child exits: keep
	// every fork on this one thread, alive until Serve returns.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	m := &master{
		c:           c,
		log:         c.Logger,
		groups:      c.groups,
		quiet:       newLimiter(time.Second),
		stopTimeout: c.ShutdownTimeout,
		workers:     map[proc]*worker{},
		started:     time.Now(),
		procs:       make(chan procEvent),
		inbox:       make(chan func()),
		done:        make(chan struct{}),
		looped:      make(chan struct{}),
	}
	for _, g := range m.groups {
		g.launcher = c.launcher(g)
	}
	m.delivery = newDelivery(c.eventSinks())
	err := m.run()
	m.phase.Store(phaseStopped)
	close(m.done)
	if !m.delivery.close(5 * time.Second) {
		m.log.Warn("flock: an OnEvent or extension callback is still running; returning without it")
	}
	return err
}

// launcher starts g's workers: this program again, or a Program.
func (c *config) launcher(g *group) launcher {
	if g.program == nil {
		return flockLauncher{log: c.Logger}
	}
	return foreignLauncher{log: c.Logger, prog: g.program, t: c.Timeout}
}

// exe names what a worker of g started from bin runs, for people.
func exe(g *group, bin *binary) string {
	if g.program != nil {
		return g.program.Path
	}
	return bin.String()
}

// eventSinks are the callbacks that hear every event.
func (c *config) eventSinks() []func(Event) {
	var to []func(Event)
	if c.OnEvent != nil {
		to = append(to, c.OnEvent)
	}
	for _, x := range c.Extensions {
		to = append(to, x.Event)
	}
	return to
}

// run sets the master up, runs the loop, and tears down in reverse order.
func (m *master) run() error {
	exe, err := os.Executable()
	if err != nil {
		exe = "/proc/self/exe"
	}
	if m.bin, err = m.pinBinary("/proc/self/exe", exe); err != nil {
		return fmt.Errorf("flock: %w", err)
	}
	defer m.closeBinaries()
	inh, err := inheritance()
	if err != nil {
		return err
	}
	m.inh, m.extFiles = inh, map[string]*os.File{}
	if inh != nil {
		m.pred = os.Getppid() // the old master started this one
	}
	defer m.closeExtFiles()
	if inh != nil {
		err = m.inherit(inh)
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
	if err := m.startExtensions(); err != nil {
		return err
	}
	defer m.stopExtensions()
	if m.c.PIDFile != "" && inh == nil {
		if err := writePIDFile(m.c.PIDFile, os.Getpid()); err != nil {
			return fmt.Errorf("flock: PIDFile %q: %v", m.c.PIDFile, err)
		}
	}
	if m.c.PIDFile != "" {
		defer removePIDFile(m.c.PIDFile, os.Getpid())
	}
	if m.c.PIDDir != "" {
		if err := m.c.writeOwnPID(); err != nil {
			return err
		}
		defer m.c.removePID("master", os.Getpid())
	}
	sigs, stop := notifyMaster()
	defer stop()

	m.emit(Event{Kind: EventListening, Addr: m.listenAddr(), Monitor: m.mon.addr()})
	if !migrating() {
		m.log.Info("flock: hint: net.ipv4.tcp_migrate_req is 0, so TTOU keeps each removed worker's socket open as a spare (and replaces one worker to serve it) instead of closing it; sysctl -w net.ipv4.tcp_migrate_req=1 lets the kernel hand its queue over and the socket close")
	}
	for _, s := range m.slots {
		m.fork(s, StartFirst)
	}
	if m.c.MaxMemory > 0 {
		m.checkMemory()
	}
	// Looping from here: a Controller call made as soon as the first events
	// are heard waits for the loop instead of failing with ErrStarting.
	m.phase.Store(phaseLooping)
	m.commit()
	err = m.loop(sigs)
	close(m.looped) // callers stop waiting for it: the teardown below may take a while
	m.emit(Event{Kind: EventStopped})
	m.commit()
	return err
}

func (m *master) startExtensions() error {
	ctl := &Controller{m: m}
	for i, x := range m.c.Extensions {
		if err := x.Start(ctl); err != nil {
			for _, y := range m.c.Extensions[:i] {
				y.Stop()
			}
			return fmt.Errorf("flock: extension %T: %w", x, err)
		}
	}
	return nil
}

func (m *master) stopExtensions() {
	for _, x := range m.c.Extensions {
		x.Stop()
	}
}

func (m *master) loop(sigs <-chan os.Signal) error {
	for {
		select {
		case s := <-sigs:
			m.onSignal(s)
		case e := <-m.procs:
			m.onProc(e)
		case fn := <-m.inbox:
			fn()
		}
		if m.state == running && m.groupGone(m.groups[0]) {
			// The service's group (its port's) has given up: the others
			// are stopped with it.
			m.err = m.gaveUpError()
			m.abortRolls(m.err)
			m.stopRestarts()
			m.stopAll(ExitShutdown)
		}
		m.releaseBinaries()
		m.commit()
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

// ErrStarting is returned by Controller methods that need the master's
// loop when they are called before it runs: from Extension.Start, or from
// a goroutine that Start began. Call them once Start has returned (events
// are delivered then, for example).
var ErrStarting = errors.New("flock: the master is starting: this Controller method works once every Extension.Start has returned")

// ErrStopped is returned by Controller methods once the master has stopped.
var ErrStopped = errors.New("flock: the master has stopped")

// call runs fn on the master's goroutine and waits for it. It never waits
// for a loop that is not running: before, it is ErrStarting; after,
// ErrStopped.
func (m *master) call(fn func()) error {
	switch m.phase.Load() {
	case phaseStarting:
		return ErrStarting
	case phaseStopped:
		return ErrStopped
	}
	done := make(chan struct{})
	select {
	// Published before the caller goes on, so that it reads what it did
	// (a GET after POST /ecv/disable saw the old state under load); the
	// loop publishes again and reports the events after it.
	case m.inbox <- func() { fn(); m.publish(); close(done) }:
		<-done
		return nil
	case <-m.looped:
		return ErrStopped
	case <-m.done:
		return ErrStopped
	}
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
		m.addSlot(m.groups[0])
	case actRemoveWorker:
		m.removeSlot()
	case actGraceful:
		m.shutdown(sig)
	case actImmediate:
		m.killAll()
	case actRoll:
		m.rollAll(rollRestart, nil)
	case actUpgrade:
		m.startUpgrade()
	}
}

// setDisabled takes the node out of rotation (or back in).
func (m *master) setDisabled(v bool) {
	if m.disabled != v {
		m.disabled = v
		m.emit(Event{Kind: EventMonitor, Disabled: v})
	}
}

// activeSlots counts the slots that are not going away.
func (m *master) activeSlots() int {
	n := 0
	for _, s := range m.slots {
		if s.state != slotRetiring {
			n++
		}
	}
	return n
}

// groupSlots counts g's slots that are not going away.
func (m *master) groupSlots(g *group) int {
	n := 0
	for _, s := range m.slots {
		if s.g == g && s.state != slotRetiring {
			n++
		}
	}
	return n
}

// signalOf is the signal that ended a process, or nil.
func signalOf(st *os.ProcessState) os.Signal {
	if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return ws.Signal()
	}
	return nil
}

// extFiles guard: Listen may run on a goroutine an extension started.
type extListeners struct {
	extMu    sync.Mutex
	extFiles map[string]*os.File // extensions' listeners, to hand down on USR2
}

func (m *master) closeExtFiles() {
	m.extMu.Lock()
	defer m.extMu.Unlock()
	for _, f := range m.extFiles {
		f.Close()
	}
}
