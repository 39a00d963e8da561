package flock

import (
	"encoding/json"
	"math/rand/v2"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/flockhq/flock/internal/flocktest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Chaos under load: random TTIN (up to 8 workers), TTOU, HUP, kill -9 of a worker and ECV
// disable/enable, one every 20–220 requests, while 8 clients open a new
// connection per request. No request fails but those inside a killed
// worker (one per client at most). Seeded: FLOCK_CHAOS_SEED replays a run,
// FLOCK_CHAOS_TIME sets its length (default 20s).
func TestChaos(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s, err := strconv.ParseUint(os.Getenv("FLOCK_CHAOS_SEED"), 10, 64); err == nil {
		seed = s
	}
	length := 20 * time.Second
	if d, err := time.ParseDuration(os.Getenv("FLOCK_CHAOS_TIME")); err == nil {
		length = d
	}
	t.Logf("FLOCK_CHAOS_SEED=%d FLOCK_CHAOS_TIME=%v", seed, length)
	rng := rand.New(rand.NewPCG(seed, seed))

	const clients = 8
	a := startApp(t, appSpec{Workers: 3, Budget: 1000})
	a.Started(3)
	load := flocktest.StartLoad(t, a.URL("/"), clients, false)
	ops := map[string]int{}
	for deadline := time.Now().Add(length); time.Now().Before(deadline); {
		var op string
		switch rng.IntN(8) {
		case 0, 1:
			if len(status(a).Workers) >= 8 {
				continue
			}
			op = "TTIN"
			a.Signal(syscall.SIGTTIN)
		case 2, 3:
			op = "TTOU"
			a.Signal(syscall.SIGTTOU)
		case 4:
			op = "HUP"
			a.Signal(syscall.SIGHUP)
		case 5:
			st := status(a)
			if len(st.Workers) == 0 {
				continue
			}
			op = "kill"
			syscall.Kill(st.Workers[rng.IntN(len(st.Workers))].PID, syscall.SIGKILL)
		case 6:
			op = "disable"
			code, _, _ := a.Mon("POST", "/ecv/disable")
			require.Equal(t, 204, code)
		case 7:
			op = "enable"
			code, _, _ := a.Mon("POST", "/ecv/enable")
			require.Equal(t, 204, code)
		}
		ops[op]++
		load.WaitRequests(int64(20 + rng.IntN(200))) // pacing by traffic
	}
	code, _, _ := a.Mon("POST", "/ecv/enable")
	require.Equal(t, 204, code)
	a.WaitUntil("the service to settle", 20*time.Second, func() bool {
		code, state := ecvState(a)
		return code == 200 && state == "AVAILABLE"
	})
	res := load.Stop()
	t.Logf("operations %v; load %s", ops, res)
	assert.LessOrEqual(t, res.Failed.Load(), int64(ops["kill"]*clients), res.String())
	assert.Greater(t, res.OK.Load(), int64(1000), res.String())
	_, err := flocktest.Get(a.URL("/"))
	assert.NoError(t, err)
}

// status is the monitor's status page.
func status(a *flocktest.App) Status {
	var st Status
	code, body, _ := a.Mon("GET", "/")
	require.Equal(a.T(), 200, code)
	require.NoError(a.T(), json.Unmarshal([]byte(body), &st))
	return st
}
