package flock

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/flockhq/flock/internal/flocktest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The integration tests run real masters and workers: the test binary
// re-executes itself with FLOCK_TEST_APP set, and TestMain then runs the
// application below instead of the tests. Its workers are re-executions of
// the same binary, so they come back through here too.

const envTestApp = "FLOCK_TEST_APP"

// appSpec is the test application's configuration, passed as JSON.
type appSpec struct {
	Addr     string
	Workers  int
	Shutdown time.Duration
	Drain    time.Duration
	Restart  time.Duration
	Budget   int
	PIDFile  string
	PIDDir   string
	TLSCert  string
	TLSKey   string
	User     string
	FailBoot bool // every worker's Init fails

	Monitor      string
	Probe        string
	ProbeTimeout time.Duration
	AccessKey    string
	ReadOnly     bool

	InitDelay      time.Duration // every worker's Init sleeps this long
	BootTimeout    time.Duration
	Timeout        time.Duration
	MaxRequests    int
	MaxConnections int
	MaxUptime      time.Duration
	MaxMemory      int64
	UpgradeTimeout time.Duration

	Extension bool // a testExtension (control_test.go) that calls the Controller from everywhere it may
	Listeners []Listener
	Reports   bool // workers report what "/" served; a servedReports extension sums it (report_test.go)
	Groups    []WorkerGroup
}

func TestMain(m *testing.M) {
	if spec := os.Getenv(envTestApp); spec != "" {
		os.Exit(runTestApp(spec))
	}
	os.Exit(m.Run())
}

func runTestApp(js string) int {
	var s appSpec
	if err := json.Unmarshal([]byte(js), &s); err != nil {
		fmt.Fprintln(os.Stderr, "bad app spec:", err)
		return 2
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	o := Options{
		Addr: s.Addr, Workers: s.Workers, ShutdownTimeout: s.Shutdown, DrainDelay: s.Drain,
		RestartDelay: s.Restart, RestartsPerMinute: s.Budget, PIDFile: s.PIDFile, PIDDir: s.PIDDir,
		TLSCertFile: s.TLSCert, TLSKeyFile: s.TLSKey, User: s.User, Logger: log,
		MonitorAddr: s.Monitor, MonitorProbe: s.Probe, MonitorProbeTimeout: s.ProbeTimeout,
		AccessKey: s.AccessKey, MonitorReadOnly: s.ReadOnly,
		BootTimeout: s.BootTimeout, Timeout: s.Timeout, MaxRequests: s.MaxRequests, MaxConnections: s.MaxConnections,
		MaxUptime: s.MaxUptime, MaxMemory: s.MaxMemory, UpgradeTimeout: s.UpgradeTimeout,
	}
	// FLOCK_TEST_BREAK makes a "broken binary" of the same executable (a
	// wrapper script sets it): its workers fail at boot. FLOCK_TEST_HANG_SLOT
	// makes the worker of that slot never get ready.
	switch {
	case s.FailBoot || os.Getenv("FLOCK_TEST_BREAK") != "":
		o.Init = func() error { return errors.New("init refuses on purpose") }
	case os.Getenv("FLOCK_TEST_HANG_SLOT") == strconv.Itoa(WorkerSlot()):
		o.Init = func() error { time.Sleep(time.Minute); return nil }
	case s.InitDelay > 0:
		o.Init = func() error {
			log.Info("initializing", "event", "init", "pid", os.Getpid())
			time.Sleep(s.InitDelay)
			return nil
		}
	}
	o.Listeners, o.WorkerGroups = s.Listeners, s.Groups
	if s.Extension {
		x := &testExtension{log: log}
		o.Extensions, o.OnEvent = []Extension{x}, x.onEvent
	}
	served := func() {}
	if s.Reports {
		served = servedCounter()
		o.Extensions = append(o.Extensions, &servedReports{})
	}
	pid := strconv.Itoa(os.Getpid())
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		defer served()
		w.Header().Set("X-Worker-Pid", pid)
		fmt.Fprintf(w, "Hello from worker %s\n", pid)
	})
	mux.HandleFunc("/fail", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "failing on purpose", http.StatusInternalServerError)
	})
	mux.HandleFunc("/sleep", func(w http.ResponseWriter, r *http.Request) {
		d, _ := time.ParseDuration(r.URL.Query().Get("d"))
		log.Info("sleeping", "event", "sleeping", "pid", os.Getpid(), "d", d.String())
		time.Sleep(d)
		w.Header().Set("X-Worker-Pid", pid)
		fmt.Fprintf(w, "Hello from worker %s\n", pid)
	})
	err := Serve(mux, o)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, ErrInterrupted):
		return 130
	default:
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
}

// startApp starts the test application (2 workers unless told otherwise)
// from the test binary, through flocktest.Start.
func startApp(t *testing.T, s appSpec) *flocktest.App {
	t.Helper()
	if s.Workers == 0 {
		s.Workers = 2
	}
	return startAppAt(t, os.Args[0], s)
}

// startAppAt starts the test application from the binary at bin.
func startAppAt(t *testing.T, bin string, s appSpec) *flocktest.App {
	t.Helper()
	if s.Addr == "" {
		s.Addr = "127.0.0.1:0"
	}
	js, err := json.Marshal(s)
	require.NoError(t, err)
	return flocktest.Start(t, exec.Command(bin), envTestApp+"="+string(js))
}

