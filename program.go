package flock

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// Program is a server flock did not build, run as the workers: any
// language, unchanged, if it takes its listening sockets the way systemd
// hands them over (socket activation). See Supervise.
type Program struct {
	// Path is the program: a path, or a name looked up in PATH. It is
	// looked up again at every start, so a HUP runs what is on disk now.
	Path string
	// Args are its arguments, without the program's name.
	Args []string
	// Dir is its working directory; "" means the master's.
	Dir string
	// Env is added to the environment it inherits from the master.
	Env []string
	// Name labels its output (OutputPrefix); "" means Path's last element.
	Name string
	// Output is where its standard output and error go; the zero value
	// is the master's own.
	Output Output

	// Ready is when a new worker counts as ready, which is what a roll,
	// TTIN and adoption wait for before the old worker drains:
	//
	//	0            1 s after it started, or when it says READY=1 if sooner
	//	d > 0        d after it started, or at READY=1 if sooner
	//	ReadyNotify  when it says READY=1 (sd_notify), and not before
	//	ReadyAtOnce  as soon as it started
	//
	// Only ReadyNotify knows. With the others, a program slower to accept
	// than the rule assumes delays the connections queued on its socket
	// (none is lost: the socket is the master's), and a program broken by a
	// release is found out only when it crashes, after the old worker has
	// gone.
	Ready time.Duration

	// Watchdog makes WATCHDOG=1 (sd_notify) the heartbeat: the program is
	// given WATCHDOG_USEC = Options.Timeout and is killed and replaced when
	// silent that long. Off, a foreign program is never killed for silence.
	Watchdog bool

	// StopSignal asks a worker to drain and exit; it is killed (with its
	// process group) after ShutdownTimeout. Zero means SIGTERM.
	StopSignal syscall.Signal
}

// The Ready rules that are not durations.
const (
	ReadyNotify time.Duration = -1
	ReadyAtOnce time.Duration = -2
)

const defaultReady = time.Second

// ErrNotFound is in the error of a Program that is not on disk.
var ErrNotFound = errors.New("not found")

// Supervise runs p as the workers, under the same master as Serve: one
// socket per worker slot (and listener) bound by the master, the signals,
// rolls, recycling, the monitor and the extensions. Each worker gets its
// sockets by systemd's socket-activation protocol: fd 3 onwards, with
// LISTEN_FDS, LISTEN_PID (its own pid) and LISTEN_FDNAMES (the listeners'
// names), listening already. Programs that work under
// systemd-socket-activate work unchanged: Node's server.listen({fd: 3}),
// gunicorn, go-systemd's activation package, Rust's listenfd.
//
// It must accept on every socket it is given: after a TTOU, a removed
// slot's socket is kept and handed to the next workers as one more fd of
// the same name (unless net.ipv4.tcp_migrate_req is 1), and connections
// on a socket nobody accepts on wait there until the next roll.
//
// Each worker has its own NOTIFY_SOCKET (sd_notify): READY=1, WATCHDOG=1,
// STATUS= and STOPPING=1 are heard from its main process, as systemd's
// NotifyAccess=main. Requests are not counted (the program does not tell),
// so MaxRequests and MaxConnections do not apply; MaxMemory is the main
// process's RSS. A worker is its own process group: stopping signals its
// main process, killing kills the group, and what the program left
// behind when it exits is killed too.
//
// A program that binds the port itself instead of using its socket fails
// to (the port is taken by the master's sockets) and, crashing at every
// start, is given up.
func Supervise(o Options, p Program) error {
	if err := checkProgram(&p); err != nil {
		return fmt.Errorf("flock: %w", err)
	}
	c, err := o.resolve(os.Getenv)
	switch {
	case err != nil:
		return err
	case c.MaxRequests != 0 || c.MaxConnections != 0:
		return fmt.Errorf("flock: MaxRequests %d, MaxConnections %d: a foreign program does not report what it serves; use MaxMemory or MaxUptime", c.MaxRequests, c.MaxConnections)
	case c.Single:
		return errors.New("flock: Single: a foreign program runs under a master (use Workers 1)")
	case c.Init != nil:
		return errors.New("flock: Init runs in flock's own workers; a foreign program has none")
	}
	if err := c.resolveGroups(&p); err != nil {
		return err
	}
	return runMaster(c)
}

// resolve finds the program as a start would now: an absolute path.
func (p *Program) resolve() (string, error) {
	path := p.Path
	if !strings.Contains(path, "/") {
		found, err := exec.LookPath(path)
		if err != nil {
			return "", fmt.Errorf("program %q: %w in PATH", p.Path, ErrNotFound)
		}
		path = found
	} else if !filepath.IsAbs(path) && p.Dir != "" {
		path = filepath.Join(p.Dir, path)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("program %q: %w", p.Path, err)
	}
	st, err := os.Stat(abs)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return "", fmt.Errorf("program %q: %w (%s)", p.Path, ErrNotFound, abs)
	case err != nil:
		return "", fmt.Errorf("program %q: %w", p.Path, err)
	case st.IsDir() || st.Mode()&0o111 == 0:
		return "", fmt.Errorf("program %q (%s): %w", p.Path, abs, ErrNotExecutable)
	}
	return abs, nil
}

// argv is the program's command line, its name as given.
func (p *Program) argv() []string {
	return slices.Concat([]string{p.Path}, p.Args)
}
