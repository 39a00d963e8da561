package flock

import (
	"errors"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/flockhq/flock/internal/flocktest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// testExtension calls the Controller from every place an extension can:
// Start, its Event callback and OnEvent. It logs what it got, and whether
// each worker it hears is ready shows as ready in Status.
type testExtension struct {
	log *slog.Logger
	ctl *Controller

	mu    sync.Mutex
	added map[string]bool
}

func (x *testExtension) Start(c *Controller) error {
	x.ctl, x.added = c, map[string]bool{}
	err := c.AddWorkers(1)
	x.log.Info("ext: add from Start", "event", "ext-start", "err", errText(err), "starting", errors.Is(err, ErrStarting))
	_, err = c.Listen("ext", "127.0.0.1:0")
	x.log.Info("ext: listen from Start", "event", "ext-listen", "err", errText(err))
	return nil
}

func (x *testExtension) Event(e Event)   { x.heard("Event", e) }
func (x *testExtension) onEvent(e Event) { x.heard("OnEvent", e) }
func (x *testExtension) Stop()           {}

// heard adds one worker from each callback on the first ready event, and
// checks every ready event against Status.
func (x *testExtension) heard(from string, e Event) {
	if e.Kind != EventReady {
		return
	}
	st := x.ctl.Status()
	ready := slices.ContainsFunc(st.Workers, func(w WorkerStatus) bool { return w.PID == e.PID && w.State == WorkerReady })
	x.log.Info("ext: ready seen", "event", "ext-ready", "from", from, "pid", e.PID, "in_status", ready)
	x.mu.Lock()
	first := !x.added[from]
	x.added[from] = true
	x.mu.Unlock()
	if first {
		err := x.ctl.AddWorkers(1)
		x.log.Info("ext: add from callback", "event", "ext-add", "from", from, "err", errText(err))
	}
	if from == "Event" {
		_, err := x.ctl.Listen("late", "127.0.0.1:0")
		x.log.Info("ext: listen after Start", "event", "ext-late-listen", "err", errText(err))
	}
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// The Controller never deadlocks: from Start, a call that needs the loop
// is ErrStarting; from Event and OnEvent (delivered on a goroutine of their
// own) it works. Listen works in Start only. And an event is heard only
// once Status shows it.
func TestControllerFromEveryPlace(t *testing.T) {
	a := startApp(t, appSpec{Workers: 1, Extension: true})
	a.Started(3) // 1, plus one from Event, plus one from OnEvent
	start := a.WaitFor("Start's call", time.Second, func(r flocktest.Rec) bool { return r.Str("event") == "ext-start" })
	assert.Equal(t, true, start["starting"], "AddWorkers from Start: %s", start.Str("err"))
	listen := a.WaitFor("Start's Listen", time.Second, func(r flocktest.Rec) bool { return r.Str("event") == "ext-listen" })
	assert.Empty(t, listen.Str("err"), "Listen from Start works")
	adds := a.Events("ext-add")
	require.Len(t, adds, 2)
	for _, r := range adds {
		assert.Empty(t, r.Str("err"), "AddWorkers from %s", r.Str("from"))
	}
	late := a.WaitFor("a late Listen", time.Second, func(r flocktest.Rec) bool { return r.Str("event") == "ext-late-listen" })
	assert.Equal(t, ErrNotInStart.Error(), late.Str("err"))
	a.WaitUntil("every ready event heard twice", 5*time.Second, func() bool { return len(a.Events("ext-ready")) == 6 })
	for _, r := range a.Events("ext-ready") {
		assert.Equal(t, true, r["in_status"], "%s heard pid %d ready before Status showed it", r.Str("from"), r.Int("pid"))
	}
}
