package flock

import (
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// The monitor's status page says what the program was built from.
func TestStatusBuild(t *testing.T) {
	a := startApp(t, appSpec{Workers: 1})
	a.Started(1)
	st := status(a)
	assert.Equal(t, runtime.Version(), st.Build.Go)
	assert.NotEmpty(t, st.Build.Path, "the main module")
}

// The averages follow node-cluster-service: each second avg = (that
// second's count + 2·avg) / 3, and the seconds a worker is silent count
// as 0.
func TestRates(t *testing.T) {
	t0 := time.Now()
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	var r rates
	r.update(counts{Requests: 0, Connections: 0}, at(0))
	r.update(counts{Requests: 30, Connections: 3}, at(1))
	req, conns := r.now(at(1))
	assert.InDelta(t, 10, req, 1e-9)
	assert.InDelta(t, 1, conns, 1e-9)
	r.update(counts{Requests: 60, Connections: 3}, at(2))
	req, _ = r.now(at(2.5))
	assert.InDelta(t, 50.0/3, req, 1e-9)
	req, _ = r.now(at(4)) // two silent seconds
	assert.InDelta(t, 50.0/3*4/9, req, 1e-9)
	r.update(counts{Requests: 90}, at(5)) // after two silent seconds, 30 in the last
	req, _ = r.now(at(5))
	assert.InDelta(t, (30+2*50.0/3*4/9)/3, req, 1e-9)
}
