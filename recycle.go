package flock

import (
	"fmt"
	"math/rand/v2"
	"time"
)

// Recycling replaces a worker for its own good (leaks, fragmentation):
// every criterion is here, and every trigger (a count reported, the uptime
// timer, the memory check) ends in checkRecycle.

// limits are one worker's recycling thresholds. Each gets a jitter of up
// to 10 % so that workers started together do not recycle together.
// MaxMemory has none: memory is what it is.
type limits struct {
	requests int64
	conns    int64
	uptime   time.Duration
	memory   int64
}

func (m *master) newLimits() limits {
	return limits{
		requests: jitter(int64(m.c.MaxRequests)),
		conns:    jitter(int64(m.c.MaxConnections)),
		uptime:   time.Duration(jitter(int64(m.c.MaxUptime))),
		memory:   m.c.MaxMemory,
	}
}

// jitter is n plus up to 10 %; 0 stays 0 (no limit).
func jitter(n int64) int64 {
	if n <= 0 {
		return 0
	}
	return n + rand.Int64N(n/10+1)
}

// due says why w should be recycled now, or "".
func (m *master) due(w *worker) string {
	switch l := w.limits; {
	case l.requests > 0 && w.counts.Requests >= l.requests:
		return fmt.Sprintf("served %d requests (MaxRequests %d with jitter)", w.counts.Requests, m.c.MaxRequests)
	case l.conns > 0 && w.counts.Connections >= l.conns:
		return fmt.Sprintf("accepted %d connections (MaxConnections %d with jitter)", w.counts.Connections, m.c.MaxConnections)
	case l.uptime > 0 && time.Since(w.started) >= l.uptime:
		return fmt.Sprintf("up for %v (MaxUptime %v with jitter)", l.uptime, m.c.MaxUptime)
	case l.memory > 0 && w.rss > l.memory:
		return fmt.Sprintf("RSS %d bytes above MaxMemory %d", w.rss, m.c.MaxMemory)
	}
	return ""
}

// checkRecycle recycles w if it is due: a replacement from the slot's
// binary, readiness-gated, when nothing else is replacing it and the
// master is running. A worker is asked once: its limits are cleared, so a
// replacement that fails leaves it serving.
func (m *master) checkRecycle(w *worker) {
	why := m.due(w)
	s := w.slot
	if why == "" || m.state != running || w.state != workerReady || s.w != w || s.state != slotActive {
		return
	}
	w.limits = limits{}
	m.log.Info("flock: recycling worker", "pid", w.p.Pid(), "slot", s.id, "why", why)
	m.startRoll(&roll{kind: rollRecycle, bin: s.bin, queue: []*slot{s}, expect: w, width: 1})
}

// armUptime starts w's MaxUptime timer, once it is ready.
func (m *master) armUptime(w *worker) {
	if w.limits.uptime > 0 {
		w.uptime = m.after(w.limits.uptime-time.Since(w.started), func() {
			if m.workers[w.p] == w {
				m.checkRecycle(w)
			}
		})
	}
}

// checkMemory reads every ready worker's RSS and recycles those above
// MaxMemory; it runs every 2 s, only when MaxMemory is set.
func (m *master) checkMemory() {
	for _, w := range m.workers {
		if w.state == workerReady {
			w.rss = rss(w.p.Pid())
			m.checkRecycle(w)
		}
	}
	m.after(memoryCheckInterval, m.checkMemory)
}

const memoryCheckInterval = 2 * time.Second
