// Package flock turns one http.Handler into a fault-resilient, multi-process
// HTTP service steered with Unix signals: a prefork server in the manner of
// unicorn, gunicorn and the Node cluster tools.
//
//	func main() {
//		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { ... })
//		if err := flock.Serve(h, flock.Options{}); err != nil {
//			log.Fatal(err)
//		}
//	}
//
// # Processes
//
// The first process to call Serve is the master. It binds one SO_REUSEPORT
// socket per worker slot, then re-executes its own binary (same arguments,
// same environment plus FLOCK_WORKER) once per slot. In those worker processes
// the same main runs again and reaches the same Serve call, which serves the
// handler on the socket it inherited. Code before Serve therefore runs in
// every process; use [IsWorker] to tell them apart (for example to open
// database pools only in workers).
//
// The master keeps its own copy of every slot socket, so connections queued
// on a slot survive the death of its worker and are served by the
// replacement. A worker joins the kernel's reuseport group (calls listen)
// only once its Options.Init hook has returned, so it gets no traffic before
// it is ready.
//
// # Signals
//
// Sent to the master:
//
//	TTIN       start one more worker (ignored while shutting down)
//	TTOU       gracefully stop the oldest worker, never below one
//	QUIT, TERM graceful shutdown: stop accepting, finish in-flight requests,
//	           kill what remains after ShutdownTimeout, Serve returns nil
//	INT        immediate: kill every worker, Serve returns ErrInterrupted;
//	           INT during a graceful shutdown escalates to this
//	HUP        rolling restart: replace every worker, a few at a time, from
//	           the binary now on disk, each new one ready before its old
//	           one drains
//	USR2       binary upgrade: a new master from the binary on disk takes
//	           over the sockets once all its workers are ready; a broken
//	           binary is killed and the old master keeps serving
//
// Workers ignore TTIN, TTOU, HUP and USR2, so `pkill -TTIN myapp` cannot stop
// them. A worker that receives TERM or QUIT itself drains gracefully and exits
// (the master re-forks it: it did not ask for that exit).
//
// # Lifecycle
//
// Crashed workers, and workers silent for Timeout (killed), are re-forked
// with backoff (RestartDelay, RestartsPerMinute); what queued on their
// socket meanwhile waits for the new one. Workers are recycled after
// MaxRequests, above MaxMemory or past MaxUptime, and replaced on HUP: the
// replacement starts beside the old worker, on the same socket, and the old
// one drains only once the new one is ready, so no request fails.
//
// # Monitor
//
// The master serves an ECV monitor for load balancers on MonitorAddr
// (default: the application port + 1): GET /ecv answers 200 AVAILABLE, 400
// DISABLED (taken out of rotation with POST /ecv/disable, or shutting
// down) or 500 WARNING (no worker ready, or MonitorProbe failing); GET /
// answers a JSON Status.
//
// # Extensions
//
// Options.Extensions run in the master and act on it through a Controller;
// package command, a node-cluster-service compatible command surface with
// the flockctl CLI, is one.
//
// # Platforms
//
// flock targets Linux: it needs SO_REUSEPORT load balancing, /proc/self/exe
// and PR_SET_PDEATHSIG. On other systems Serve returns an error.
package flock

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/user"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// Options configure Serve. The zero value of every field means its documented
// default. Every process (master and workers) evaluates the same Options,
// because every process runs the same main; nothing is serialised between
// them.
type Options struct {
	// Addr is the TCP address to serve, "host:port". Default: ":$PORT" when
	// the PORT environment variable is set, else ":5000". Port 0 picks a free
	// port once and every worker shares it.
	Addr string

	// Workers is the number of worker processes. Default: $WEB_CONCURRENCY
	// when set, else runtime.NumCPU().
	Workers int

	// WorkerGOMAXPROCS is the GOMAXPROCS of each worker. Default: NumCPU
	// divided by the number of worker slots (at least 1), computed when the
	// worker is started, unless the environment already sets GOMAXPROCS. Many
	// single-threaded workers beat few multi-threaded ones on a prefork
	// server: each worker's scheduler then never fights the others for cores.
	WorkerGOMAXPROCS int

	// ShutdownTimeout bounds a graceful stop (QUIT, TERM, TTOU): a worker
	// still running after it is killed. Default 30s.
	ShutdownTimeout time.Duration

	// DrainDelay is how long workers keep serving after QUIT or TERM before
	// they stop accepting, so that load balancers watching the monitor notice
	// first. Default 0.
	DrainDelay time.Duration

	// RestartDelay is the wait before a crashed worker is re-forked. A slot
	// that keeps crashing doubles it on every crash within a minute, up to
	// 15s. Default 100ms.
	RestartDelay time.Duration

	// RestartsPerMinute is how many crashes a slot may have within a minute.
	// Past it the master gives up on that slot; when every slot has given up,
	// Serve returns an error. Default 10.
	RestartsPerMinute int

	// BootTimeout bounds a worker's start: a worker not ready (Init
	// returned, listening) within it is killed and counts as a crash.
	// Default 60s.
	BootTimeout time.Duration

	// Timeout is the heartbeat: a worker silent for Timeout is asked for a
	// sign of life and killed (then replaced) if it does not answer within
	// a second. Default 30s.
	Timeout time.Duration

	// MaxRequests recycles a worker (readiness-gated replacement) after it
	// has served this many requests, plus a random jitter of up to 10 % so
	// that workers do not recycle together. Default 0: never.
	MaxRequests int

	// MaxMemory recycles a worker whose resident memory exceeds this many
	// bytes (checked every 2 s). Default 0: never.
	MaxMemory int64

	// MaxUptime recycles a worker after this long (plus up to 10 %
	// jitter). Default 0: never.
	MaxUptime time.Duration

	// RestartConcurrencyRatio sets how many workers a rolling restart (HUP)
	// replaces at once: 1 + floor(workers × ratio). Default 0.33.
	RestartConcurrencyRatio float64

	// UpgradeTimeout bounds a USR2 binary upgrade: a new master whose
	// workers are not all ready within it is killed, and the old master
	// keeps serving. Default 2 × BootTimeout.
	UpgradeTimeout time.Duration

	// IdleTimeout closes idle keep-alive connections. Default 30s.
	IdleTimeout time.Duration

	// ReadHeaderTimeout bounds reading a request's headers (slow-loris).
	// Default 10s.
	ReadHeaderTimeout time.Duration

	// Init, when set, runs in each worker before it starts accepting (warm
	// caches, open pools). A worker whose Init returns an error exits with
	// status 3; it counts as a crash.
	Init func() error

	// Logger receives structured logs. Default slog.Default().
	Logger *slog.Logger

	// OnEvent, when set, is called in the master for every Event, from the
	// master's own goroutine: it must return quickly.
	OnEvent func(Event)

	// PIDFile, when set, is where the master writes its pid (atomically, by
	// rename) at start; it is removed when Serve returns.
	PIDFile string

	// TLSCertFile and TLSKeyFile make every worker serve HTTPS with that
	// certificate. TLSConfig, when set, is used instead (or in addition: the
	// files' certificate is appended to its Certificates).
	TLSCertFile, TLSKeyFile string
	TLSConfig               *tls.Config

	// MonitorAddr is where the master serves the ECV monitor (SPEC §4).
	// Default: the application's host and port + 1 (port 0 when the
	// application's port is 0). "off" turns the monitor off.
	MonitorAddr string

	// MonitorPath is the ECV path; control is at MonitorPath+"/disable" and
	// MonitorPath+"/enable". Default "/ecv".
	MonitorPath string

	// MonitorProbe, when set, is a path on the application port (or a full
	// http:// or https:// URL) that the master GETs before it answers
	// AVAILABLE: a status of 300 or more, a
	// refused connection or a timeout makes the ECV answer WARNING. The
	// result is kept for a second, so a busy load balancer does not load the
	// application.
	MonitorProbe string

	// MonitorProbeTimeout bounds one probe. Default 1s.
	MonitorProbeTimeout time.Duration

	// MonitorReadOnly turns off /ecv/disable and /ecv/enable (they answer
	// 404): only a restart or a signal changes what the monitor reports.
	MonitorReadOnly bool

	// AccessKey, when set, lets callers that are not on loopback use the
	// monitor's control endpoints (as ?accessKey=KEY or "Authorization:
	// Bearer KEY"). Without it only loopback callers may. Extensions such as
	// the command surface use the same key.
	AccessKey string

	// Extensions run in the master beside the workers: the command surface
	// (package command) is one. See Extension.
	Extensions []Extension

	// User and Group, names or numeric ids, run the workers under another
	// identity (the master must be root). Group defaults to User's primary
	// group.
	User, Group string
}

