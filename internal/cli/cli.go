// Package cli is what flock's commands share: a flag for every option,
// logs, exit codes, and config files whose keys are the flags' names.
package cli

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/flockhq/flock"
	"github.com/flockhq/flock/command"
)

// Flags are flock.Options and command.Options as command-line flags.
type Flags struct {
	Options  flock.Options
	Command  command.Options
	verbose  bool
	jsonLogs bool
}

// Register defines a flag for every option on fs; http adds those of
// flock's own HTTP server (Serve), which a foreign program has no use for.
func (f *Flags) Register(fs *flag.FlagSet, http bool) {
	o, co := &f.Options, &f.Command
	fs.StringVar(&o.Addr, "addr", "", "listen address (default :$PORT, else :5000)")
	fs.Var(listeners{&o.Listeners}, "listen", "one more listener, NAME=HOST:PORT (repeatable); the workers get each by name")
	fs.IntVar(&o.Workers, "workers", 0, "worker processes (default $WEB_CONCURRENCY, else the number of CPUs)")
	fs.IntVar(&o.WorkerGOMAXPROCS, "gomaxprocs", 0, "GOMAXPROCS of each worker (default CPUs / workers)")
	fs.DurationVar(&o.ShutdownTimeout, "shutdown-timeout", 0, "graceful stop bound before workers are killed (default 30s)")
	fs.DurationVar(&o.DrainDelay, "drain-delay", 0, "keep serving this long after QUIT/TERM before draining")
	fs.DurationVar(&o.RestartDelay, "restart-delay", 0, "wait before re-forking a crashed worker (default 100ms)")
	fs.IntVar(&o.RestartsPerMinute, "restarts-per-minute", 0, "crashes a slot may have per minute before it is given up (default 10)")
	fs.StringVar(&o.PIDFile, "pidfile", "", "write the master's pid here")
	fs.StringVar(&o.PIDDir, "pid-dir", "", "write master.PID.pid and worker.PID.pid files here")
	fs.DurationVar(&o.BootTimeout, "boot-timeout", 0, "a worker not ready within this is killed (default 60s)")
	fs.DurationVar(&o.Timeout, "timeout", 0, "heartbeat: a worker silent this long is killed and replaced (default 30s)")
	fs.Int64Var(&o.MaxMemory, "max-memory", 0, "recycle a worker above this RSS in bytes (0: never)")
	fs.DurationVar(&o.MaxUptime, "max-uptime", 0, "recycle a worker after this long (0: never)")
	fs.Float64Var(&o.RestartConcurrencyRatio, "restart-concurrency-ratio", 0, "HUP replaces 1 + floor(workers × ratio) at once (default 0.33)")
	fs.DurationVar(&o.UpgradeTimeout, "upgrade-timeout", 0, "USR2: a new master not ready within this is killed (default 2 × boot timeout)")
	fs.StringVar(&o.MonitorAddr, "monitor", "", `ECV monitor address (default: app port + 1; "off" turns it off)`)
	fs.StringVar(&o.MonitorPath, "monitor-path", "", "ECV path (default /ecv)")
	fs.StringVar(&o.MonitorProbe, "monitor-probe", "", "path on the app port (or URL) the ECV checks before answering AVAILABLE")
	fs.DurationVar(&o.MonitorProbeTimeout, "monitor-probe-timeout", 0, "bound on one probe (default 1s)")
	fs.BoolVar(&o.MonitorReadOnly, "monitor-read-only", false, "turn off POST /ecv/disable and /ecv/enable")
	fs.StringVar(&o.AccessKey, "access-key", os.Getenv("FLOCK_ACCESS_KEY"), "access key of the command surface (flockctl) and the monitor's control from other hosts (default $FLOCK_ACCESS_KEY)")
	fs.StringVar(&co.Addr, "command-addr", "", "command surface address, bound when -access-key is set (default localhost:11987)")
	fs.BoolVar(&co.Console, "console", false, "read commands from the terminal")
	fs.StringVar(&o.User, "user", "", "run workers as this user (master must be root)")
	fs.StringVar(&o.Group, "group", "", "run workers with this group")
	fs.BoolVar(&f.verbose, "v", false, "debug logs")
	fs.BoolVar(&f.jsonLogs, "log-json", false, "logs as JSON lines")
	if !http {
		return
	}
	fs.BoolVar(&o.Single, "single", false, "serve in this one process: no master, no workers (or FLOCK_SINGLE=1)")
	fs.DurationVar(&o.IdleTimeout, "idle-timeout", 0, "close idle keep-alive connections after (default 30s)")
	fs.DurationVar(&o.ReadHeaderTimeout, "read-header-timeout", 0, "bound on reading request headers (default 10s)")
	fs.StringVar(&o.TLSCertFile, "tls-cert", "", "serve HTTPS with this certificate file")
	fs.StringVar(&o.TLSKeyFile, "tls-key", "", "and this key file")
	fs.IntVar(&o.MaxRequests, "max-requests", 0, "recycle a worker after this many requests, plus up to 10% jitter (0: never)")
	fs.IntVar(&o.MaxConnections, "max-connections", 0, "recycle a worker after this many accepted connections, plus up to 10% jitter (0: never)")
}

