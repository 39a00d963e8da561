package flock

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"os"
	"time"
)

// A roll replaces the workers of a list of slots, a few at a time, each
// replacement gated on the new worker's readiness: the new worker starts
// on the slot's socket beside the old one, which drains only once the new
// one is ready. The first replacement that fails stops the roll; the
// workers not yet replaced keep serving. HUP, the restart and upgrade
// commands and recycling all go through here, one roll at a time: a roll
// asked for while another runs waits for it.
type roll struct {
	kind   rollKind
	bin    *binary       // what the new workers start from
	queue  []*slot       // slots still to replace
	expect *worker       // replace only if this is still the slot's worker (recycling, adoption)
	boot   time.Duration // each replacement's boot timeout; 0 means BootTimeout
	full   bool          // every slot (queue and width are set when it starts); once it succeeds, new slots start from bin too
	width  int           // replacements at once
	result chan<- rollResult

	active   int // replacements booting
	replaced int
	err      error
	began    time.Time
}

type rollResult struct {
	replaced int
	err      error
}

type rollKind int

const (
	rollRestart rollKind = iota // HUP, the restart command
	rollUpgrade                 // the upgrade command
	rollRecycle                 // MaxRequests, MaxConnections, MaxMemory, MaxUptime
)

func (k rollKind) start() StartReason {
	return [...]StartReason{StartRestart, StartUpgrade, StartRecycle}[k]
}

func (k rollKind) exit() ExitReason {
	return [...]ExitReason{ExitRestart, ExitUpgrade, ExitRecycle}[k]
}

// quiet rolls are the master's own housekeeping: no roll events, nothing
// told to systemd.
func (k rollKind) quiet() bool { return k == rollRecycle }

// ErrNotReady is in the error of a roll that stopped because a new worker
// did not become ready; ErrBootTimeout too when it timed out.
var (
	ErrNotReady    = errors.New("a new worker did not become ready")
	ErrBootTimeout = errors.New("not ready within its boot timeout")
)

// rollAll replaces every worker, 1 + floor(n × RestartConcurrencyRatio) at
// a time, from the file now at os.Executable() (what a deploy replaces),
// pinned now.
func (m *master) rollAll(kind rollKind, result chan<- rollResult) {
	exe, err := os.Executable()
	var bin *binary
	if err == nil {
		bin, err = m.pinBinary(exe, exe)
	}
	if err != nil {
		err = fmt.Errorf("%w: %w", ErrNotReady, err)
		m.log.Error("flock: rolling restart not started", "err", err)
		m.emit(Event{Kind: EventRoll, Phase: PhaseFailed, Err: err})
		if result != nil {
			result <- rollResult{err: err}
		}
		return
	}
	m.startRoll(&roll{kind: kind, bin: bin, full: true, result: result})
}

// liveSlots are the slots that are not going away.
func (m *master) liveSlots() []*slot {
	var out []*slot
	for _, s := range m.slots {
		if s.state != slotRetiring {
			out = append(out, s)
		}
	}
	return out
}

// rollWidth is how many of n workers a roll replaces at once:
// 1 + floor(n × ratio), as node-cluster-service's restartConcurrencyRatio.
func rollWidth(n int, ratio float64) int {
	return 1 + int(math.Floor(float64(n)*ratio))
}

func (m *master) startRoll(r *roll) {
	if m.roll != nil {
		m.queueRoll(r)
		return
	}
	r.began = time.Now()
	m.roll = r
	if r.full { // the slots of now, not of when it was asked for
		r.queue = m.liveSlots()
		r.width = rollWidth(len(r.queue), m.c.RestartConcurrencyRatio)
	}
	if !r.kind.quiet() {
		sdNotify("RELOADING=1")
		m.emit(Event{Kind: EventRoll, Phase: PhaseBegan, Workers: len(r.queue)})
	}
	m.rollMore()
}

// queueRoll puts r after the rolls waiting. Signals can come faster than
// rolls end: a HUP while another waits replaces it (one roll onto the
// newest binary does what both would), so waiting HUPs never pile up.
func (m *master) queueRoll(r *roll) {
	if r.full && r.result == nil {
		for i, p := range m.pending {
			if p.full && p.result == nil && p.kind == r.kind {
				m.pending[i] = r
				return
			}
		}
	}
	m.pending = append(m.pending, r)
}

