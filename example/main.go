// Command example is the flock demo: a hello-world service on the defaults
// (port 5000, one worker per CPU). Every flock option is a flag.
//
//	go run ./example -workers 2
//	kill -TTIN <master pid>   # one more worker
//	curl -i localhost:5000/sleep?d=5s & kill -TERM <master pid>   # graceful
//	curl localhost:5001/ecv                  # what a load balancer sees
//	go run ./example -access-key s3cret &   then   go run ./cmd/flockctl -key s3cret workers
//
// Exit status: 0 after a graceful shutdown, 130 after SIGINT, 1 when it
// could not start (bad flag, busy port) or every worker kept crashing.
package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/flockhq/flock"
	"github.com/flockhq/flock/command"
)

func main() {
	var o flock.Options
	flag.StringVar(&o.Addr, "addr", "", "listen address (default :$PORT, else :5000)")
	flag.IntVar(&o.Workers, "workers", 0, "worker processes (default $WEB_CONCURRENCY, else the number of CPUs)")
	flag.IntVar(&o.WorkerGOMAXPROCS, "gomaxprocs", 0, "GOMAXPROCS of each worker (default CPUs / workers)")
	flag.DurationVar(&o.ShutdownTimeout, "shutdown-timeout", 0, "graceful stop bound before workers are killed (default 30s)")
	flag.DurationVar(&o.DrainDelay, "drain-delay", 0, "keep serving this long after QUIT/TERM before draining")
	flag.DurationVar(&o.RestartDelay, "restart-delay", 0, "wait before re-forking a crashed worker (default 100ms)")
	flag.IntVar(&o.RestartsPerMinute, "restarts-per-minute", 0, "crashes a slot may have per minute before it is given up (default 10)")
	flag.DurationVar(&o.IdleTimeout, "idle-timeout", 0, "close idle keep-alive connections after (default 30s)")
	flag.DurationVar(&o.ReadHeaderTimeout, "read-header-timeout", 0, "bound on reading request headers (default 10s)")
	flag.StringVar(&o.PIDFile, "pidfile", "", "write the master's pid here")
	flag.StringVar(&o.PIDDir, "pid-dir", "", "write master.PID.pid and worker.PID.pid files here")
	flag.BoolVar(&o.Single, "single", false, "serve in this one process: no master, no workers (or FLOCK_SINGLE=1)")
	flag.StringVar(&o.TLSCertFile, "tls-cert", "", "serve HTTPS with this certificate file")
	flag.StringVar(&o.TLSKeyFile, "tls-key", "", "and this key file")
	flag.DurationVar(&o.BootTimeout, "boot-timeout", 0, "a worker not ready within this is killed (default 60s)")
	flag.DurationVar(&o.Timeout, "timeout", 0, "heartbeat: a worker silent this long is killed and replaced (default 30s)")
	flag.IntVar(&o.MaxRequests, "max-requests", 0, "recycle a worker after this many requests, plus up to 10% jitter (0: never)")
	flag.IntVar(&o.MaxConnections, "max-connections", 0, "recycle a worker after this many accepted connections, plus up to 10% jitter (0: never)")
	flag.Int64Var(&o.MaxMemory, "max-memory", 0, "recycle a worker above this RSS in bytes (0: never)")
	flag.DurationVar(&o.MaxUptime, "max-uptime", 0, "recycle a worker after this long (0: never)")
	flag.Float64Var(&o.RestartConcurrencyRatio, "restart-concurrency-ratio", 0, "HUP replaces 1 + floor(workers × ratio) at once (default 0.33)")
	flag.DurationVar(&o.UpgradeTimeout, "upgrade-timeout", 0, "USR2: a new master not ready within this is killed (default 2 × boot timeout)")
	flag.StringVar(&o.MonitorAddr, "monitor", "", `ECV monitor address (default: app port + 1; "off" turns it off)`)
	flag.StringVar(&o.MonitorPath, "monitor-path", "", "ECV path (default /ecv)")
	flag.StringVar(&o.MonitorProbe, "monitor-probe", "", "path on the app port (or URL) the ECV checks before answering AVAILABLE")
	flag.DurationVar(&o.MonitorProbeTimeout, "monitor-probe-timeout", 0, "bound on one probe (default 1s)")
	flag.BoolVar(&o.MonitorReadOnly, "monitor-read-only", false, "turn off POST /ecv/disable and /ecv/enable")
	flag.StringVar(&o.AccessKey, "access-key", os.Getenv("FLOCK_ACCESS_KEY"), "access key of the command surface (flockctl) and the monitor's control from other hosts (default $FLOCK_ACCESS_KEY)")
	var co command.Options
	flag.StringVar(&co.Addr, "command-addr", "", "command surface address, bound when -access-key is set (default localhost:11987)")
	flag.BoolVar(&co.Console, "console", false, "read commands from the terminal")
	flag.StringVar(&o.User, "user", "", "run workers as this user (master must be root)")
	flag.StringVar(&o.Group, "group", "", "run workers with this group")
	verbose := flag.Bool("v", false, "debug logs")
	jsonLogs := flag.Bool("log-json", false, "logs as JSON lines")
	flag.Parse()

	opts := &slog.HandlerOptions{Level: slog.LevelInfo}
	if *verbose {
		opts.Level = slog.LevelDebug
	}
	var h slog.Handler = slog.NewTextHandler(os.Stderr, opts)
	if *jsonLogs {
		h = slog.NewJSONHandler(os.Stderr, opts)
	}
	o.Logger = slog.New(h)
	co.Version = "example"
	o.Extensions = []flock.Extension{command.New(co)}

	err := flock.Serve(handler(), o)
	switch {
	case err == nil:
	case errors.Is(err, flock.ErrInterrupted):
		os.Exit(130)
	default:
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func handler() http.Handler {
	pid := strconv.Itoa(os.Getpid())
	hello := func(w http.ResponseWriter) {
		w.Header().Set("X-Worker-Pid", pid)
		fmt.Fprintf(w, "Hello from worker %s\n", pid)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { hello(w) })
	mux.HandleFunc("/sleep", func(w http.ResponseWriter, r *http.Request) {
		d, err := time.ParseDuration(r.URL.Query().Get("d"))
		if err != nil {
			http.Error(w, "d: "+err.Error(), http.StatusBadRequest)
			return
		}
		select {
		case <-time.After(d):
		case <-r.Context().Done():
			return
		}
		hello(w)
	})
	return mux
}