// EventKind names what happened.
type EventKind string

// The events the master reports.
const (
	EventListening EventKind = "listening" // sockets bound; Addr holds the address
	EventForked    EventKind = "forked"    // a worker process started
	EventReady     EventKind = "ready"     // a worker accepts connections
	EventExited    EventKind = "exited"    // a worker exited; Reason says why
	EventSignal    EventKind = "signal"    // the master received a signal
	EventScaled    EventKind = "scaled"    // the number of slots changed; Workers holds it
	EventGaveUp    EventKind = "gave-up"   // a slot crashed too often and is not re-forked
	EventShutdown  EventKind = "shutdown"  // a shutdown began; Reason says which
	EventStopped   EventKind = "stopped"   // the master is about to return from Serve
	EventMonitor   EventKind = "ecv"       // taken out of rotation or back in; Reason says which
	EventRoll      EventKind = "roll"      // a rolling restart began, finished or failed; Reason says
	EventUpgrade   EventKind = "upgrade"   // a binary upgrade began, handed over or failed; Reason says
)

// Why a worker started (Event.Reason for EventForked); a replacement
// carries the reason of the replacement (ReasonRestart, ReasonRecycle,
// ReasonUpgrade).
const (
	ReasonStart   = "start"   // one of the first workers
	ReasonScale   = "scale"   // TTIN, or a command adding workers
	ReasonFailure = "failure" // re-forked after a crash, timeout or boot timeout
)

