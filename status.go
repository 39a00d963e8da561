package flock

import (
	"cmp"
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
	Addr    string         `json:"addr"`
	Binary  Binary         `json:"binary"` // what new workers start from
	Build   BuildInfo      `json:"build"`
	Workers []WorkerStatus `json:"workers"`
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

// WorkerStatus describes one worker.
type WorkerStatus struct {
	PID      int         `json:"pid"`
	Slot     int         `json:"slot"`
	State    WorkerState `json:"state"`
	Started  time.Time   `json:"started"`
	Requests int64       `json:"requests"` // served, as last reported (every second at most)
	RSS      int64       `json:"rss"`      // resident memory in bytes, read from /proc when asked
	Binary   Binary      `json:"binary"`   // what it runs
}

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
	workers  []WorkerStatus
}

func (s masterState) public() MasterState {
	return [...]MasterState{MasterRunning, MasterDraining, MasterStopping}[s]
}

func (m *master) publish() {
	s := &snapshot{state: m.state, disabled: m.disabled, bin: m.bin.public()}
	for _, w := range m.workers {
		st := WorkerStarting
		switch w.state {
		case workerReady:
			st = WorkerReady
			if w.slot.w == w {
				s.ready++
			}
		case workerStopping, workerKilled:
			st = WorkerStopping
		}
		s.workers = append(s.workers, WorkerStatus{PID: w.p.Pid(), Slot: w.slot.id, State: st, Started: w.started,
			Requests: w.counts.Requests, Binary: w.bin.public()})
	}
	slices.SortFunc(s.workers, func(a, b WorkerStatus) int { return cmp.Or(a.Slot-b.Slot, a.Started.Compare(b.Started)) })
	m.snap.Store(s)
}

// status is the published snapshot, with mon's ECV state and each
// worker's RSS read now. It runs on other goroutines: it reads only the
// snapshot and what never changes.
func (m *master) status(mon *monitor) Status {
	s := m.snap.Load()
	st := Status{PID: os.Getpid(), Started: m.started, ECV: mon.state(s), State: s.state.public(),
		Addr: m.listenAddr(), Binary: s.bin, Build: build(), Workers: make([]WorkerStatus, len(s.workers))}
	for i, ws := range s.workers {
		ws.RSS = rss(ws.PID)
		st.Workers[i] = ws
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
