package flock

import (
	"errors"
	"fmt"
	"math"
	"os"
	"time"
)

// roll replaces the workers of a list of slots, a few at a time, each
// replacement gated on the new worker's readiness. The first replacement
// that fails stops the roll; the workers not yet replaced keep serving.
// HUP, recycling and the command surface all go through here.
type roll struct {
	reason   string
	exe      string        // binary for the new workers
	queue    []*slot       // slots still to replace
	expect   *worker       // recycling: replace only if this is still the slot's worker
	boot     time.Duration // each replacement's boot timeout; 0 means BootTimeout
	quiet    bool          // recycling and spare adoption: no roll events, no sd_notify
	width    int           // replacements at once
	active   int
	replaced int
	err      error
	began    time.Time
	done     func(replaced int, err error) // may be nil
}

// rollAll replaces every worker, 1 + floor(n × RestartConcurrencyRatio) at
// a time, from the binary now at exe ("" means os.Executable(): the file on
// disk, which a deploy replaces). A roll asked for while another runs waits
// for it (a second HUP then rolls again, onto the newest binary).
func (m *master) rollAll(reason, exe string, done func(int, error)) {
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			m.log.Error("flock: cannot find the executable for a rolling restart", "err", err)
			if done != nil {
				done(0, err)
			}
			return
		}
	}
	var slots []*slot
	for _, s := range m.slots {
		if !s.removing {
			slots = append(slots, s)
		}
	}
	m.startRoll(&roll{reason: reason, exe: exe, queue: slots, width: rollWidth(len(slots), m.c.RestartConcurrencyRatio), done: done})
}

// rollWidth is how many of n workers a roll replaces at once:
// 1 + floor(n × ratio), as node-cluster-service's restartConcurrencyRatio.
func rollWidth(n int, ratio float64) int {
	return 1 + int(math.Floor(float64(n)*ratio))
}

// recycle replaces w alone, when no other replacement of it is under way.
func (m *master) recycle(w *worker, why string) {
	if w.recycling || w.stopReason != "" || w.slot.w != w {
		return
	}
	w.recycling = true
	m.log.Info("flock: recycling worker", "pid", w.pid, "slot", w.slot.id, "why", why)
	m.startRoll(&roll{reason: ReasonRecycle, exe: m.exe, queue: []*slot{w.slot}, expect: w, width: 1, quiet: true})
}

func (m *master) startRoll(r *roll) {
	if m.roll != nil {
		m.pending = append(m.pending, r)
		return
	}
	r.began = time.Now()
	m.roll = r
	if !r.quiet {
		sdNotify("RELOADING=1")
		m.emit(Event{Kind: EventRoll, Reason: "began", Workers: len(r.queue)})
	}
	m.rollMore()
}

func (m *master) rollMore() {
	r := m.roll
	for r.err == nil && r.active < r.width && len(r.queue) > 0 {
		s := r.queue[0]
		r.queue = r.queue[1:]
		if s.removing || s.next != nil || (r.expect != nil && s.w != r.expect) {
			continue // gone, or already being replaced
		}
		r.active++
		m.replace(s, r.reason, r.exe, orDefault(r.boot, m.c.BootTimeout), func(err error) {
			r.active--
			if err == nil {
				r.replaced++
			} else if r.err == nil {
				r.err = fmt.Errorf("%w: %v; the workers not yet replaced keep serving", ErrNotReady, err)
			}
			if m.roll == r {
				m.rollMore()
			}
		})
	}
	if r.active > 0 || (r.err == nil && len(r.queue) > 0) {
		return
	}
	m.roll = nil
	if r.err == nil && !r.quiet {
		m.exe = r.exe // crashed workers are re-forked from the new binary too
	}
	m.finishRoll(r)
	for m.roll == nil && len(m.pending) > 0 && m.state == running {
		next := m.pending[0]
		m.pending = m.pending[1:]
		m.startRoll(next)
	}
	m.adoptSpares()
}

func (m *master) finishRoll(r *roll) {
	if !r.quiet {
		if r.err != nil {
			m.log.Error("flock: rolling restart stopped", "replaced", r.replaced, "err", r.err)
			m.emit(Event{Kind: EventRoll, Reason: "failed: " + r.err.Error(), Workers: r.replaced})
		} else {
			m.emit(Event{Kind: EventRoll, Reason: fmt.Sprintf("done in %v", time.Since(r.began).Round(time.Millisecond)), Workers: r.replaced})
			sdNotify("READY=1")
		}
	}
	if r.done != nil {
		r.done(r.replaced, r.err)
	}
}

// abortRolls ends the current and pending rolls (shutdown): their callers
// hear err.
func (m *master) abortRolls(err error) {
	rolls := m.pending
	if m.roll != nil {
		rolls = append([]*roll{m.roll}, rolls...)
	}
	m.roll, m.pending = nil, nil
	for _, r := range rolls {
		r.err = errors.Join(r.err, err)
		if r.done != nil {
			r.done(r.replaced, r.err)
		}
	}
}