// Why a worker exited (Event.Reason for EventExited).
const (
	ReasonCrash       = "crash"        // it exited unasked
	ReasonScaleDown   = "scale-down"   // TTOU
	ReasonShutdown    = "shutdown"     // graceful shutdown
	ReasonKilled      = "killed"       // killed by the master (ShutdownTimeout, INT)
	ReasonRestart     = "restart"      // replaced by a rolling restart (HUP)
	ReasonRecycle     = "recycle"      // replaced after MaxRequests, MaxMemory or MaxUptime
	ReasonUpgrade     = "upgrade"      // drained after a new master took over (USR2)
	ReasonAdopt       = "adopt"        // replaced by one that also serves a removed worker's socket (TTOU)
	ReasonTimeout     = "timeout"      // killed: did not answer the heartbeat within Timeout
	ReasonBootTimeout = "boot-timeout" // killed: not ready within BootTimeout
)

// Event is one thing the master did or saw.
type Event struct {
	Time   time.Time
	Kind   EventKind
	PID    int       // the worker's pid, for worker events
	Slot   int       // the worker's slot, for worker and slot events
	Reason string    // why: for EventForked, EventExited, EventShutdown and others
	Status int       // exit status for EventExited; -1 when a signal ended it
	Signal os.Signal // the signal received (EventSignal) or that ended the worker
	// Workers is the number of worker slots after the event (EventScaled).
	Workers int
	// Addr and Monitor are the listening addresses of the application and
	// of the monitor ("" when off) (EventListening).
	Addr, Monitor string
	// Delay is the wait before the slot's next worker (EventExited, crash).
	Delay time.Duration
}

// Version is flock's version.
const Version = "0.1.0"

// ErrNotReady is in the error of a rolling restart that stopped because a
// new worker did not become ready.
var ErrNotReady = errors.New("a new worker did not become ready")

// ErrInterrupted is returned by Serve in the master after SIGINT.
var ErrInterrupted = errors.New("flock: interrupted by SIGINT")

// Environment variables the master sets for its workers.
const (
	envWorker    = "FLOCK_WORKER"     // the worker's slot number
	envMasterPID = "FLOCK_MASTER_PID" // so a worker can tell its master is gone
	envSpares    = "FLOCK_SPARES"     // how many spare sockets follow fd 4
)

// Exit status of a worker whose Init failed or that could not start serving.
const exitBootFailure = 3

// IsWorker reports whether this process is a worker started by a flock master.
func IsWorker() bool {
	_, ok := os.LookupEnv(envWorker)
	return ok
}

// WorkerSlot returns the slot number of this worker, or -1 in the master.
func WorkerSlot() int {
	n, err := strconv.Atoi(os.Getenv(envWorker))
	if err != nil {
		return -1
	}
	return n
}

