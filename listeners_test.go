package flock

import (
	"fmt"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/flockhq/flock/internal/flocktest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Two listeners served by the same workers: both answer, and both survive
// a HUP and a TTOU under load without a failed request.
func TestTwoListenersUnderLoad(t *testing.T) {
	a := startApp(t, appSpec{Workers: 3, Listeners: []Listener{{Name: "admin", Addr: "127.0.0.1:0"}}})
	a.Started(3)
	st := status(a)
	require.Len(t, st.Listens, 2)
	assert.Equal(t, MainListener, st.Listens[0].Name)
	assert.Equal(t, a.Addr, st.Listens[0].Addr)
	admin := st.Listens[1]
	assert.Equal(t, "admin", admin.Name)

	main := flocktest.StartLoad(t, a.URL("/"), 4, false)
	second := flocktest.StartLoad(t, "http://"+admin.Addr+"/", 4, true)
	main.WaitRequests(200)
	second.WaitRequests(200)
	a.Signal(syscall.SIGHUP)
	a.WaitFor("the roll", 20*time.Second, func(r flocktest.Rec) bool { return r.Str("event") == "roll" && r.Str("reason") != "began" })
	a.Signal(syscall.SIGTTOU)
	a.WaitFor("a worker gone", 20*time.Second, func(r flocktest.Rec) bool { return r.Str("reason") == string(ExitScaleDown) })
	main.WaitRequests(200)
	second.WaitRequests(200)
	flocktest.NoFailures(t, "HUP and TTOU", map[string]*flocktest.LoadRun{"main": main, "admin": second})
}

// A busy port on any listener fails Serve before a worker starts, naming
// the address.
func TestBusySecondListener(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	a := startApp(t, appSpec{Listeners: []Listener{{Name: "admin", Addr: ln.Addr().String()}}})
	assert.Equal(t, 1, a.ExitCode(10*time.Second))
	want := fmt.Sprintf("flock: listen %s: address already in use", ln.Addr())
	assert.NotEmpty(t, a.Find(func(r flocktest.Rec) bool { return r.Str("msg") == want }), "no line %q", want)
	assert.Empty(t, a.Events("forked"))
}

// Across USR2 each listener keeps its sockets, by name.
func TestTwoListenersSurviveUSR2(t *testing.T) {
	a := startApp(t, appSpec{Workers: 2, Listeners: []Listener{{Name: "admin", Addr: "127.0.0.1:0"}}})
	a.Started(2)
	admin := status(a).Listens[1].Addr
	load := flocktest.StartLoad(t, "http://"+admin+"/", 4, false)
	load.WaitRequests(200)
	a.Signal(syscall.SIGUSR2)
	assert.Equal(t, 0, a.ExitCode(20*time.Second))
	load.WaitRequests(200)
	res := load.Stop()
	assert.Zero(t, res.Failed.Load(), res.String())
	for _, url := range []string{a.URL("/"), "http://" + admin + "/"} {
		_, err := flocktest.Get(url)
		assert.NoError(t, err, url)
	}
}
