package flock

import (
	"slices"
	"time"
)

// Scaling: TTIN adds a slot, TTOU (and the stop command) retire one.

func (m *master) addSlot() {
	s, err := m.newSlot()
	if err != nil {
		m.log.Error("flock: TTIN failed", "err", err)
		return
	}
	m.emit(Event{Kind: EventScaled, Workers: m.activeSlots()})
	m.fork(s, StartScale)
}

// removeSlot takes one slot away: preferably one with no worker (given
// up, or waiting to be re-forked), otherwise the oldest worker's.
func (m *master) removeSlot() {
	if m.activeSlots() <= 1 {
		m.log.Info("flock: TTOU ignored: never fewer than one worker")
		return
	}
	var victim *slot
	for _, s := range m.slots {
		if s.state == slotRetiring {
			continue
		}
		w := s.serving()
		if w == nil {
			victim = s
			break
		}
		if victim == nil || w.seq < victim.serving().seq {
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
