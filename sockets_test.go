package flock

import (
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flockhq/flock/internal/flocktest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// unanswered opens n new connections to addr, each sending one request,
// and counts those that get no answer within a second: a listening socket
// with nobody accepting holds its share of them.
func unanswered(t *testing.T, addr string, n int) int {
	t.Helper()
	c := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	failed := 0
	for range n {
		resp, err := c.Get("http://" + addr + "/")
		if err != nil {
			failed++
			continue
		}
		resp.Body.Close()
	}
	return failed
}

// A USR2 upgrade that fails leaves no socket listening without a worker:
// a given-up slot's socket, bound afresh for the new master whose worker
// listened on it, goes with the new master.
func TestFailedUpgradeLeavesNoSocketUnserved(t *testing.T) {
	bin := flocktest.CopyBinary(t)
	real := bin + ".real"
	require.NoError(t, os.Link(bin, real))
	a := startAppAt(t, bin, appSpec{Workers: 2, Budget: 1, Restart: 10 * time.Millisecond, UpgradeTimeout: 2 * time.Second})
	pids := a.Started(2)
	// Slot 1 crashes twice within a minute: past its budget of 1, it gives up.
	victim := a.WaitFor("slot 1", time.Second, func(r flocktest.Rec) bool { return r.Str("event") == "ready" && r.Int("slot") == 1 })
	require.NoError(t, syscall.Kill(victim.Int("pid"), syscall.SIGKILL))
	again := a.WaitFor("slot 1 again", 5*time.Second, func(r flocktest.Rec) bool {
		return r.Str("event") == "ready" && r.Int("slot") == 1 && !slices.Contains(pids, r.Int("pid"))
	})
	require.NoError(t, syscall.Kill(again.Int("pid"), syscall.SIGKILL))
	a.WaitFor("slot 1 to give up", 5*time.Second, func(r flocktest.Rec) bool { return r.Str("event") == "gave-up" })
	before := len(a.Events("forked"))

	// The new master's slot 0 never gets ready; its slot 1 does, and listens.
	flocktest.InstallBinary(t, bin, "#!/bin/sh\nFLOCK_TEST_HANG_SLOT=0 exec "+real+" \"$@\"\n")
	a.Signal(syscall.SIGUSR2)
	a.WaitFor("the rollback", 20*time.Second, func(r flocktest.Rec) bool {
		return r.Str("event") == "upgrade" && strings.HasPrefix(r.Str("reason"), "failed")
	})
	var heirs []int
	for _, r := range a.Events("forked")[before:] {
		heirs = append(heirs, r.Int("pid"))
	}
	require.NotEmpty(t, heirs, "the new master started workers")
	a.WaitUntil("the new master's workers to exit", 10*time.Second, func() bool {
		return !slices.ContainsFunc(heirs, flocktest.Alive)
	})
	_, port, _ := net.SplitHostPort(a.Addr)
	assert.Zero(t, unanswered(t, "127.0.0.1:"+port, 40), "connections left on a socket nobody accepts on")
}

// TTOU while a binary that cannot boot is on disk (after a HUP, so that
// new workers would come from that file): the removed worker's socket is
// kept as a spare and handed to the running workers. Nothing is started,
// no connection waits on a socket nobody accepts on, and the logs stay
// short.
func TestTTOUWithBrokenBinaryOnDisk(t *testing.T) {
	if !flocktest.InNetns(t, "sysctl -qw net.ipv4.tcp_migrate_req=0") {
		return
	}
	bin := flocktest.CopyBinary(t)
	a := startAppAt(t, bin, appSpec{Workers: 4})
	a.Started(4)
	a.Signal(syscall.SIGHUP)
	a.WaitFor("the roll", 20*time.Second, func(r flocktest.Rec) bool { return r.Str("event") == "roll" && r.Str("reason") != "began" })
	flocktest.InstallBinary(t, bin, "#!/bin/sh\nexit 1\n")
	forks, lines := len(a.Events("forked")), len(a.Find(func(flocktest.Rec) bool { return true }))

	load := flocktest.StartLoad(t, a.URL("/"), 8, false)
	a.Signal(syscall.SIGTTOU)
	a.WaitFor("the scale-down", 10*time.Second, func(r flocktest.Rec) bool { return r.Str("reason") == string(ExitScaleDown) })
	assert.Zero(t, unanswered(t, a.Addr, 30), "connections left on a socket nobody accepts on")
	res := load.Stop()
	assert.Zero(t, res.Failed.Load(), res.String())
	assert.Equal(t, forks, len(a.Events("forked")), "no worker started")
	assert.Less(t, len(a.Find(func(flocktest.Rec) bool { return true }))-lines, 50, "log lines after the TTOU")
}

// Status reads each listener's accept queue from the kernel: connections
// waiting for a worker that does not accept (stopped) show there, and
// leave once it takes them.
func TestStatusShowsAcceptQueues(t *testing.T) {
	a := startApp(t, appSpec{Workers: 1})
	pid := a.Started(1)[0]
	require.NoError(t, syscall.Kill(pid, syscall.SIGSTOP))
	defer syscall.Kill(pid, syscall.SIGCONT)
	require.True(t, flocktest.Poll(5*time.Second, func() bool { return flocktest.Stopped(pid) }))
	var conns []net.Conn
	for range 5 {
		c, err := net.Dial("tcp", a.Addr)
		require.NoError(t, err)
		conns = append(conns, c)
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	queue := func() Queue {
		st := status(a)
		require.Len(t, st.Queues, 1)
		return st.Queues[0]
	}
	a.WaitUntil("5 connections queued", 10*time.Second, func() bool { return queue().Queued == 5 })
	assert.Equal(t, MainListener, queue().Listener)
	assert.Positive(t, queue().Max, "the backlog")
	require.NoError(t, syscall.Kill(pid, syscall.SIGCONT))
	a.WaitUntil("the queue taken", 10*time.Second, func() bool { return queue().Queued == 0 })
}
