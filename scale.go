package flock

import (
	"log/slog"
	"slices"
	"time"
)

// Scaling: TTIN adds a slot, TTOU (and the stop command) retire one.

// addSlot adds a slot to g and starts its worker. During a roll of every
// worker it starts from the roll's binary and the roll waits for it too,
// so that after a roll every worker runs the same binary.
func (m *master) addSlot(g *group) error {
	need := fdsToStart + len(m.addrs) - len(m.spares) // and its sockets, but for spares
	if need < fdsToStart {
		need = fdsToStart
	}
	err := checkFDs("one more worker", need)
	var s *slot
	if err == nil {
		s, err = m.newSlot(g)
	}
	if err != nil {
		m.quiet.log(m.log, slog.LevelError, "ttin", "flock: cannot add a worker", "err", err)
		return err
	}
	m.emit(Event{Kind: EventScaled, Workers: m.activeSlots()})
	r := m.roll
	if r == nil || !r.full {
		m.fork(s, StartScale)
		return nil
	}
	s.bin = r.bin
	if m.fork(s, StartScale); s.w != nil {
		s.w.roll = r
		r.active++
	}
	return nil
}

// removeSlot takes one slot away: preferably one with no worker (given
// up, or waiting to be re-forked), otherwise the oldest worker's.
func (m *master) removeSlot() {
	g := m.groups[0]
	if m.groupSlots(g) <= 1 {
		m.log.Info("flock: TTOU ignored: never fewer than one worker")
		return
	}
	m.retireSlot(m.oldestSlot(g), m.c.ShutdownTimeout)
	m.emit(Event{Kind: EventScaled, Workers: m.activeSlots()})
}

// retireSlot takes slot s away: its worker, and a replacement booting
// beside it, drain within timeout; its socket is retired; the slot goes
// once both have exited.
func (m *master) retireSlot(s *slot, timeout time.Duration) {
	s.stopRestart()
	s.to(slotRetiring)
	m.retireSocket(s)
	if s.w == nil && s.next == nil {
		m.dropSlot(s)
		return
	}
	for _, w := range []*worker{s.w, s.next} {
		if w != nil {
			m.stopWorker(w, ExitScaleDown, timeout)
		}
	}
}

// dropSlot forgets a retired slot whose workers have all exited.
func (m *master) dropSlot(s *slot) {
	s.to(slotGone)
	m.slots = slices.DeleteFunc(m.slots, func(x *slot) bool { return x == s })
	close(s.gone)
}

// oldestSlot is the slot of g to remove first: one with no worker (given
// up, or between re-forks), else the one with the oldest worker.
func (m *master) oldestSlot(g *group) *slot {
	var victim *slot
	for _, s := range m.slots {
		if s.state == slotRetiring || s.g != g {
			continue
		}
		w := s.serving()
		if w == nil {
			return s
		}
		if victim == nil || w.seq < victim.serving().seq {
			victim = s
		}
	}
	return victim
}