// Setup makes the logger the flags ask for and adds the command surface,
// reporting version.
func (f *Flags) Setup(version string) {
	opts := &slog.HandlerOptions{Level: slog.LevelInfo}
	if f.verbose {
		opts.Level = slog.LevelDebug
	}
	var h slog.Handler = slog.NewTextHandler(os.Stderr, opts)
	if f.jsonLogs {
		h = slog.NewJSONHandler(os.Stderr, opts)
	}
	f.Options.Logger = slog.New(h)
	f.Command.Version = version
	f.Options.Extensions = append(f.Options.Extensions, command.New(f.Command))
}

// Exit codes.
const (
	ExitOK          = 0
	ExitFailed      = 1   // could not start (bad option, busy port), or every worker kept crashing
	ExitUsage       = 2   // bad command line or config file
	ExitInterrupted = 130 // SIGINT
)

// Exit ends the program as err says: Serve's, Run's or Supervise's result.
func Exit(err error) {
	switch {
	case err == nil:
		os.Exit(ExitOK)
	case errors.Is(err, flock.ErrInterrupted):
		os.Exit(ExitInterrupted)
	}
	fmt.Fprintln(os.Stderr, err)
	os.Exit(ExitFailed)
}

// listeners is -listen NAME=ADDR.
type listeners struct{ l *[]flock.Listener }

func (v listeners) String() string {
	if v.l == nil {
		return ""
	}
	var s []string
	for _, l := range *v.l {
		s = append(s, l.Name+"="+l.Addr)
	}
	return strings.Join(s, ",")
}

func (v listeners) Set(s string) error {
	name, addr, ok := strings.Cut(s, "=")
	if !ok || name == "" || addr == "" {
		return fmt.Errorf("%q: want NAME=HOST:PORT", s)
	}
	*v.l = append(*v.l, flock.Listener{Name: name, Addr: addr})
	return nil
}

// LoadConfig sets fs's flags from the JSON object in the file at path: a
// key is a flag's name, its value a string, number or boolean (or a list
// of them, for a repeatable flag such as "listen"). A flag set on the
// command line wins over the file. Keys in extra are not flags: they are
// left to the caller, which gets their raw values. Any other key is an
// error naming it.
func LoadConfig(fs *flag.FlagSet, path string, extra ...string) (map[string]json.RawMessage, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(b, &keys); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	rest := map[string]json.RawMessage{}
	for _, k := range slices.Sorted(maps.Keys(keys)) {
		raw := keys[k]
		if slices.Contains(extra, k) {
			rest[k] = raw
			continue
		}
		if fs.Lookup(k) == nil || k == "config" {
			return nil, fmt.Errorf("%s: unknown key %q (the keys are the flags' names: flock -help)", path, k)
		}
		if set[k] {
			continue
		}
		vals, err := scalars(raw)
		if err != nil {
			return nil, fmt.Errorf("%s: key %q: %w", path, k, err)
		}
		for _, v := range vals {
			if err := fs.Set(k, v); err != nil {
				return nil, fmt.Errorf("%s: key %q: %w", path, k, err)
			}
		}
	}
	return rest, nil
}

// scalars is a JSON scalar, or a list of them, as flag values.
func scalars(raw json.RawMessage) ([]string, error) {
	var list []json.RawMessage
	if json.Unmarshal(raw, &list) != nil {
		list = []json.RawMessage{raw}
	}
	var out []string
	for _, r := range list {
		var v any
		if err := json.Unmarshal(r, &v); err != nil {
			return nil, err
		}
		switch v := v.(type) {
		case string:
			out = append(out, v)
		case float64:
			out = append(out, string(r)) // as written: 1e9 stays what the flag parses
		case bool:
			out = append(out, fmt.Sprint(v))
		default:
			return nil, fmt.Errorf("%s: want a string, number or boolean", r)
		}
	}
	return out, nil
}

// Duration is a flag.Value for a duration that may also be one of named
// values (for example -ready notify).
type Duration struct {
	D     *time.Duration
	Names map[string]time.Duration
}

func (d Duration) String() string {
	if d.D == nil {
		return ""
	}
	for n, v := range d.Names {
		if v == *d.D {
			return n
		}
	}
	return d.D.String()
}

func (d Duration) Set(s string) error {
	if v, ok := d.Names[s]; ok {
		*d.D = v
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil || v < 0 {
		return fmt.Errorf("%q: want a duration or one of %q", s, slices.Sorted(maps.Keys(d.Names)))
	}
	*d.D = v
	return nil
}
