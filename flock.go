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
// Run is the same for any server (an *http.Server of your own, gRPC
// through GracefulStopper, a raw TCP server), and Options.Listeners adds
// named addresses beside Addr, each served by every worker. Supervise runs
// a program flock did not build, in any language, as the workers (the
// flock command, cmd/flock, is Supervise with flags).
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
// MaxRequests or MaxConnections, above MaxMemory or past MaxUptime, and
// replaced on HUP: the
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
// Options.Extensions run in the master and act on it through a Controller
// (add, restart, upgrade or stop workers, shut down, read the Status);
// package command, a node-cluster-service compatible command surface with
// the flockctl CLI, is one. Events reach OnEvent and the extensions on a
// goroutine of their own, so a callback may call the Controller. A worker
// can send the extensions data with Report (package metrics sends its
// registry), and an extension can serve paths on the monitor with
// Controller.Handle.
//
// # Source layout
//
// One file per responsibility: master.go (the loop that owns all state),
// state.go (slot and worker states and their transitions), spawn.go (the
// seam to a worker process), protocol.go (flock's own kind of worker, both
// ends of its control socket), binary.go (pinned executables),
// supervise.go (readiness, heartbeat, exits, back-off), scale.go,
// shutdown.go, roll.go (readiness-gated replacement), recycle.go,
// sockets.go (slot sockets and spares), resources.go (the descriptor
// budget), upgrade.go and inherit.go (USR2, both sides), events.go, status.go, control.go (the
// Controller), ecv.go (the monitor), signals.go, ratelimit.go, pidfile.go,
// sdnotify.go, run.go (Run, Worker, Listener), worker.go (the worker
// side), server.go (Server, the servers of a worker and their drain, the
// lossless one of *http.Server, with conntrack.go), single.go (Options.Single), options.go
// (defaults and validation); for Supervise: program.go (Program),
// activation.go (the foreign kind of worker: socket activation and the
// exec shim), notify.go (its NOTIFY_SOCKET), output.go (its output),
// group.go (worker groups), and activated.go (the master's own sockets
// from systemd); report.go (what workers send the extensions: Report);
// statuspage.go and statuspage.html (the monitor's page for people).
//
// # Platforms
//
// flock targets Linux: it needs SO_REUSEPORT load balancing, /proc/self/exe
// and PR_SET_PDEATHSIG. On other systems Serve returns an error.
package flock

import (
	"crypto/tls"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"strconv"
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

	// Listeners are more addresses to listen on, beside Addr: an HTTPS port
	// beside an HTTP one, a gRPC port, an admin port. Every worker serves
	// them all (Serve: the handler on each; Run: the Server given to each).
	Listeners []Listener

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

	// MaxConnections recycles a worker after it has accepted this many
	// connections (cluster2's connThreshold), plus a jitter of up to 10 %.
	// Default 0: never.
	MaxConnections int

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

	// OnEvent, when set, is called in the master for every Event, in order,
	// on a goroutine of its own (the master does not wait for it), once the
	// state the event reports shows in Status. When Serve returns it has
	// heard every event, EventStopped last, unless a call hung for 5 s.
	OnEvent func(Event)

	// PIDFile, when set, is where the master writes its pid (atomically, by
	// rename) at start; it is removed when Serve returns.
	PIDFile string

	// TLSCertFile and TLSKeyFile make every worker serve HTTPS with that
	// certificate. TLSConfig, when set, is used instead (or in addition: the
	// files' certificate is appended to its Certificates).
	TLSCertFile, TLSKeyFile string
	TLSConfig               *tls.Config

	// MonitorAddr is where the master serves the ECV monitor.
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

	// PIDDir, when set, is a directory (created if missing) where the
	// master writes master.PID.pid and one worker.PID.pid per worker, each
	// holding the pid, as cluster2's pids option: removed when the process
	// exits, and files left by processes that are gone are removed at start.
	PIDDir string

	// Single serves the handler in the calling process, with no master and
	// no workers (cluster2's cluster: false): for development, debuggers and
	// profilers. FLOCK_SINGLE=1 in the environment switches it on too. Init
	// runs first; TERM and QUIT drain gracefully within ShutdownTimeout, INT
	// stops at once; TLS, the timeouts, PIDFile and PIDDir apply. There is
	// no monitor, no extension, no recycling, and TTIN, TTOU, HUP and USR2
	// are ignored.
	Single bool

	// WorkerGroups are more programs under the master, beside its own
	// workers (the first group, on Addr and Listeners, with Workers
	// workers: Supervise's Program, or this program under Serve and Run):
	// each with its own command line, workers and listeners, or none. TTIN
	// and TTOU act on the first group; HUP rolls every group.
	WorkerGroups []WorkerGroup
}

// Version is flock's version.
const Version = "0.1.0"

// ErrInterrupted is returned by Serve in the master after SIGINT.
var ErrInterrupted = errors.New("flock: interrupted by SIGINT")

// Environment variables the master sets for its workers.
const (
	envWorker    = "FLOCK_WORKER"     // the worker's slot number
	envMasterPID = "FLOCK_MASTER_PID" // so a worker can tell its master is gone
	envSpares    = "FLOCK_SPARES"     // how many spare sockets follow fd 4
	envSingle    = "FLOCK_SINGLE"     // 1: Options.Single
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
	return start(o, handlerSetup(h))
}
