package flock

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/flockhq/flock/internal/flocktest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// inode is the inode of the file at path (following links: for
// /proc/PID/exe, the binary the process runs, deleted or not).
func inode(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Stat(path)
	require.NoError(t, err)
	return fi.Sys().(*syscall.Stat_t).Ino
}

func exeInode(t *testing.T, pid int) uint64 { return inode(t, fmt.Sprintf("/proc/%d/exe", pid)) }

// rolled waits for the end of the nth roll and returns its event.
func rolled(a *flocktest.App, n int) flocktest.Rec {
	var ends []flocktest.Rec
	a.WaitUntil(fmt.Sprintf("roll %d to end", n), 20*time.Second, func() bool {
		ends = a.Find(func(r flocktest.Rec) bool { return r.Str("event") == "roll" && r.Str("reason") != "began" })
		return len(ends) >= n
	})
	return ends[n-1]
}

// A crashed worker is re-forked from the binary its slot ran, which the
// master holds open: not from a file deployed at the same path since the
// last roll. TTIN starts that binary too.
func TestReforkRunsThePinnedBinary(t *testing.T) {
	bin := flocktest.CopyBinary(t)
	a := startAppAt(t, bin, appSpec{Workers: 2})
	a.Started(2)
	a.Signal(syscall.SIGHUP)
	rolled(a, 1)
	want := inode(t, bin)
	pids := a.Started(4)[2:]
	flocktest.InstallBinary(t, bin, "") // a deploy, not rolled
	require.NotEqual(t, want, inode(t, bin))

	require.NoError(t, syscall.Kill(pids[0], syscall.SIGKILL))
	again := a.Started(5)[4]
	assert.Equal(t, want, exeInode(t, again), "the re-fork runs the rolled binary")
	a.Signal(syscall.SIGTTIN)
	added := a.Started(6)[5]
	assert.Equal(t, want, exeInode(t, added), "TTIN starts the rolled binary")
}

// A TTIN during a HUP roll starts the roll's binary, and the roll waits for
// it: after the roll every worker runs the same binary.
func TestTTINDuringRollJoinsIt(t *testing.T) {
	bin := flocktest.CopyBinary(t)
	a := startAppAt(t, bin, appSpec{Workers: 2, InitDelay: 300 * time.Millisecond})
	a.Started(2)
	flocktest.InstallBinary(t, bin, "")
	want := inode(t, bin)
	a.Signal(syscall.SIGHUP)
	a.WaitFor("the roll to begin", 10*time.Second, func(r flocktest.Rec) bool { return r.Str("event") == "roll" && r.Str("reason") == "began" })
	a.Signal(syscall.SIGTTIN)
	a.WaitFor("the TTIN", 10*time.Second, func(r flocktest.Rec) bool { return r.Str("event") == "scaled" })
	done := rolled(a, 1)
	assert.Contains(t, done.Str("reason"), "done in")
	st := readyStatus(a, 3)
	for _, w := range st.Workers {
		assert.Equal(t, want, exeInode(t, w.PID), "worker %d runs another binary", w.PID)
		assert.Equal(t, st.Workers[0].Binary, w.Binary)
	}
	assert.Equal(t, st.Binary, st.Workers[0].Binary, "new workers start from the rolled binary")
}

// readyStatus waits until the monitor shows n workers, all ready (the
// replaced ones gone), and returns its status.
func readyStatus(a *flocktest.App, n int) Status {
	var st Status
	a.WaitUntil(fmt.Sprintf("%d ready workers alone", n), 10*time.Second, func() bool {
		code, body, _ := a.Mon("GET", "/")
		st = Status{}
		if code != 200 || json.Unmarshal([]byte(body), &st) != nil || len(st.Workers) != n {
			return false
		}
		return !slices.ContainsFunc(st.Workers, func(w WorkerStatus) bool { return w.State != WorkerReady })
	})
	return st
}
