package flock

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Foreign workers (Supervise): a program flock did not build, given its
// sockets by systemd's socket-activation protocol and heard through a
// NOTIFY_SOCKET of its own (notify.go).
//
// LISTEN_PID must be the program's own pid, which exists only after fork,
// and os/exec cannot change the environment between fork and exec. So the
// master starts this binary again (pinned, as for its own workers) with
// FLOCK_EXEC set, and init below sets LISTEN_PID to its pid and execve's
// the program, which keeps the pid. It runs in init so that none of the
// application's code runs in that short-lived process.

const envExec = "FLOCK_EXEC" // the program to execute

// Exit codes of a start that failed before the program ran, as a shell's.
const (
	exitNotExecutable = 126
	exitNotFound      = 127
)

func init() {
	if v, ok := os.LookupEnv(envExec); ok {
		execProgram(v)
	}
}

func execProgram(path string) {
	os.Unsetenv(envExec)
	// Nothing but stdio and the sockets, as systemd passes them: not
	// flock's binary, which follows them, nor what the master inherited
	// without knowing it.
	n, _ := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	closeOnExecFrom(3 + n)
	pid := strconv.Itoa(os.Getpid())
	os.Setenv("LISTEN_PID", pid)
	if os.Getenv("WATCHDOG_USEC") != "" {
		os.Setenv("WATCHDOG_PID", pid)
	}
	err := unix.Exec(path, os.Args, os.Environ())
	fmt.Fprintf(os.Stderr, "flock: worker %s: exec %s: %v\n", pid, path, err)
	if errors.Is(err, unix.ENOENT) {
		os.Exit(exitNotFound)
	}
	os.Exit(exitNotExecutable)
}

// closeOnExecFrom marks every descriptor from fd on close-on-exec.
func closeOnExecFrom(fd int) {
	if unix.CloseRange(uint(fd), math.MaxUint32, unix.CLOSE_RANGE_CLOEXEC) == nil {
		return
	}
	ents, _ := os.ReadDir("/proc/self/fd") // kernels before 5.11
	for _, e := range ents {
		if n, err := strconv.Atoi(e.Name()); err == nil && n >= fd {
			unix.CloseOnExec(n)
		}
	}
}

// systemdEnv are the variables systemd gives a service. The master may be
// one: its own must not reach the workers.
var systemdEnv = []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"}

// foreignLauncher starts prog as workers.
type foreignLauncher struct {
	log  *slog.Logger
	prog *Program
	t    time.Duration
}

type foreignProc struct {
	cmd      *exec.Cmd
	stop     syscall.Signal
	watchdog bool
	notify   *notifySocket
	log      *slog.Logger

	mu     sync.Mutex
	reaped bool // about to be: its pid, and so its group's id, may be reused
}

func (l foreignLauncher) launch(s launchSpec) (proc, error) {
	// Socket activation hands over listening sockets: the program may
	// accept at once, and may not call listen itself.
	socks, names := slices.Clone(s.socks), slices.Concat(s.names, s.spareNames)
	for _, sp := range s.spares {
		socks = append(socks, sp.f)
	}
	for _, f := range socks {
		if err := listen(f); err != nil {
			return nil, fmt.Errorf("listen on the slot's socket: %w", err)
		}
	}
	ns, err := newNotifySocket()
	if err != nil {
		return nil, err
	}
	env := slices.DeleteFunc(slices.Clone(s.env), func(kv string) bool {
		name, _, _ := strings.Cut(kv, "=")
		return slices.Contains(systemdEnv, name)
	})
	env = append(env, l.prog.Env...)
	binFD := strconv.Itoa(3 + len(socks))
	if len(socks) > 0 { // a group with no listener gets none, as a service with no socket unit
		env = append(env, "LISTEN_FDS="+strconv.Itoa(len(socks)), "LISTEN_FDNAMES="+strings.Join(names, ":"))
	}
	env = append(env, "NOTIFY_SOCKET="+ns.name, envExec+"="+s.program)
	if l.prog.Watchdog {
		env = append(env, "WATCHDOG_USEC="+strconv.FormatInt(l.t.Microseconds(), 10))
	}
	cmd := exec.Command("/proc/self/fd/" + binFD)
	cmd.Args, cmd.Dir, cmd.Env = l.prog.argv(), l.prog.Dir, env
	out, err := l.prog.Output.open()
	if err != nil {
		ns.Close()
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = out.stdout, out.stderr
	cmd.ExtraFiles = append(socks, s.bin.f)
	// Its own process group, so that a kill reaches what it started.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM, Credential: s.cred, Setpgid: true}
	if err := cmd.Start(); err != nil {
		ns.Close()
		out.close()
		return nil, err
	}
	out.started(l.prog.Name, cmd.Process.Pid)
	p := &foreignProc{cmd: cmd, stop: l.prog.StopSignal, watchdog: l.prog.Watchdog, notify: ns, log: l.log.With("pid", cmd.Process.Pid)}
	var said sync.WaitGroup // what it says, then its exit
	said.Add(1)
	go func() {
		defer said.Done()
		ns.read(p, s)
	}()
	if d := l.prog.Ready; d != ReadyNotify {
		said.Add(1)
		go func() {
			defer said.Done()
			p.readyAfter(max(d, 0), s)
		}()
	}
	go p.wait(s, &said)
	return p, nil
}

func (p *foreignProc) Pid() int { return p.cmd.Process.Pid }
func (p *foreignProc) Stop()    { p.cmd.Process.Signal(p.stop) }
func (p *foreignProc) Ping()    {} // it cannot be asked: WATCHDOG=1 comes on its own

// Kill kills its process group, while the pid is still its own (a zombie
// at least); wait kills the group once it has exited anyway.
func (p *foreignProc) Kill() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.reaped {
		unix.Kill(-p.Pid(), unix.SIGKILL)
	}
}
func (p *foreignProc) watched() bool { return p.watchdog }

// readyAfter says the program is ready d after its start, unless it exits
// first.
func (p *foreignProc) readyAfter(d time.Duration, s launchSpec) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-p.notify.closing:
		return
	}
	// Exited, though wait has not said so yet: not ready.
	var info unix.Siginfo
	if unix.Waitid(unix.P_PID, p.Pid(), &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil) == nil && info.Signo != 0 {
		return
	}
	select {
	case s.out <- procEvent{p: p, kind: procReady}:
	case <-p.notify.closing:
	case <-s.done:
	}
}

// wait reaps the program, kills what it left in its process group, and
// reports its exit after what it said before.
func (p *foreignProc) wait(s launchSpec, said *sync.WaitGroup) {
	// Once exited but not reaped, its pid cannot be reused: kill the
	// group it led then, what it left behind included.
	var info unix.Siginfo
	for unix.Waitid(unix.P_PID, p.Pid(), &info, unix.WEXITED|unix.WNOWAIT, nil) == unix.EINTR {
	}
	p.mu.Lock()
	unix.Kill(-p.Pid(), unix.SIGKILL)
	p.reaped = true
	p.mu.Unlock()
	p.cmd.Wait()
	p.notify.drain()
	said.Wait()
	p.notify.Close()
	select {
	case s.out <- procEvent{p: p, kind: procExited, state: p.cmd.ProcessState}:
	case <-s.done:
	}
}

// listen makes a slot's socket listen, as a worker of flock's own does
// when it is ready. The backlog is the kernel's maximum (somaxconn), as Go
// asks for; listening again only changes it.
func listen(f *os.File) error {
	return withFD(f, func(fd int) error { return unix.Listen(fd, 65535) })
}