// rollMore starts replacements up to the roll's width, and ends the roll
// when nothing is left to start or to wait for.
func (m *master) rollMore() {
	r := m.roll
	for r.err == nil && r.active < r.width && len(r.queue) > 0 {
		s := r.queue[0]
		r.queue = r.queue[1:]
		switch {
		case s.state != slotActive && s.state != slotBackoff && s.state != slotGaveUp:
			continue // going, gone, or already being replaced
		case r.expect != nil && s.w != r.expect:
			continue
		}
		if err := m.replace(s, r); err != nil {
			r.fail(err)
			break
		}
		r.active++
	}
	if r.active > 0 || (r.err == nil && len(r.queue) > 0) {
		return
	}
	m.roll = nil
	if r.err == nil && r.full {
		m.bin = r.bin
	}
	m.finishRoll(r)
	for m.roll == nil && len(m.pending) > 0 && m.state == running {
		next := m.pending[0]
		m.pending = m.pending[1:]
		m.startRoll(next)
	}
}

// replace starts the new worker of slot s for roll r: beside its worker,
// or, when it has none (waiting to be re-forked, or given up), in its place.
func (m *master) replace(s *slot, r *roll) error {
	revive := s.state != slotActive
	if revive && s.socks == nil { // given up: it needs sockets again
		socks, err := m.bindSlot(s.g)
		if err != nil {
			return fmt.Errorf("slot %d: %w", s.id, err)
		}
		s.socks = socks
	}
	w, err := m.spawn(s, r.bin, cmp.Or(r.boot, m.c.BootTimeout))
	if err != nil {
		if s.state == slotGaveUp {
			s.closeSockets()
		}
		m.log.Error("flock: cannot start worker", "slot", s.id, "exe", r.bin.String(), "err", err)
		return fmt.Errorf("slot %d: cannot start %s: %w", s.id, r.bin, err)
	}
	w.roll, w.start = r, r.kind.start()
	if revive {
		if s.state == slotGaveUp {
			s.failures = nil
		}
		s.stopRestart()
		s.w = w
		s.to(slotActive)
	} else {
		s.next = w
		s.to(slotReplacing)
	}
	m.emit(Event{Kind: EventForked, PID: w.p.Pid(), Slot: s.id, Group: s.g.name, Start: r.kind.start()})
	return nil
}

// rollStep hears how one replacement ended: ready (it replaced), failed
// (err), or neither (its slot was retired meanwhile).
func (m *master) rollStep(r *roll, ready *worker, err error) {
	r.active--
	switch {
	case ready != nil:
		r.replaced++
	case err != nil:
		r.fail(err)
	}
	if m.roll == r {
		m.rollMore()
	}
}

func (r *roll) fail(err error) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: %w; the workers not yet replaced keep serving", ErrNotReady, err)
	}
}

func (m *master) finishRoll(r *roll) {
	if !r.kind.quiet() {
		if r.err != nil {
			m.log.Error("flock: rolling restart stopped", "replaced", r.replaced, "err", r.err)
			m.emit(Event{Kind: EventRoll, Phase: PhaseFailed, Err: r.err, Workers: r.replaced})
		} else {
			m.emit(Event{Kind: EventRoll, Phase: PhaseDone, Took: time.Since(r.began), Workers: r.replaced})
			sdNotify("READY=1")
		}
	}
	r.report()
}

func (r *roll) report() {
	if r.result != nil {
		r.result <- rollResult{r.replaced, r.err}
		r.result = nil
	}
}

// abortRolls ends the current and pending rolls (shutdown): whoever waits
// for them hears err.
func (m *master) abortRolls(err error) {
	rolls := m.pending
	if m.roll != nil {
		rolls = append([]*roll{m.roll}, rolls...)
	}
	m.roll, m.pending = nil, nil
	for _, r := range rolls {
		r.err = errors.Join(r.err, err)
		r.report()
	}
}
