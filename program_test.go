package flock

import (
	"encoding/json"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flockhq/flock/internal/flocktest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestProgramResolve(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "server")
	require.NoError(t, os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "data"), []byte("x"), 0o644))

	got, err := (&Program{Path: "sh"}).resolve()
	require.NoError(t, err)
	assert.True(t, filepath.IsAbs(got), got)
	got, err = (&Program{Path: "./server", Dir: dir}).resolve()
	require.NoError(t, err)
	assert.Equal(t, exe, got, "a relative path is the program's directory's")

	for _, tc := range []struct {
		p    Program
		want error
		msg  string
	}{
		{Program{Path: "no-such-program-here"}, ErrNotFound, `program "no-such-program-here": not found in PATH`},
		{Program{Path: "./gone", Dir: dir}, ErrNotFound, `program "./gone": not found (` + filepath.Join(dir, "gone") + ")"},
		{Program{Path: "./data", Dir: dir}, ErrNotExecutable, `program "./data" (` + filepath.Join(dir, "data") + "): not an executable file"},
		{Program{Path: dir}, ErrNotExecutable, "not an executable file"},
	} {
		_, err := tc.p.resolve()
		assert.ErrorIs(t, err, tc.want, tc.p.Path)
		assert.ErrorContains(t, err, tc.msg)
	}
}

// Supervise refuses what cannot work with a foreign program, before
// binding anything.
func TestSuperviseRejects(t *testing.T) {
	for _, tc := range []struct {
		o    Options
		p    Program
		want string
	}{
		{Options{}, Program{}, "Program.Path: empty"},
		{Options{}, Program{Path: "true", Ready: -3}, "Program.Ready -3ns"},
		{Options{}, Program{Path: "true", Output: "loud"}, `Program.Output "loud"`},
		{Options{MaxRequests: 10}, Program{Path: "true"}, "a foreign program does not report what it serves"},
		{Options{Single: true}, Program{Path: "true"}, "Single: a foreign program runs under a master"},
		{Options{Init: func() error { return nil }}, Program{Path: "true"}, "Init runs in flock's own workers"},
		{Options{}, Program{Path: "no-such-program-here"}, `flock: program "no-such-program-here": not found in PATH`},
	} {
		err := Supervise(tc.o, tc.p)
		require.Error(t, err, tc.want)
		assert.Contains(t, err.Error(), tc.want)
	}
}

func TestNotifyEvent(t *testing.T) {
	for line, want := range map[string]procEventKind{
		"READY=1": procReady, "WATCHDOG=1": procAlive, "WATCHDOG=trigger": procHung, "STOPPING=1": procStopping, "STATUS=busy": procSaid,
	} {
		e, ok := notifyEvent(line)
		assert.True(t, ok, line)
		assert.Equal(t, want, e.kind, line)
	}
	e, _ := notifyEvent("STATUS=a=b")
	assert.Equal(t, "a=b", e.text)
	for _, line := range []string{"READY=0", "MAINPID=12", "RELOADING=1", "", "X"} {
		_, ok := notifyEvent(line)
		assert.False(t, ok, line)
	}
}

// A prefixed output is whole lines, each with the name and pid, however
// the program writes them.
func TestCopyLines(t *testing.T) {
	r, w, err := os.Pipe()
	require.NoError(t, err)
	out, err := os.CreateTemp(t.TempDir(), "out")
	require.NoError(t, err)
	done := make(chan struct{})
	go func() { copyLines(out, r, "[web 7] "); close(done) }()
	for _, chunk := range []string{"one\ntw", "o\n", "three", "\nno newline at the end"} {
		_, err := w.WriteString(chunk)
		require.NoError(t, err)
	}
	w.Close()
	<-done
	b, err := os.ReadFile(out.Name())
	require.NoError(t, err)
	assert.Equal(t, "[web 7] one\n[web 7] two\n[web 7] three\n[web 7] no newline at the end\n", string(b))
	assert.Equal(t, 4, strings.Count(string(b), "\n"))
}

// Worker groups are checked before anything is bound.
func TestWorkerGroupsRejects(t *testing.T) {
	ok := Program{Path: "true"}
	for _, tc := range []struct {
		g    []WorkerGroup
		want string
	}{
		{[]WorkerGroup{{Program: ok}}, "WorkerGroups[0]: needs a Name"},
		{[]WorkerGroup{{Name: "true", Program: ok}}, `WorkerGroups[0] "true": the name is taken`},
		{[]WorkerGroup{{Name: "a", Program: ok}, {Name: "a", Program: ok}}, `WorkerGroups[1] "a": the name is taken`},
		{[]WorkerGroup{{Name: "a", Program: ok, Workers: -1}}, `WorkerGroups[0] "a": Workers -1`},
		{[]WorkerGroup{{Name: "a"}}, `WorkerGroups[0] "a": Program.Path: empty`},
		{[]WorkerGroup{{Name: "a", Program: Program{Path: "no-such-program-here"}}}, `WorkerGroups[0] "a": program "no-such-program-here": not found in PATH`},
		{[]WorkerGroup{{Name: "a", Program: ok, Addr: "nope"}}, `WorkerGroups[0] "a": listener 0: "a": Addr "nope"`},
		{[]WorkerGroup{{Name: "a", Program: ok, Listeners: []Listener{{Name: "main", Addr: ":1"}}}}, `WorkerGroups[0] "a": listener 0: the name "main" is taken`},
	} {
		err := Supervise(Options{WorkerGroups: tc.g}, ok)
		require.Error(t, err, tc.want)
		assert.Contains(t, err.Error(), tc.want)
	}
	err := Run(Options{Single: true, WorkerGroups: []WorkerGroup{{Name: "a", Program: ok}}}, func(*Worker) error { return nil })
	assert.ErrorContains(t, err, "WorkerGroups: Single runs no master")
}

// Serve's own workers beside a group of another program with its own
// listener: each serves its own socket (a worker once expected the
// group's listener too, and crashed at every start).
func TestServeBesideAGroup(t *testing.T) {
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("python3 is not installed")
	}
	side := "import os, socket\ns = socket.socket(fileno=3)\nwhile True:\n    c, _ = s.accept()\n    c.sendall(b'side %d %s\\n' % (os.getpid(), os.environ['LISTEN_FDS'].encode()))\n    c.close()\n"
	a := startApp(t, appSpec{Workers: 2, Monitor: "127.0.0.1:0", Groups: []WorkerGroup{{Name: "side", Workers: 2, Addr: "127.0.0.1:0", SharedSocket: true,
		Program: Program{Path: "python3", Args: []string{"-c", side}, Ready: ReadyAtOnce}}}})
	a.Started(4)
	_, err := flocktest.Get(a.URL("/"))
	require.NoError(t, err, "Serve's workers serve")
	code, body, _ := a.Mon("GET", "/")
	require.Equal(t, 200, code, body)
	var st Status
	require.NoError(t, json.Unmarshal([]byte(body), &st))
	assert.Equal(t, []string{"main", "side"}, st.Groups)
	require.Len(t, st.Listens, 2)
	for range 4 {
		c, err := net.Dial("tcp", st.Listens[1].Addr)
		require.NoError(t, err)
		b, err := io.ReadAll(c)
		c.Close()
		require.NoError(t, err)
		assert.Regexp(t, `^side \d+ 1\n$`, string(b), "one shared socket: LISTEN_FDS=1")
	}
	assert.Empty(t, a.Events("gave-up"))
	assert.Empty(t, a.Find(func(r flocktest.Rec) bool { return r.Str("event") == "exited" }), "no worker crashed")
}
