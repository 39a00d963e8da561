package flock

import (
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flockhq/flock/internal/flocktest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// At its file-descriptor limit the master refuses more workers with a
// clear error, before the monitor or a replacement would starve: the ECV
// keeps answering, scaling back down serves every request, and the
// refusals do not flood the logs.
func TestFileDescriptorLimit(t *testing.T) {
	js, err := json.Marshal(appSpec{Addr: "127.0.0.1:0", Workers: 2})
	require.NoError(t, err)
	// ulimit sets the soft and the hard limit: Go cannot raise it again.
	cmd := exec.Command("/bin/sh", "-c", `ulimit -n 64 && exec "$0"`, os.Args[0])
	a := flocktest.Start(t, cmd, envTestApp+"="+string(js))
	a.Started(2)
	refused := func() []flocktest.Rec {
		return a.Find(func(r flocktest.Rec) bool { return r.Str("msg") == "flock: cannot add a worker" })
	}
	workers := 2
	for len(refused()) == 0 {
		require.Less(t, workers, 40, "the master never refused a worker")
		a.Signal(syscall.SIGTTIN)
		a.WaitUntil("the TTIN to be handled", 10*time.Second, func() bool {
			return len(a.Events("scaled")) == workers-1 || len(refused()) > 0
		})
		if len(refused()) == 0 {
			workers++
			a.Started(workers)
		}
	}
	first := time.Now()
	t.Logf("%d workers at RLIMIT_NOFILE 64; refused: %s", workers, refused()[0].Str("err"))
	assert.Contains(t, refused()[0].Str("err"), "not enough resources: one more worker needs")
	signals := len(a.Events("signal"))
	for range 20 { // refusals are logged once a second at most
		a.Signal(syscall.SIGTTIN)
	}
	a.WaitUntil("more TTINs", 10*time.Second, func() bool { return len(a.Events("signal")) > signals })

	c := &http.Client{Timeout: time.Second}
	for range 10 {
		resp, err := c.Get("http://" + a.Monitor + "/ecv")
		require.NoError(t, err, "the monitor at the limit")
		resp.Body.Close()
		assert.Equal(t, 200, resp.StatusCode)
	}

	scaledDown := func() int {
		return len(a.Find(func(r flocktest.Rec) bool { return r.Str("reason") == string(ExitScaleDown) }))
	}
	for gone := 1; gone <= workers-2; gone++ {
		a.Signal(syscall.SIGTTOU)
		a.WaitUntil("a worker to go", 10*time.Second, func() bool { return scaledDown() == gone })
	}
	readyStatus(a, 2)
	assert.Zero(t, unanswered(t, a.Addr, 40), "requests after scaling down")
	assert.Empty(t, a.Find(func(r flocktest.Rec) bool { return strings.Contains(r.Str("msg"), "Accept error") }))
	assert.LessOrEqual(t, len(refused()), 2+int(time.Since(first)/time.Second), "refusals logged: one a second at most")
}
