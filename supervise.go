package flock

import (
	"fmt"
	"os"
	"slices"
	"time"
)

// Supervision: what the master does when a worker speaks, falls silent or
// exits, and how a failed slot is re-forked with back-off.

func (m *master) onProc(e procEvent) {
	w := m.workers[e.p]
	if w == nil {
		return
	}
	if e.kind == procExited {
		m.onExit(w, e.state)
		return
	}
	if e.kind != procSaid && e.kind != procStopping { // words, not signs of life
		w.lastSeen = time.Now()
	}
	switch e.kind {
	case procReady:
		m.onReady(w)
	case procCounts:
		w.counts = e.counts
		w.rates.update(e.counts, w.lastSeen)
		m.checkRecycle(w)
	case procSaid:
		w.message = e.text
	case procReport:
		m.emit(Event{Kind: EventReport, PID: w.p.Pid(), Slot: w.slot.id, Group: w.slot.g.name, Topic: e.text, Data: e.data})
	case procStopping:
		m.log.Info("flock: worker says it is stopping", "pid", w.p.Pid(), "slot", w.slot.id)
	case procHung:
		if !w.going() {
			m.log.Warn("flock: worker says it is stuck (WATCHDOG=trigger); killing it", "pid", w.p.Pid(), "slot", w.slot.id)
			m.killWorker(w, ExitTimeout)
		}
	}
}

// fork starts the worker of slot s, from the slot's binary. A failure to
// start counts as a crash.
func (m *master) fork(s *slot, why StartReason) {
	w, err := m.spawn(s, s.bin, m.c.BootTimeout)
	if err != nil {
		m.log.Error("flock: cannot start worker", "slot", s.id, "exe", exe(s.g, s.bin), "err", err)
		m.crashed(s, nil)
		return
	}
	s.w, w.start = w, why
	s.to(slotActive)
	m.emit(Event{Kind: EventForked, PID: w.p.Pid(), Slot: s.id, Group: s.g.name, Start: why})
}

func (m *master) onReady(w *worker) {
	if w.state != workerBooting {
		return
	}
	w.to(workerReady)
	stopTimer(w.timer)
	w.timer = nil
	if w.p.watched() {
		w.timer = m.after(m.c.Timeout, func() { m.heartbeat(w) })
	}
	m.armUptime(w)
	s := w.slot
	m.emit(Event{Kind: EventReady, PID: w.p.Pid(), Slot: s.id, Group: s.g.name})
	r := w.roll
	w.roll = nil
	if s.next == w { // a replacement: it takes the slot, the old one drains
		old := s.w
		s.w, s.next = w, nil
		if s.state == slotReplacing {
			s.to(slotActive)
		}
		if old != nil {
			m.stopWorker(old, r.kind.exit(), m.c.ShutdownTimeout)
		}
	}
	if s.w == w {
		s.bin = w.bin
	}
	if r != nil && w.start == r.kind.start() {
		m.rollStep(r, w, nil) // replaced
	} else if r != nil {
		m.rollStep(r, nil, nil) // joined it (TTIN): ready, but no worker was replaced
	}
	m.handoverIfReady()
}

// bootTimedOut kills a worker that did not become ready in boot; it counts
// as a failed start.
func (m *master) bootTimedOut(w *worker, boot time.Duration) {
	if m.workers[w.p] != w || w.state != workerBooting {
		return
	}
	m.log.Warn("flock: worker not ready within its boot timeout; killing it", "pid", w.p.Pid(), "slot", w.slot.id, "timeout", boot)
	m.killWorker(w, ExitBootTimeout)
}

