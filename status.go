package flock

import (
	"cmp"
	"math"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Status describes the master and its workers: the monitor's JSON answer
// to GET /, and Controller.Status.
type Status struct {
	PID     int            `json:"pid"`
	Started time.Time      `json:"started"`
	ECV     string         `json:"ecv"`
	State   MasterState    `json:"state"`
	Addr    string         `json:"addr"`      // the main listener's (Addr)
	Listens []Listener     `json:"listeners"` // every listener, with its address as bound
	Groups  []string       `json:"groups"`    // the worker groups: the first is Addr's, the signals' one
	Queues  []Queue        `json:"queues"`    // each listener's accept queues, read when asked
	Backoff int            `json:"backoff"`   // slots waiting out a crash's back-off before their next worker
	Rolling bool           `json:"rolling"`   // a rolling restart (HUP, restart, recycling) is under way
	Recent  []Recent       `json:"recent"`    // the last events, oldest first
	Binary  Binary         `json:"binary"`    // what new workers start from
	Build   BuildInfo      `json:"build"`
	Workers []WorkerStatus `json:"workers"`
}

// Queue is a listener's accept queues, summed over its sockets (one per
// slot, and the spares): connections the kernel has accepted that no
// worker has taken yet, and the most it will hold (the backlogs) before
// it drops new ones. Read from TCP_INFO when Status is asked for.
type Queue struct {
	Listener string `json:"listener"`
	Queued   int    `json:"queued"`
	Max      int    `json:"max"`
}

// BuildInfo is what the program was built from, as runtime/debug reads it
// (cluster2's monitor showed the application's dependencies).
type BuildInfo struct {
	Path     string `json:"path"`               // the main module
	Version  string `json:"version"`            // its version: "(devel)" when built from a checkout
	Go       string `json:"go"`                 // the Go version that built it
	Revision string `json:"revision,omitempty"` // the VCS revision, when built from a repository
	Time     string `json:"time,omitempty"`     // the revision's time
	Modified bool   `json:"modified,omitempty"` // the checkout had uncommitted changes
}

// build is read once: it never changes while the program runs.
var build = sync.OnceValue(func() BuildInfo {
	b := BuildInfo{Go: runtime.Version()}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return b
	}
	b.Path, b.Version = bi.Main.Path, bi.Main.Version
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			b.Revision = s.Value
		case "vcs.time":
			b.Time = s.Value
		case "vcs.modified":
			b.Modified = s.Value == "true"
		}
	}
	return b
})

// MasterState is where the master is in its life.
type MasterState string

// The master's states.
const (
	MasterRunning  MasterState = "running"
	MasterDraining MasterState = "draining" // graceful shutdown, waiting out DrainDelay
	MasterStopping MasterState = "stopping" // workers told to stop; waiting for their exits
)

// WorkerStatus describes one worker. The counts are as the worker last
// reported them: every second at most, while it serves.
type WorkerStatus struct {
	PID     int         `json:"pid"`
	ID      int         `json:"id"` // fork order from 1, as node-cluster-service numbers workers
	Slot    int         `json:"slot"`
	Group   string      `json:"group"` // its worker group: Supervise's program's name, or "main" (Serve, Run)
	State   WorkerState `json:"state"`
	Started time.Time   `json:"started"`
	Binary  Binary      `json:"binary"`            // what it runs (for Supervise, the program, without ID)
	Message string      `json:"message,omitempty"` // what it last said it is doing (sd_notify STATUS=)

	Requests        int64   `json:"requests"`        // served since it started
	Connections     int64   `json:"connections"`     // accepted since it started
	ConnectionsOpen int64   `json:"connectionsOpen"` // open now
	AvgRequests     float64 `json:"avgRequests"`     // per second, smoothed as node-cluster-service does
	AvgConnections  float64 `json:"avgConnections"`  // per second, likewise
	RSS             int64   `json:"rss"`             // resident memory in bytes, read from /proc when asked
	HeapTotal       int64   `json:"heapTotal"`       // Go heap held by the runtime, in bytes
	HeapUsed        int64   `json:"heapUsed"`        // of which live objects
}

// rates are node-cluster-service's smoothed per-second rates: each
// second, avg = (the second's count + 2·avg) / 3. A worker reports at most
// once a second and only while it serves: its silent seconds count as 0.
type rates struct {
	requests, conns float64 // as of at
	last            counts
	at              time.Time
}