// Serve serves h until told to stop. In the master it binds the sockets,
// starts and supervises the workers, and returns nil after a graceful
// shutdown, ErrInterrupted after SIGINT, or an error if it could not start
// (bad options, busy port) or every worker slot gave up. In a worker it
// serves h on the inherited socket until the master tells it to stop, then
// returns nil.
func Serve(h http.Handler, o Options) error {
	if runtime.GOOS != "linux" {
		return fmt.Errorf("flock: %s is not supported (flock needs Linux: SO_REUSEPORT balancing, /proc/self/exe, PR_SET_PDEATHSIG)", runtime.GOOS)
	}
	c, err := o.resolve(os.Getenv)
	if err != nil {
		return err
	}
	if IsWorker() {
		return runWorker(h, c)
	}
	return runMaster(c)
}

// config is Options with every default filled in and every value checked.
type config struct {
	Options
	host string
	port int
	uid  *uint32 // workers' identity, when Options.User is set
	gid  *uint32
}

const (
	defaultPort              = 5000
	defaultShutdownTimeout   = 30 * time.Second
	defaultRestartDelay      = 100 * time.Millisecond
	maxRestartDelay          = 15 * time.Second
	defaultRestartsPerMinute = 10
	defaultIdleTimeout       = 30 * time.Second
	defaultReadHeaderTimeout = 10 * time.Second
	defaultProbeTimeout      = time.Second
	defaultBootTimeout       = 60 * time.Second
	defaultTimeout           = 30 * time.Second
	defaultConcurrencyRatio  = 0.33
	defaultMonitorPath       = "/ecv"
	monitorOff               = "off"
)

