package flock

import (
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/flockhq/flock/internal/flocktest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// servedReports is the test application's Reports: each worker reports
// how many "/" requests it answered; the master's extension sums the
// workers' last reports, those of exited workers included, and serves the
// sum at /served on the monitor.
type servedReports struct {
	mu   sync.Mutex
	last map[int]int // by pid, the last report
}

func (x *servedReports) Start(c *Controller) error {
	x.last = map[int]int{}
	return c.Handle("/served", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		x.mu.Lock()
		defer x.mu.Unlock()
		sum := 0
		for _, n := range x.last {
			sum += n
		}
		fmt.Fprint(w, sum)
	}))
}

func (x *servedReports) Event(e Event) {
	if e.Kind == EventReport && e.Topic == "served" {
		n, _ := strconv.Atoi(string(e.Data))
		x.mu.Lock()
		x.last[e.PID] = n
		x.mu.Unlock()
	}
}

func (x *servedReports) Stop() {}

// servedCounter counts a worker's answers to "/" and reports the count.
func servedCounter() func() {
	var n atomic.Int64
	Report("served", func() []byte { return []byte(strconv.FormatInt(n.Load(), 10)) })
	return func() { n.Add(1) }
}

// Every request a worker answered reaches the master in its reports, the
// last one sent after its drain: across a HUP and a TTOU under load, the
// sum of the workers' last reports is exactly the number of requests
// answered. The extension serves it on the monitor (Controller.Handle).
func TestReportsCountEveryRequest(t *testing.T) {
	a := startApp(t, appSpec{Workers: 3, Reports: true})
	a.Started(3)
	load := flocktest.StartLoad(t, a.URL("/"), 4, false)
	kept := flocktest.StartLoad(t, a.URL("/"), 4, true)
	load.WaitRequests(300)
	a.Signal(syscall.SIGHUP)
	a.WaitFor("the roll", 20*time.Second, func(r flocktest.Rec) bool { return r.Str("event") == "roll" && r.Str("reason") != "began" })
	a.SignalUntil(syscall.SIGTTOU, "a worker fewer", func(r flocktest.Rec) bool { return r.Str("reason") == string(ExitScaleDown) })
	load.WaitRequests(300)
	answered := load.Stop().OK.Load() + kept.Stop().OK.Load()
	served := func() int64 {
		code, body, _ := a.Mon("GET", "/served")
		require.Equal(t, 200, code, body)
		n, err := strconv.ParseInt(body, 10, 64)
		require.NoError(t, err)
		return n
	}
	// The running workers report within a second; the exited ones have.
	a.WaitUntil(fmt.Sprintf("%d requests reported", answered), 10*time.Second, func() bool { return served() >= answered })
	assert.Equal(t, answered, served(), "reported = answered, neither lost nor counted twice")
	code, _, _ := a.Mon("GET", "/served/x")
	assert.Equal(t, 404, code)
}