func (r *rates) update(c counts, now time.Time) {
	if !r.at.IsZero() {
		silent := max(0, math.Round(now.Sub(r.at).Seconds())-1)
		r.requests = (float64(c.Requests-r.last.Requests) + 2*decay(r.requests, silent)) / 3
		r.conns = (float64(c.Connections-r.last.Connections) + 2*decay(r.conns, silent)) / 3
	}
	r.last, r.at = c, now
}

// now is what the averages are after the silent seconds since the last
// report.
func (r rates) now(now time.Time) (requests, conns float64) {
	silent := math.Floor(now.Sub(r.at).Seconds())
	return decay(r.requests, silent), decay(r.conns, silent)
}

func decay(avg, seconds float64) float64 { return avg * math.Pow(2.0/3, seconds) }

// WorkerState is a worker's state as Status shows it.
type WorkerState string

// The worker states Status shows.
const (
	WorkerStarting WorkerState = "starting" // booting: Init has not returned, or it does not listen yet
	WorkerReady    WorkerState = "ready"    // accepting connections
	WorkerStopping WorkerState = "stopping" // draining, or killed and about to exit
)

// snapshot is what the master's state looks like from other goroutines:
// rebuilt by the loop after every event, never modified once published.
type snapshot struct {
	state    masterState
	disabled bool
	bin      Binary
	ready    int // slots whose worker is ready
	backoff  int // slots waiting out a crash's back-off
	rolling  bool
	workers  []workerSnap
	groups   []string   // they change when an extension adds one (AddGroup)
	listens  []Listener // with each address as bound
}

// workerSnap is a worker's status without what is read when asked: RSS,
// and the averages, which decay while the worker is silent.
type workerSnap struct {
	WorkerStatus
	rates rates
}

func (s masterState) public() MasterState {
	return [...]MasterState{MasterRunning, MasterDraining, MasterStopping}[s]
}

func (m *master) publish() {
	s := &snapshot{state: m.state, disabled: m.disabled, bin: m.bin.public(), rolling: m.roll != nil, groups: m.groupNames()}
	for _, a := range m.addrs {
		s.listens = append(s.listens, Listener{Name: a.name, Addr: a.String()})
	}
	for _, sl := range m.slots {
		if sl.state == slotBackoff {
			s.backoff++
		}
	}
	for _, w := range m.workers {
		st := WorkerStarting
		switch w.state {
		case workerReady:
			st = WorkerReady
			if w.slot.w == w && w.slot.g == m.groups[0] { // the service's port's
				s.ready++
			}
		case workerStopping, workerKilled:
			st = WorkerStopping
		}
		bin := w.bin.public()
		if w.program != "" {
			bin = Binary{Path: w.program}
		}
		s.workers = append(s.workers, workerSnap{WorkerStatus{PID: w.p.Pid(), ID: w.seq, Slot: w.slot.id, Group: w.slot.g.name, State: st,
			Started: w.started, Binary: bin, Message: w.message, Requests: w.counts.Requests, Connections: w.counts.Connections,
			ConnectionsOpen: w.counts.Open, HeapTotal: w.counts.HeapTotal, HeapUsed: w.counts.HeapUsed}, w.rates})
	}
	slices.SortFunc(s.workers, func(a, b workerSnap) int { return cmp.Or(a.Slot-b.Slot, a.Started.Compare(b.Started)) })
	m.snap.Store(s)
}

// status is the published snapshot, with mon's ECV state and each
// worker's RSS read now. It runs on other goroutines: it reads only the
// snapshot and what never changes.
func (m *master) status(mon *monitor) Status {
	s := m.snap.Load()
	st := Status{PID: os.Getpid(), Started: m.started, ECV: mon.state(s), State: s.state.public(), Backoff: s.backoff, Rolling: s.rolling,
		Addr: s.listens[0].Addr, Groups: slices.Clone(s.groups), Listens: slices.Clone(s.listens), Binary: s.bin, Build: build(), Workers: make([]WorkerStatus, len(s.workers))}
	if r := m.recent.Load(); r != nil {
		st.Recent = *r
	}
	// The sockets are the loop's: read them there (not before it runs).
	m.call(func() { st.Queues = m.queues() })
	now := time.Now()
	for i, ws := range s.workers {
		ws.RSS = rss(ws.PID)
		ws.AvgRequests, ws.AvgConnections = ws.rates.now(now)
		st.Workers[i] = ws.WorkerStatus
	}
	return st
}

// rss is the resident set size of pid in bytes, 0 if unknown.
func rss(pid int) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseInt(f[1], 10, 64)
	return pages * int64(os.Getpagesize())
}