// resolve fills in defaults (explicit option, then environment, then
// built-in) and validates. getenv is a parameter so tests need not touch the
// process environment.
func (o Options) resolve(getenv func(string) string) (*config, error) {
	c := &config{Options: o}
	addr := o.Addr
	if addr == "" {
		if p := getenv("PORT"); p != "" {
			if _, err := parsePort(p); err != nil {
				return nil, fmt.Errorf("flock: PORT=%q: %v", p, err)
			}
			addr = ":" + p
		} else {
			addr = ":" + strconv.Itoa(defaultPort)
		}
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("flock: Addr %q: %v", addr, err)
	}
	if c.port, err = parsePort(port); err != nil {
		return nil, fmt.Errorf("flock: Addr %q: %v", addr, err)
	}
	c.host, c.Addr = host, addr

	switch {
	case o.Workers < 0:
		return nil, fmt.Errorf("flock: Workers %d: must be at least 1 (0 means the default)", o.Workers)
	case o.Workers == 0:
		c.Workers = runtime.NumCPU()
		if s := getenv("WEB_CONCURRENCY"); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < 1 {
				return nil, fmt.Errorf("flock: WEB_CONCURRENCY=%q: not a positive integer", s)
			}
			c.Workers = n
		}
	}
	if o.WorkerGOMAXPROCS < 0 {
		return nil, fmt.Errorf("flock: WorkerGOMAXPROCS %d: must not be negative", o.WorkerGOMAXPROCS)
	}
	if o.MaxRequests < 0 {
		return nil, fmt.Errorf("flock: MaxRequests %d: must not be negative (0 means never)", o.MaxRequests)
	}
	if o.MaxMemory < 0 {
		return nil, fmt.Errorf("flock: MaxMemory %d: must not be negative (0 means never)", o.MaxMemory)
	}
	if r := o.RestartConcurrencyRatio; r < 0 || r > 1 || r != r {
		return nil, fmt.Errorf("flock: RestartConcurrencyRatio %v: must be from 0 to 1 (0 means 0.33)", r)
	}
	if c.RestartConcurrencyRatio == 0 {
		c.RestartConcurrencyRatio = defaultConcurrencyRatio
	}
	if o.RestartsPerMinute < 0 {
		return nil, fmt.Errorf("flock: RestartsPerMinute %d: must not be negative", o.RestartsPerMinute)
	}
	if c.RestartsPerMinute == 0 {
		c.RestartsPerMinute = defaultRestartsPerMinute
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"ShutdownTimeout", &c.ShutdownTimeout, defaultShutdownTimeout},
		{"DrainDelay", &c.DrainDelay, 0},
		{"RestartDelay", &c.RestartDelay, defaultRestartDelay},
		{"IdleTimeout", &c.IdleTimeout, defaultIdleTimeout},
		{"ReadHeaderTimeout", &c.ReadHeaderTimeout, defaultReadHeaderTimeout},
		{"MonitorProbeTimeout", &c.MonitorProbeTimeout, defaultProbeTimeout},
		{"BootTimeout", &c.BootTimeout, defaultBootTimeout},
		{"Timeout", &c.Timeout, defaultTimeout},
		{"MaxUptime", &c.MaxUptime, 0},
		{"UpgradeTimeout", &c.UpgradeTimeout, 0}, // default below: 2 × BootTimeout
	} {
		if *d.v < 0 {
			return nil, fmt.Errorf("flock: %s %v: must not be negative", d.name, *d.v)
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if c.UpgradeTimeout == 0 {
		c.UpgradeTimeout = 2 * c.BootTimeout
	}
	if err := c.resolveMonitor(); err != nil {
		return nil, err
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if (o.TLSCertFile == "") != (o.TLSKeyFile == "") {
		return nil, fmt.Errorf("flock: TLSCertFile %q and TLSKeyFile %q: set both or neither", o.TLSCertFile, o.TLSKeyFile)
	}
	if o.TLSCertFile != "" {
		if _, err := tls.LoadX509KeyPair(o.TLSCertFile, o.TLSKeyFile); err != nil {
			return nil, fmt.Errorf("flock: TLSCertFile %q, TLSKeyFile %q: %v", o.TLSCertFile, o.TLSKeyFile, err)
		}
	}
	if err := c.resolveIdentity(); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *config) resolveMonitor() error {
	if c.MonitorPath == "" {
		c.MonitorPath = defaultMonitorPath
	}
	if !strings.HasPrefix(c.MonitorPath, "/") || c.MonitorPath == "/" {
		return fmt.Errorf("flock: MonitorPath %q: must start with / and not be / (the status page)", c.MonitorPath)
	}
	if p := c.MonitorProbe; p != "" && !strings.HasPrefix(p, "/") && !strings.HasPrefix(p, "http://") && !strings.HasPrefix(p, "https://") {
		return fmt.Errorf("flock: MonitorProbe %q: must be a path starting with / or an http(s):// URL", p)
	}
	switch c.MonitorAddr {
	case monitorOff:
		return nil
	case "":
		port := 0
		if c.port != 0 {
			port = c.port + 1
		}
		if port > 65535 {
			return fmt.Errorf("flock: MonitorAddr: the default (application port + 1) is %d; set MonitorAddr", port)
		}
		c.MonitorAddr = net.JoinHostPort(c.host, strconv.Itoa(port))
		return nil
	}
	_, port, err := net.SplitHostPort(c.MonitorAddr)
	if err == nil {
		_, err = parsePort(port)
	}
	if err != nil {
		return fmt.Errorf("flock: MonitorAddr %q: %v (or %q to turn the monitor off)", c.MonitorAddr, err, monitorOff)
	}
	return nil
}

func parsePort(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > 65535 {
		return 0, fmt.Errorf("port %q is not a number from 0 to 65535", s)
	}
	return n, nil
}

// resolveIdentity turns User and Group into numeric ids.
func (c *config) resolveIdentity() error {
	if c.User == "" && c.Group == "" {
		return nil
	}
	var gid string
	if c.User != "" {
		u, err := user.Lookup(c.User)
		if err != nil {
			if u, err = user.LookupId(c.User); err != nil {
				return fmt.Errorf("flock: User %q: no such user", c.User)
			}
		}
		uid, _ := strconv.ParseUint(u.Uid, 10, 32)
		v := uint32(uid)
		c.uid, gid = &v, u.Gid
	}
	if c.Group != "" {
		g, err := user.LookupGroup(c.Group)
		if err != nil {
			if g, err = user.LookupGroupId(c.Group); err != nil {
				return fmt.Errorf("flock: Group %q: no such group", c.Group)
			}
		}
		gid = g.Gid
	}
	if gid == "" { // Group alone: keep the master's user
		gid = strconv.Itoa(os.Getgid())
	}
	n, _ := strconv.ParseUint(gid, 10, 32)
	v := uint32(n)
	c.gid = &v
	if c.uid == nil {
		u := uint32(os.Getuid())
		c.uid = &u
	}
	if os.Geteuid() != 0 && (int(*c.uid) != os.Geteuid() || int(*c.gid) != os.Getegid()) {
		return fmt.Errorf("flock: User %q, Group %q: running workers as another user needs root", c.User, c.Group)
	}
	return nil
}
