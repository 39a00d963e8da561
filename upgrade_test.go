package flock

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flockhq/flock/internal/flocktest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// USR2 under load: a new master from the binary on disk takes over the
// sockets, the monitor and the PID file; the old one drains and exits 0;
// no request fails.
func TestUSR2UpgradeUnderLoad(t *testing.T) {
	for _, mode := range loadModes {
		t.Run(mode.name, func(t *testing.T) {
			bin := flocktest.CopyBinary(t)
			pidFile := filepath.Join(t.TempDir(), "app.pid")
			a := startAppAt(t, bin, appSpec{Workers: 2, PIDFile: pidFile, InitDelay: 200 * time.Millisecond})
			old := a.Started(2)
			flocktest.InstallBinary(t, bin, "")
			code, _, _ := a.Mon("POST", "/ecv/disable") // the new master keeps this state
			require.Equal(t, 204, code)

			load := flocktest.StartLoad(t, a.URL("/"), 8, mode.keepAlive)
			load.WaitRequests(traffic)
			a.Signal(syscall.SIGUSR2)
			assert.Equal(t, 0, a.ExitCode(20*time.Second), "the old master exits 0 once it has drained")
			res := load.Stop()
			t.Log(res)
			assert.Zero(t, res.Failed.Load(), res.String())

			up := a.WaitFor("the handover", time.Second, func(r flocktest.Rec) bool { return r.Str("event") == "upgrade" && r.Str("reason") == "handed over" })
			heir := up.Int("new_master")
			assert.True(t, flocktest.Alive(heir))
			b, err := os.ReadFile(pidFile)
			require.NoError(t, err)
			assert.Equal(t, strconv.Itoa(heir)+"\n", string(b), "the PID file names the new master")

			pid, err := flocktest.Get(a.URL("/"))
			require.NoError(t, err)
			assert.NotContains(t, old, pid, "new workers serve")
			code, state := ecvState(a)
			assert.Equal(t, 400, code)
			assert.Equal(t, "DISABLED", state, "the new master kept the disabled state")

			// The new master is a full master: TERM stops it.
			require.NoError(t, syscall.Kill(heir, syscall.SIGTERM))
			require.True(t, flocktest.Poll(10*time.Second, func() bool { return !flocktest.Alive(heir) }))
			_, err = os.Stat(pidFile)
			assert.True(t, os.IsNotExist(err), "the new master removes its PID file")
		})
	}
}

// A new binary that cannot serve (its workers fail at boot) is killed after
// UpgradeTimeout or when it gives up, and the old master keeps serving.
func TestUSR2BrokenBinaryRollsBack(t *testing.T) {
	for _, tc := range []struct{ name, script string }{
		{"exits at once", "#!/bin/sh\nexit 1\n"},
		{"workers never ready", "#!/bin/sh\nFLOCK_TEST_BREAK=1 exec REAL \"$@\"\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bin := flocktest.CopyBinary(t)
			real := bin + ".real"
			require.NoError(t, os.Link(bin, real))
			a := startAppAt(t, bin, appSpec{Workers: 2, UpgradeTimeout: 2 * time.Second})
			old := a.Started(2)
			flocktest.InstallBinary(t, bin, strings.ReplaceAll(tc.script, "REAL", real))
			load := flocktest.StartLoad(t, a.URL("/"), 4, false)
			a.Signal(syscall.SIGUSR2)
			e := a.WaitFor("the rollback", 20*time.Second, func(r flocktest.Rec) bool {
				return r.Str("event") == "upgrade" && strings.HasPrefix(r.Str("reason"), "failed")
			})
			load.WaitRequests(traffic) // the old master serves on under load
			res := load.Stop()
			t.Log(e.Str("reason"), "; ", res)
			assert.Zero(t, res.Failed.Load(), res.String())
			for _, pid := range old {
				assert.True(t, flocktest.Alive(pid))
			}
			code, state := ecvState(a)
			assert.Equal(t, 200, code)
			assert.Equal(t, "AVAILABLE", state)
			// And it can still upgrade once the binary is fixed.
			flocktest.InstallBinary(t, bin, "")
			a.Signal(syscall.SIGUSR2)
			assert.Equal(t, 0, a.ExitCode(20*time.Second))
		})
	}
}

// Under systemd (Type=notify), the master reports READY=1, RELOADING=1 on
// USR2, the new master MAINPID= with READY=1, and STOPPING=1.
func TestSdNotify(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	require.NoError(t, err)
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	var got []string
	next := func() string {
		conn.SetReadDeadline(time.Now().Add(20 * time.Second))
		buf := make([]byte, 256)
		n, err := conn.Read(buf)
		require.NoError(t, err, "after %q", got)
		got = append(got, string(buf[:n]))
		return string(buf[:n])
	}
	a := startApp(t, appSpec{Workers: 1})
	a.Started(1)
	assert.Equal(t, "READY=1", next())
	a.Signal(syscall.SIGUSR2)
	assert.Equal(t, "RELOADING=1", next())
	main := next()
	up := a.WaitFor("the handover", 10*time.Second, func(r flocktest.Rec) bool { return r.Str("event") == "upgrade" && r.Str("reason") == "handed over" })
	assert.Equal(t, "MAINPID="+strconv.Itoa(up.Int("new_master"))+"\nREADY=1", main)
	require.NoError(t, syscall.Kill(up.Int("new_master"), syscall.SIGTERM))
	assert.Equal(t, "STOPPING=1", next())
}
