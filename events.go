package flock

import (
	"context"
	"log/slog"
	"os"
	"sync"
	"time"
)

// EventKind names what happened.
type EventKind string

// The events the master reports.
const (
	EventListening EventKind = "listening" // sockets bound; Addr holds the address
	EventForked    EventKind = "forked"    // a worker process started; Start says why
	EventReady     EventKind = "ready"     // a worker accepts connections
	EventExited    EventKind = "exited"    // a worker exited; Exit says why
	EventSignal    EventKind = "signal"    // the master received a signal
	EventScaled    EventKind = "scaled"    // the number of slots changed; Workers holds it
	EventGaveUp    EventKind = "gave-up"   // a slot crashed too often and is not re-forked; Err says why
	EventShutdown  EventKind = "shutdown"  // a shutdown began; Signal says which (nil: a command)
	EventStopped   EventKind = "stopped"   // the master is about to return from Serve
	EventMonitor   EventKind = "ecv"       // taken out of rotation or back in; Disabled says which
	EventRoll      EventKind = "roll"      // a rolling restart began, finished or failed; Phase says which
	EventUpgrade   EventKind = "upgrade"   // a binary upgrade began, handed over or failed; Phase says which
	EventReport    EventKind = "report"    // a worker's report (flock.Report): Topic and Data; not logged
)

// StartReason says why a worker started (Event.Start).
type StartReason string

// Why a worker started. A replacement carries the reason of its
// replacement, which is also the exit reason of the worker it replaces.
const (
	StartFirst   StartReason = "start"   // one of the first workers
	StartScale   StartReason = "scale"   // TTIN, or a command adding workers
	StartFailure StartReason = "failure" // re-forked after a crash, timeout or boot timeout
	StartRestart StartReason = "restart" // a rolling restart (HUP, restart command)
	StartUpgrade StartReason = "upgrade" // an upgrade command onto another binary
	StartRecycle StartReason = "recycle" // replacing a worker past MaxRequests, MaxConnections, MaxMemory or MaxUptime
)

// ExitReason says why a worker exited (Event.Exit).
type ExitReason string

// Why a worker exited.
const (
	ExitCrash       ExitReason = "crash"        // it exited unasked
	ExitScaleDown   ExitReason = "scale-down"   // TTOU, or a command stopping it
	ExitShutdown    ExitReason = "shutdown"     // graceful shutdown
	ExitKilled      ExitReason = "killed"       // killed by the master (ShutdownTimeout, INT)
	ExitRestart     ExitReason = "restart"      // replaced by a rolling restart
	ExitUpgrade     ExitReason = "upgrade"      // replaced by an upgrade, or drained after a new master took over (USR2)
	ExitRecycle     ExitReason = "recycle"      // replaced after MaxRequests, MaxConnections, MaxMemory or MaxUptime
	ExitTimeout     ExitReason = "timeout"      // killed: did not answer the heartbeat within Timeout
	ExitBootTimeout ExitReason = "boot-timeout" // killed: not ready within BootTimeout
)

// Failed reports whether an exit counts against the slot's restart
// budget: the worker crashed, hung, or never became ready.
func (r ExitReason) Failed() bool {
	return r == ExitCrash || r == ExitTimeout || r == ExitBootTimeout
}

// Phase is where a rolling restart or an upgrade is (EventRoll,
// EventUpgrade).
type Phase string

// The phases of rolls and upgrades.
const (
	PhaseBegan      Phase = "began"
	PhaseDone       Phase = "done"        // a roll: every worker replaced; Took says how long it took
	PhaseFailed     Phase = "failed"      // Err says why; the workers not replaced keep serving
	PhaseHandedOver Phase = "handed over" // an upgrade: the new master took over; this one drains
)

// Event is one thing the master did or saw. Fields that do not apply to
// the kind are zero.
type Event struct {
	Time time.Time
	Kind EventKind
	PID  int // the worker's pid (worker events), or the new master's (EventUpgrade)
	Slot int // the worker's slot (worker and slot events)
	// Group is the worker group of the worker or slot (worker and slot
	// events): Supervise's program's name, "main" (Serve, Run), or a
	// WorkerGroup's Name.
	Group string

	Start  StartReason   // EventForked
	Exit   ExitReason    // EventExited
	Status int           // EventExited: exit status, -1 when a signal ended it
	Delay  time.Duration // EventExited after a crash: the wait before the slot's next worker

	// Signal is the signal received (EventSignal), the one that ended the
	// worker (EventExited), or the one that began the shutdown
	// (EventShutdown; nil when a command did).
	Signal os.Signal

	// Workers is the number of worker slots after the event (EventScaled),
	// the workers a roll will replace (EventRoll began) or has replaced
	// (done, failed).
	Workers int

	// Addr and Monitor are the listening addresses of the application and
	// of the monitor ("" when off) (EventListening).
	Addr, Monitor string

	Phase    Phase         // EventRoll, EventUpgrade
	Took     time.Duration // EventRoll done, EventUpgrade handed over
	Err      error         // EventRoll and EventUpgrade failed, EventGaveUp
	Disabled bool          // EventMonitor: out of rotation (true) or back in

	// Topic and Data are a worker's report (EventReport), as its Report
	// function made it. A worker's last report comes before its
	// EventExited, and holds what it did up to its exit.
	Topic string
	Data  []byte
}