func TestResolveDefaults(t *testing.T) {
	env := func(kv map[string]string) func(string) string { return func(k string) string { return kv[k] } }

	c, err := Options{}.resolve(env(nil))
	require.NoError(t, err)
	assert.Equal(t, ":5000", c.Addr)
	assert.Equal(t, 30*time.Second, c.ShutdownTimeout)
	assert.Equal(t, 100*time.Millisecond, c.RestartDelay)
	assert.Equal(t, 10, c.RestartsPerMinute)
	assert.Equal(t, 30*time.Second, c.IdleTimeout)
	assert.Equal(t, 10*time.Second, c.ReadHeaderTimeout)
	assert.Positive(t, c.Workers)

	c, err = Options{}.resolve(env(map[string]string{"PORT": "8080", "WEB_CONCURRENCY": "3"}))
	require.NoError(t, err)
	assert.Equal(t, ":8080", c.Addr)
	assert.Equal(t, 8080, c.port)
	assert.Equal(t, 3, c.Workers)

	// Explicit options win over the environment.
	c, err = Options{Addr: "127.0.0.1:7000", Workers: 5}.resolve(env(map[string]string{"PORT": "8080", "WEB_CONCURRENCY": "3"}))
	require.NoError(t, err)
	assert.Equal(t, "127.0.0.1:7000", c.Addr)
	assert.Equal(t, 5, c.Workers)
}

func TestResolveRejects(t *testing.T) {
	for _, tc := range []struct {
		o    Options
		env  map[string]string
		want string
	}{
		{Options{Workers: -1}, nil, "Workers -1"},
		{Options{Addr: "localhost"}, nil, `Addr "localhost"`},
		{Options{Addr: ":99999"}, nil, `Addr ":99999"`},
		{Options{}, map[string]string{"PORT": "http"}, `PORT="http"`},
		{Options{}, map[string]string{"WEB_CONCURRENCY": "0"}, `WEB_CONCURRENCY="0"`},
		{Options{ShutdownTimeout: -time.Second}, nil, "ShutdownTimeout -1s"},
		{Options{RestartDelay: -1}, nil, "RestartDelay -1ns"},
		{Options{RestartsPerMinute: -2}, nil, "RestartsPerMinute -2"},
		{Options{WorkerGOMAXPROCS: -1}, nil, "WorkerGOMAXPROCS -1"},
		{Options{MaxConnections: -1}, nil, "MaxConnections -1"},
		{Options{Listeners: []Listener{{Addr: ":1"}}}, nil, `Listeners[0]: no Name (Addr ":1")`},
		{Options{Listeners: []Listener{{Name: "main", Addr: ":1"}}}, nil, `Listeners[0]: the name "main" is taken`},
		{Options{Listeners: []Listener{{Name: "x", Addr: "nope"}}}, nil, `Listeners[0]: "x": Addr "nope"`},
		{Options{}, map[string]string{"FLOCK_SINGLE": "yes"}, `FLOCK_SINGLE="yes"`},
		{Options{TLSCertFile: "cert.pem"}, nil, `TLSCertFile "cert.pem" and TLSKeyFile ""`},
		{Options{TLSCertFile: "/nonexistent.pem", TLSKeyFile: "/nonexistent.key"}, nil, `TLSCertFile "/nonexistent.pem"`},
		{Options{User: "no-such-user-here"}, nil, `User "no-such-user-here": no such user`},
		{Options{Group: "no-such-group-here"}, nil, `Group "no-such-group-here": no such group`},
	} {
		_, err := tc.o.resolve(func(k string) string { return tc.env[k] })
		if assert.Error(t, err, "%+v", tc.o) {
			assert.Contains(t, err.Error(), tc.want)
		}
	}
}

// Serve itself reports bad options before it starts anything.
func TestServeRejectsBadOptions(t *testing.T) {
	err := Serve(http.NotFoundHandler(), Options{Workers: -3})
	require.Error(t, err)
	assert.Equal(t, "flock: Workers -3: must be at least 1 (0 means the default)", err.Error())
}

func TestServesFromEveryWorker(t *testing.T) {
	a := startApp(t, appSpec{Workers: 2})
	pids := a.Started(2)
	seen := map[int]bool{}
	require.True(t, flocktest.Poll(10*time.Second, func() bool {
		pid, err := flocktest.Get(a.URL("/"))
		require.NoError(t, err)
		seen[pid] = true
		return len(seen) == 2
	}), "answers came only from %v", seen)
	assert.ElementsMatch(t, pids, slices.Collect(maps.Keys(seen)))
}

// A busy application or monitor port fails Serve (exit 1) with an error
// naming the address, before any worker starts.
func TestBusyPort(t *testing.T) {
	for _, tc := range []struct {
		name string
		spec func(addr string) appSpec
		want string
	}{
		{"application", func(addr string) appSpec { return appSpec{Addr: addr} }, "flock: listen %s: address already in use"},
		{"monitor", func(addr string) appSpec { return appSpec{Monitor: addr} }, "flock: monitor: listen %s: address already in use"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(t, err)
			defer ln.Close()
			a := startApp(t, tc.spec(ln.Addr().String()))
			assert.Equal(t, 1, a.ExitCode(10*time.Second))
			want := fmt.Sprintf(tc.want, ln.Addr())
			assert.NotEmpty(t, a.Find(func(r flocktest.Rec) bool { return r.Str("msg") == want }), "no line %q", want)
			assert.Empty(t, a.Events("forked"), "no worker may start when a port is busy")
		})
	}
}

func TestPIDFile(t *testing.T) {
	path := t.TempDir() + "/flock.pid"
	a := startApp(t, appSpec{PIDFile: path})
	a.Started(2)
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, strconv.Itoa(a.PID)+"\n", string(b))
	a.Signal(syscall.SIGTERM)
	assert.Equal(t, 0, a.ExitCode(10*time.Second))
	assert.NoFileExists(t, path)
}
