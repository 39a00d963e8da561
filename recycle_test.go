package flock

import (
	"syscall"
	"testing"
	"time"

	"github.com/flockhq/flock/internal/flocktest"
	"github.com/stretchr/testify/assert"
)

// Recycling stops once a shutdown has begun: no worker is started during
// DrainDelay, though requests keep coming.
func TestNoRecycleWhileDraining(t *testing.T) {
	a := startApp(t, appSpec{Workers: 1, MaxRequests: 100, Drain: 1500 * time.Millisecond})
	a.Started(1)
	load := flocktest.StartLoad(t, a.URL("/"), 4, true)
	defer load.Stop()
	a.WaitFor("a recycle", 10*time.Second, func(r flocktest.Rec) bool {
		return r.Str("event") == "exited" && r.Str("reason") == string(ExitRecycle)
	})
	a.Signal(syscall.SIGTERM)
	assert.Equal(t, 0, a.ExitCode(10*time.Second))
	var draining bool
	for _, r := range a.Find(func(r flocktest.Rec) bool { return r.Str("event") != "" }) {
		switch {
		case r.Str("event") == "shutdown":
			draining = true
		case draining && r.Str("event") == "forked":
			t.Errorf("worker %d started during the shutdown (%s)", r.Int("pid"), r.Str("reason"))
		}
	}
}
