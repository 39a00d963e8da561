package flock

import (
	"fmt"
	"os"
	"slices"
	"time"
)

// A slot is one place for a worker: its SO_REUSEPORT socket outlives the
// worker, so connections queued on it wait for the replacement. The master
// moves a slot between the states below and nowhere else; what a state
// needs (the worker, its replacement, the re-fork timer) is set with it.
type slot struct {
	id       int
	g        *group
	state    slotState
	socks    []*os.File  // one per listener, nil for the other groups'; nil once given up or retired
	w        *worker     // the worker serving the slot (active, replacing, retiring)
	next     *worker     // its replacement, while that boots (replacing, retiring)
	bin      *binary     // what the slot's workers start from: its last ready worker's
	failures []time.Time // crash times within the last minute
	restart  *time.Timer // the re-fork (backoff)
	gone     chan struct{}
}

type slotState int

const (
	slotIdle      slotState = iota // no worker and none coming: new, or the master is stopping
	slotActive                     // its worker boots or serves
	slotReplacing                  // a replacement boots beside its worker (or in place of one that died meanwhile)
	slotBackoff                    // its worker failed; a re-fork is scheduled
	slotGaveUp                     // failed past RestartsPerMinute: socket closed, no re-fork; a roll revives it
	slotRetiring                   // TTOU or a stop command: its workers drain, then it goes
	slotGone                       // removed
)

var slotStateNames = [...]string{"idle", "active", "replacing", "backoff", "gave-up", "retiring", "gone"}

func (s slotState) String() string { return slotStateNames[s] }

// slotMoves are the transitions the master makes.
var slotMoves = map[slotState][]slotState{
	slotIdle:      {slotActive, slotBackoff, slotGaveUp, slotRetiring},
	slotActive:    {slotReplacing, slotBackoff, slotGaveUp, slotIdle, slotRetiring},
	slotReplacing: {slotActive, slotBackoff, slotGaveUp, slotIdle, slotRetiring},
	slotBackoff:   {slotActive, slotBackoff, slotGaveUp, slotIdle, slotRetiring},
	slotGaveUp:    {slotActive, slotIdle, slotRetiring},
	slotRetiring:  {slotGone},
}

func (s *slot) to(next slotState) {
	if !slices.Contains(slotMoves[s.state], next) {
		panic(fmt.Sprintf("flock: slot %d: no transition from %v to %v", s.id, s.state, next))
	}
	s.state = next
}

// serving is the worker that serves the slot or will: its worker, else
// the replacement booting in place of one that died.
func (s *slot) serving() *worker {
	if s.w != nil {
		return s.w
	}
	return s.next
}

func (s *slot) closeSockets() {
	closeFiles(s.socks)
	s.socks = nil
}

func (s *slot) stopRestart() {
	if s.restart != nil {
		s.restart.Stop()
		s.restart = nil
	}
}

// A worker is one worker process as the master sees it.
type worker struct {
	p       proc
	seq     int // fork order: orders workers by age
	slot    *slot
	bin     *binary
	program string // Supervise's program, as found when it started
	message string // what it last said it is doing (sd_notify STATUS=)
	state   workerState
	start   StartReason
	exit    ExitReason // why the master asked it to go; "" means it was not asked
	roll    *roll      // the roll it was started for, until it is ready or gone
	started time.Time
	spares  []*os.File // the spare sockets it accepts on too

	lastSeen time.Time // last message from the process
	pinged   time.Time // when the master last asked for a sign of life
	counts   counts    // as last reported
	rates    rates     // of requests and connections, smoothed
	limits   limits    // its recycling thresholds, jitter included
	rss      int64     // resident memory, when MaxMemory is checked

	timer  *time.Timer // boot timeout, then heartbeat deadline
	kill   *time.Timer // once asked to stop: ShutdownTimeout
	uptime *time.Timer // MaxUptime
}

type workerState int

const (
	workerBooting  workerState = iota // started; not ready yet
	workerReady                       // accepting connections
	workerStopping                    // asked to drain and exit; killed after its timeout
	workerKilled                      // sent SIGKILL; its exit is due
)

var workerStateNames = [...]string{"booting", "ready", "stopping", "killed"}

func (s workerState) String() string { return workerStateNames[s] }

var workerMoves = map[workerState][]workerState{
	workerBooting:  {workerReady, workerStopping, workerKilled},
	workerReady:    {workerStopping, workerKilled},
	workerStopping: {workerKilled},
}

func (w *worker) to(next workerState) {
	if !slices.Contains(workerMoves[w.state], next) {
		panic(fmt.Sprintf("flock: worker %d: no transition from %v to %v", w.p.Pid(), w.state, next))
	}
	w.state = next
}

// going reports whether the worker has been asked to go.
func (w *worker) going() bool {
	return w.state == workerStopping || w.state == workerKilled
}

func stopTimer(ts ...*time.Timer) {
	for _, t := range ts {
		if t != nil {
			t.Stop()
		}
	}
}