// heartbeat runs when a worker has been silent for Timeout. It asks the
// worker for a sign of life first, and kills it only if that gets no answer
// either: a master that was itself suspended (SIGSTOP, laptop sleep) finds
// every worker silent when it resumes, though their messages are waiting.
func (m *master) heartbeat(w *worker) {
	if m.workers[w.p] != w || w.state != workerReady {
		return
	}
	now := time.Now()
	switch {
	case now.Sub(w.lastSeen) < m.c.Timeout:
		w.timer = m.after(m.c.Timeout-now.Sub(w.lastSeen), func() { m.heartbeat(w) })
	case w.pinged.IsZero() || w.lastSeen.After(w.pinged):
		w.pinged = now
		w.p.Ping()
		w.timer = m.after(min(m.c.Timeout, time.Second), func() { m.heartbeat(w) })
	default:
		m.log.Warn("flock: worker did not answer within Timeout; killing it", "pid", w.p.Pid(), "slot", w.slot.id, "timeout", m.c.Timeout)
		m.killWorker(w, ExitTimeout)
	}
}

func (m *master) onExit(w *worker, st *os.ProcessState) {
	delete(m.workers, w.p)
	m.c.removePID("worker", w.p.Pid())
	stopTimer(w.timer, w.kill, w.uptime)
	s := w.slot
	reason := w.exit
	if reason == "" {
		reason = ExitCrash
	}
	ev := Event{Kind: EventExited, PID: w.p.Pid(), Slot: s.id, Group: s.g.name, Exit: reason, Status: st.ExitCode(), Signal: signalOf(st)}
	r := w.roll
	w.roll = nil
	switch {
	case s.next == w: // a replacement that never became ready
		s.next = nil
	case s.w == w:
		s.w = nil
	default: // replaced, or its slot already gone
		m.emit(ev)
		return
	}
	switch {
	case s.state == slotRetiring:
		m.emit(ev)
		if s.w == nil && s.next == nil {
			m.dropSlot(s)
		}
	case s.w != nil || s.next != nil: // the other one serves the slot, or will
		if s.next == nil {
			s.to(slotActive)
		}
		m.emit(ev)
	case reason.Failed() && m.state == running:
		m.crashed(s, &ev)
	default:
		s.to(slotIdle)
		m.emit(ev)
	}
	if r != nil {
		var err error
		if s.state != slotRetiring {
			how := fmt.Errorf("exited (%v)", st)
			if reason == ExitBootTimeout {
				how = fmt.Errorf("timed out: %w", ErrBootTimeout)
			}
			err = fmt.Errorf("slot %d: new worker %d %w", s.id, w.p.Pid(), how)
		}
		m.rollStep(r, nil, err)
	}
}

// crashed records a failure of slot s and schedules its next worker, or
// gives up on the slot. exited, when set, is the exit event, emitted with
// the delay before the re-fork.
func (m *master) crashed(s *slot, exited *Event) {
	now := time.Now()
	s.failures = recentFailures(append(s.failures, now), now)
	if len(s.failures) > m.c.RestartsPerMinute {
		s.to(slotGaveUp)
		// Nobody will accept on this socket again: close it so the kernel
		// stops queueing connections on it.
		s.closeSockets()
		if exited != nil {
			m.emit(*exited)
		}
		m.emit(Event{Kind: EventGaveUp, Slot: s.id, Group: s.g.name, Err: fmt.Errorf("more than %d crashes within a minute (RestartsPerMinute); HUP tries again", m.c.RestartsPerMinute)})
		return
	}
	d := restartDelay(m.c.RestartDelay, len(s.failures))
	s.to(slotBackoff)
	s.restart = m.after(d, func() { m.refork(s) })
	if exited != nil {
		exited.Delay = d
		m.emit(*exited)
	}
}

func (m *master) refork(s *slot) {
	s.restart = nil
	if s.state == slotBackoff && m.state == running {
		m.fork(s, StartFailure)
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

// groupGone reports whether g has no worker and none coming.
func (m *master) groupGone(g *group) bool {
	for _, s := range m.slots {
		if s.g == g && (s.w != nil || s.next != nil || s.state == slotBackoff) {
			return false
		}
	}
	return true
}

func (m *master) gaveUpError() error {
	return fmt.Errorf("flock: no worker left: every slot crashed more than %d times within a minute (RestartsPerMinute)", m.c.RestartsPerMinute)
}
