package flock

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flockhq/flock/internal/flocktest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// haproxyConfig is the deployment recipe of the README, with fast checks.
const haproxyConfig = `global
    maxconn 4096

defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    # Checks every 100 ms would otherwise time out after 100 ms as well
    # (inter), and a monitor slower than that under load, once, takes a
    # healthy instance out (fall 1): with both out, HAProxy answers 503.
    timeout check 2s

frontend web
    bind fd@3
    default_backend flock

backend flock
    balance roundrobin
    option httpchk GET /ecv
    http-check expect status 200
    default-server inter 100ms fall 1 rise 1
    server a %s check port %s
    server b %s check port %s
`

// Two flock instances behind a real HAProxy that watches their ECV: taking
// one out of rotation, then stopping it with TERM and a DrainDelay longer
// than two check intervals, loses no request.
//
// HAProxy's frontend socket is the test's own, bound before HAProxy starts
// and handed down as fd 3 (bind fd@3): a port picked, released and then
// bound by HAProxy could be taken by someone else in between.
func TestHAProxy(t *testing.T) {
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		t.Skip("haproxy is not installed (apt-get install haproxy; .ci/run does it)")
	}
	a := startApp(t, appSpec{Workers: 2, Drain: time.Second})
	b := startApp(t, appSpec{Workers: 2})
	pidsA, pidsB := a.Started(2), b.Started(2)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	feSock, err := ln.(*net.TCPListener).File()
	require.NoError(t, err)
	defer feSock.Close()
	_, portA, _ := net.SplitHostPort(a.Addr)
	_, monA, _ := net.SplitHostPort(a.Monitor)
	_, portB, _ := net.SplitHostPort(b.Addr)
	_, monB, _ := net.SplitHostPort(b.Monitor)
	cfg := filepath.Join(t.TempDir(), "haproxy.cfg")
	require.NoError(t, os.WriteFile(cfg, fmt.Appendf(nil, haproxyConfig, "127.0.0.1:"+portA, monA, "127.0.0.1:"+portB, monB), 0o644))
	hapCmd := exec.Command(bin, "-db", "-f", cfg)
	hapCmd.ExtraFiles = []*os.File{feSock}
	// Started as an application is: its own process group, killed when
	// the test ends, its log lines (server state changes) read.
	hap := flocktest.Start(t, hapCmd)
	url := "http://" + ln.Addr().String() + "/"
	// HAProxy's warning when it takes a server out after a failed check.
	down := func(server string) func(flocktest.Rec) bool {
		return func(r flocktest.Rec) bool { return strings.Contains(r.Str("msg"), "Server flock/"+server+" is DOWN") }
	}

	servedBy := func(n int) (fromA, fromB int) {
		for range n {
			pid, err := flocktest.Get(url)
			require.NoError(t, err)
			switch {
			case slices.Contains(pidsA, pid):
				fromA++
			case slices.Contains(pidsB, pid):
				fromB++
			}
		}
		return
	}
	require.True(t, flocktest.Poll(10*time.Second, func() bool {
		_, err := flocktest.Get(url)
		if err != nil {
			return false
		}
		fromA, fromB := servedBy(10)
		return fromA > 0 && fromB > 0
	}), "HAProxy never balanced over both instances")

	// (a) Take A out of rotation under load.
	for _, keepAlive := range []bool{true, false} {
		load := flocktest.StartLoad(t, url, 8, keepAlive)
		load.WaitRequests(traffic)
		downs := len(hap.Find(down("a")))
		code, _, _ := a.Mon("POST", "/ecv/disable")
		require.Equal(t, 204, code)
		hap.WaitUntil("HAProxy to take A out", 10*time.Second, func() bool { return len(hap.Find(down("a"))) > downs })
		load.WaitRequests(traffic)
		fromA, fromB := servedBy(20)
		res := load.Stop()
		t.Logf("disable under load (keep-alive %v): %s", keepAlive, res)
		assert.Zero(t, res.Failed.Load(), "disable, keep-alive %v: %s", keepAlive, res)
		assert.Zero(t, fromA, "A still gets traffic while disabled")
		assert.Equal(t, 20, fromB)

		code, _, _ = a.Mon("POST", "/ecv/enable")
		require.Equal(t, 204, code)
		require.True(t, flocktest.Poll(5*time.Second, func() bool { fromA, _ := servedBy(10); return fromA > 0 }), "A never came back")
	}

	// (b) Stop A with TERM under load: the ECV turns DISABLED at once and
	// HAProxy moves away before A stops accepting.
	load := flocktest.StartLoad(t, url, 8, false)
	load.WaitRequests(traffic)
	a.Signal(syscall.SIGTERM)
	assert.Equal(t, 0, a.ExitCode(10*time.Second))
	load.WaitRequests(traffic) // B alone, under load
	res := load.Stop()
	t.Logf("TERM under load: %s", res)
	assert.Zero(t, res.Failed.Load(), "TERM: %s", res)
}
