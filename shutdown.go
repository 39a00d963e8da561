package flock

import (
	"errors"
	"os"
	"syscall"
	"time"
)

// Stopping workers and the whole service.

// ErrShuttingDown is the error of a request the master refuses because it
// is shutting down (or handing over to a new master).
var ErrShuttingDown = errors.New("flock: shutting down")

// shutdown begins a graceful shutdown: the monitor answers DISABLED at once
// (the state is no longer running); after DrainDelay the workers drain.
// sig is the signal that asked for it, nil for a command.
func (m *master) shutdown(sig os.Signal) {
	m.state = draining
	m.emit(Event{Kind: EventShutdown, Signal: sig})
	sdNotify("STOPPING=1")
	m.abortRolls(ErrShuttingDown)
	m.cancelUpgrade("shutting down")
	m.stopRestarts()
	m.after(m.c.DrainDelay, func() {
		if m.state == draining { // else INT came first
			m.stopAll(ExitShutdown)
		}
	})
}

// stopRestarts cancels pending re-forks: their slots stay empty.
func (m *master) stopRestarts() {
	for _, s := range m.slots {
		if s.state == slotBackoff {
			s.stopRestart()
			s.to(slotIdle)
		}
	}
}

// stopAll closes the master's copies of the sockets, so that once each
// worker has closed its own new connections are refused instead of queueing
// unserved, and tells every worker to drain.
func (m *master) stopAll(reason ExitReason) {
	m.state = stopping
	m.closeSockets()
	for _, w := range m.workers {
		m.stopWorker(w, reason, m.stopTimeout)
	}
}

// killAll stops at once (INT): every worker is killed.
func (m *master) killAll() {
	if m.state == stopping && errors.Is(m.err, ErrInterrupted) {
		return
	}
	if m.state != running {
		m.log.Warn("flock: INT during graceful shutdown: killing every worker now")
	}
	m.state, m.err = stopping, ErrInterrupted
	m.emit(Event{Kind: EventShutdown, Signal: syscall.SIGINT})
	m.abortRolls(ErrInterrupted)
	m.cancelUpgrade("interrupted")
	m.closeSockets()
	m.stopRestarts()
	for _, w := range m.workers {
		m.killWorker(w, ExitKilled)
	}
}

// stopWorker asks w to drain and exit, and kills it if it is still there
// after timeout.
func (m *master) stopWorker(w *worker, reason ExitReason, timeout time.Duration) {
	if w.going() {
		return
	}
	w.to(workerStopping)
	w.exit = reason
	stopTimer(w.timer, w.uptime)
	w.p.Stop()
	w.kill = m.after(timeout, func() {
		if m.workers[w.p] == w && w.state == workerStopping {
			m.log.Warn("flock: worker still running after its shutdown timeout; killing it", "pid", w.p.Pid(), "slot", w.slot.id, "timeout", timeout)
			m.killWorker(w, ExitKilled)
		}
	})
}

// killWorker sends w SIGKILL; reason is its exit reason.
func (m *master) killWorker(w *worker, reason ExitReason) {
	if w.state == workerKilled {
		return
	}
	w.to(workerKilled)
	w.exit = reason
	stopTimer(w.timer, w.uptime)
	w.p.Kill()
}