// emit records e. The master logs it and hands it to OnEvent and the
// extensions once the state it reports has been published (see flush), so
// that whoever hears of an event finds it in Status.
func (m *master) emit(e Event) {
	e.Time = time.Now()
	m.events = append(m.events, e)
}

// flush logs the events emitted since the last flush and queues them for
// delivery. The loop calls it after publish.
func (m *master) flush() {
	for _, e := range m.events {
		if e.Kind != EventReport {
			m.logEvent(e)
			m.remember(e)
		}
	}
	m.delivery.push(m.events)
	m.events = m.events[:0]
}

// commit publishes the state and then reports the events that led to it.
func (m *master) commit() {
	m.publish()
	m.flush()
}

func (m *master) logEvent(e Event) {
	level, attrs := slog.LevelInfo, []any{"event", string(e.Kind)}
	switch e.Kind {
	case EventListening:
		attrs = append(attrs, "addr", e.Addr, "monitor", e.Monitor, "workers", len(m.slots), "master", os.Getpid())
	case EventSignal:
		attrs = append(attrs, "signal", signalName(e.Signal))
	case EventScaled:
		attrs = append(attrs, "workers", e.Workers)
	case EventShutdown:
		reason := "command"
		if e.Signal != nil {
			reason = signalName(e.Signal)
		}
		attrs = append(attrs, "reason", reason)
	case EventMonitor:
		reason := "enabled"
		if e.Disabled {
			reason = "disabled"
		}
		attrs = append(attrs, "reason", reason)
	case EventRoll:
		attrs = append(attrs, "reason", e.phaseText(), "workers", e.Workers)
	case EventUpgrade:
		attrs = append(attrs, "reason", e.phaseText(), "new_master", e.PID)
	case EventGaveUp:
		level = slog.LevelError
		attrs = append(attrs, "slot", e.Slot, "reason", e.Err.Error())
	case EventForked, EventReady, EventExited:
		if len(m.groups) > 1 { // which program, when there are several
			attrs = append(attrs, "group", e.Group)
		}
	}
	switch e.Kind {
	case EventForked:
		attrs = append(attrs, "pid", e.PID, "slot", e.Slot, "reason", string(e.Start))
	case EventReady:
		attrs = append(attrs, "pid", e.PID, "slot", e.Slot)
	case EventExited:
		attrs = append(attrs, "pid", e.PID, "slot", e.Slot, "reason", string(e.Exit), "status", e.Status)
		if e.Signal != nil {
			attrs = append(attrs, "signal", signalName(e.Signal))
		}
		if e.Delay > 0 {
			level = slog.LevelWarn
			attrs = append(attrs, "restart_in", e.Delay.String())
		}
	}
	m.log.Log(context.Background(), level, "flock: "+string(e.Kind), attrs...)
}

// phaseText is how a roll's or an upgrade's phase reads in the logs:
// "began", "done in 11ms", "failed: why", "handed over".
func (e Event) phaseText() string {
	switch e.Phase {
	case PhaseDone:
		return "done in " + e.Took.Round(time.Millisecond).String()
	case PhaseFailed:
		return "failed: " + e.Err.Error()
	}
	return string(e.Phase)
}

// delivery hands events to Options.OnEvent and the extensions, in order,
// on a goroutine of its own: a callback may then call the Controller
// (which waits for the master's goroutine) without a deadlock, and a slow
// one delays only the events after it, never the master.
type delivery struct {
	to []func(Event)

	mu     sync.Mutex
	queue  []Event
	closed bool
	wake   chan struct{} // one pending wake-up
	done   chan struct{} // closed once everything queued before close is delivered
}

func newDelivery(to []func(Event)) *delivery {
	d := &delivery{to: to, wake: make(chan struct{}, 1), done: make(chan struct{})}
	go d.run()
	return d
}

func (d *delivery) push(es []Event) {
	if len(es) == 0 || len(d.to) == 0 {
		return
	}
	d.mu.Lock()
	d.queue = append(d.queue, es...)
	d.mu.Unlock()
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

func (d *delivery) run() {
	defer close(d.done)
	for {
		d.mu.Lock()
		batch, closed := d.queue, d.closed
		d.queue = nil
		d.mu.Unlock()
		for _, e := range batch {
			for _, fn := range d.to {
				fn(e)
			}
		}
		if closed && len(batch) == 0 {
			return
		}
		if len(batch) == 0 {
			<-d.wake
		}
	}
}

// close delivers what is queued and stops, waiting at most d for the
// callbacks: a stuck callback must not keep Serve from returning.
func (d *delivery) close(wait time.Duration) bool {
	d.mu.Lock()
	d.closed = true
	d.mu.Unlock()
	select {
	case d.wake <- struct{}{}:
	default:
	}
	select {
	case <-d.done:
		return true
	case <-time.After(wait):
		return false
	}
}
