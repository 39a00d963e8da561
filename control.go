package flock

import (
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"
)

// Extension runs in the master beside the workers, for features the core
// does not carry itself; the command surface (package command) is one.
// Extensions never run in workers.
type Extension interface {
	// Start is called in the master once the sockets are bound, before any
	// worker starts. An error stops Serve. Controller methods that act on
	// the workers return ErrStarting until every Start has returned.
	Start(c *Controller) error
	// Event is called for every master event, in order, after
	// Options.OnEvent, on a goroutine of its own (not the master's): it may
	// call the Controller. Events reach it once the state they report is
	// visible in Status.
	Event(e Event)
	// Stop is called when Serve is about to return.
	Stop()
}

// Controller is what an Extension may ask of the master. Its methods are
// safe from any goroutine and never deadlock: each that acts on the
// workers runs on the master's own goroutine and waits for the outcome;
// called before the master's loop runs (from Extension.Start) it returns
// ErrStarting, and after the master has stopped, ErrStopped.
type Controller struct {
	m *master
}

// ErrNoSuchWorker is in the error of a Controller call naming a pid that
// is not one of the master's workers.
var ErrNoSuchWorker = errors.New("no worker with pid")

// ErrNotInStart is returned by Controller.Listen and Handle after Start
// has returned.
var ErrNotInStart = errors.New("flock: Listen and Handle work only from Extension.Start")

// Handle has the monitor serve h at path, beside its own paths (the ECV's
// and "/"), from Start only: a metrics endpoint, say. It fails when the
// monitor is off or the path is taken.
func (c *Controller) Handle(path string, h http.Handler) error {
	m := c.m
	if m.phase.Load() != phaseStarting {
		return ErrNotInStart
	}
	mon := m.mon
	if mon == nil || mon.srv == nil {
		return fmt.Errorf("flock: monitor is off, so nothing serves %s", path)
	}
	mon.mu.Lock()
	defer mon.mu.Unlock()
	if path == "/" || path == m.c.MonitorPath || strings.HasPrefix(path, m.c.MonitorPath+"/") || mon.handlers[path] != nil || !strings.HasPrefix(path, "/") {
		return fmt.Errorf("flock: monitor path %q is taken or invalid", path)
	}
	if mon.handlers == nil {
		mon.handlers = map[string]http.Handler{}
	}
	mon.handlers[path] = h
	return nil
}

// Predecessor is the pid of the master this one takes over from by USR2,
// or 0 when it was started afresh. An extension may ask that master's
// extension for state to carry on (package metrics does, for its counts).
func (c *Controller) Predecessor() int { return c.m.pred }

// Listen gives an extension a TCP listener on addr, from Start only. name
// identifies it across a USR2 upgrade: the new master's extension gets the
// same socket back from Listen, so the port is never busy and never closed
// during the handover.
func (c *Controller) Listen(name, addr string) (net.Listener, error) {
	m := c.m
	if m.phase.Load() != phaseStarting {
		return nil, ErrNotInStart
	}
	m.extMu.Lock()
	defer m.extMu.Unlock()
	if _, dup := m.extFiles[name]; dup {
		return nil, fmt.Errorf("flock: listener %q requested twice", name)
	}
	var ln net.Listener
	var err error
	if f := m.inh.listener(name); f != nil {
		ln, err = net.FileListener(f)
		f.Close()
	} else if ln, err = net.Listen("tcp", addr); err != nil {
		err = fmt.Errorf("listen %s: %w", addr, unwrapOpError(err))
	}
	if err != nil {
		return nil, err
	}
	f, err := dupFile(ln.(*net.TCPListener), "flock-"+name)
	if err != nil {
		ln.Close()
		return nil, err
	}
	m.extFiles[name] = f
	return ln, nil
}

// AccessKey is Options.AccessKey.
func (c *Controller) AccessKey() string { return c.m.c.AccessKey }

// Logger is the master's logger.
func (c *Controller) Logger() *slog.Logger { return c.m.log }

// ServerErrorLog is an http.Server.ErrorLog for an extension's server: its
// lines go to the master's logger, at most one a second of each kind (an
// accept loop out of file descriptors retries every few milliseconds).
func (c *Controller) ServerErrorLog() *log.Logger {
	return newLimitedLog(c.m.log, slog.LevelWarn, time.Second)
}

// Status describes the master and its workers now. It reads the accept
// queues on the master's goroutine (waiting for it, as the other methods
// do); from Extension.Start it has no queues yet.
func (c *Controller) Status() Status {
	return c.m.status(c.m.mon)
}

// AddWorkers starts n more workers, as n TTIN signals would. It stops at
// the first that cannot be added (the error wraps ErrNoResources when the
// master is short of file descriptors).
func (c *Controller) AddWorkers(n int) error {
	return c.AddGroupWorkers("", n)
}

// AddGroupWorkers is AddWorkers for the worker group called group ("":
// the first, TTIN's); the error wraps ErrNoSuchGroup if there is none.
func (c *Controller) AddGroupWorkers(group string, n int) error {
	if n < 1 {
		return fmt.Errorf("count %d: must be at least 1", n)
	}
	return c.do(func(m *master) error {
		g := m.groups[0]
		if group != "" {
			if g = m.group(group); g == nil {
				return fmt.Errorf("%w %q (the groups are %q)", ErrNoSuchGroup, group, m.groupNames())
			}
		}
		for i := range n {
			if err := m.addSlot(g); err != nil {
				return fmt.Errorf("%d of %d workers added: %w", i, n, err)
			}
		}
		return nil
	})
}

// RestartOptions say which workers a restart or an upgrade replaces, and
// how.
type RestartOptions struct {
	// PIDs are the workers to replace; none means every worker.
	PIDs []int
	// Group, instead of PIDs, replaces the workers of that worker group.
	Group string
	// Executable is the binary the new workers start from. Default: the
	// file now at os.Executable() (what a deploy replaces).
	Executable string
	// Timeout bounds each new worker's readiness; one not ready within it
	// stops the restart. Default: BootTimeout.
	Timeout time.Duration
}

// Restart replaces workers, readiness-gated, 1 + floor(n ×
// RestartConcurrencyRatio) at a time, and returns how many it replaced.
// A replacement that does not become ready stops it: the error wraps
// ErrNotReady (and ErrBootTimeout when it timed out), and the workers not
// yet replaced keep serving. New workers start with StartRestart and the
// old ones exit with ExitRestart.
func (c *Controller) Restart(o RestartOptions) (int, error) {
	return c.roll(rollRestart, o)
}

// Upgrade is Restart with the reasons StartUpgrade and ExitUpgrade: the
// command surface's upgrade onto another binary.
func (c *Controller) Upgrade(o RestartOptions) (int, error) {
	return c.roll(rollUpgrade, o)
}

func (c *Controller) roll(kind rollKind, o RestartOptions) (int, error) {
	if o.Executable != "" && c.m.c.groups[0].program != nil { // the first group never changes
		return 0, fmt.Errorf("executable %s: a program's workers start from its Program.Path, as on disk at each start; restart runs what is there now", o.Executable)
	}
	exe := o.Executable
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			return 0, err
		}
	}
	bin, err := openBinary(exe, exe) // here, not on the master's goroutine: it reads the file
	if err != nil {
		return 0, err
	}
	res := make(chan rollResult, 1)
	err = c.do(func(m *master) error {
		slots, err := m.slotsOf(o.PIDs)
		if o.Group != "" {
			slots, err = m.slotsOfGroup(o.Group)
		}
		if err != nil {
			return err
		}
		m.binaries = append(m.binaries, bin)
		m.startRoll(&roll{kind: kind, bin: bin, queue: slots, boot: o.Timeout, full: len(o.PIDs) == 0 && o.Group == "",
			width: rollWidth(len(slots), m.c.RestartConcurrencyRatio), result: res})
		return nil
	})
	if err != nil {
		bin.f.Close()
		return 0, err
	}
	r := <-res
	return r.replaced, r.err
}

// StopWorkers drains the workers with the given pids and removes their
// slots (never the last one), killing what still runs after timeout (0
// means ShutdownTimeout). It returns once they, and any replacement that
// was booting beside them, have exited.
func (c *Controller) StopWorkers(pids []int, timeout time.Duration) error {
	var gone []chan struct{}
	err := c.do(func(m *master) error {
		slots, err := m.slotsOf(pids)
		if err != nil {
			return err
		}
		for _, g := range m.groups {
			n := 0
			for _, s := range slots {
				if s.g == g {
					n++
				}
			}
			if n > 0 && n >= m.groupSlots(g) {
				return fmt.Errorf("that would stop every worker of group %q; use a shutdown of the whole service", g.name)
			}
		}
		for _, s := range slots {
			gone = append(gone, s.gone)
			m.retireSlot(s, orDefault(timeout, m.c.ShutdownTimeout))
		}
		m.emit(Event{Kind: EventScaled, Workers: m.activeSlots()})
		return nil
	})
	if err != nil {
		return err
	}
	for _, ch := range gone {
		<-ch
	}
	return nil
}

// Shutdown begins a graceful shutdown of the whole service, as TERM does,
// with timeout (0 means ShutdownTimeout) in place of ShutdownTimeout. It
// returns at once; Serve returns once the workers are gone.
func (c *Controller) Shutdown(timeout time.Duration) error {
	return c.do(func(m *master) error {
		m.stopTimeout = orDefault(timeout, m.c.ShutdownTimeout)
		m.shutdown(nil)
		return nil
	})
}

// Exit stops the service at once, as INT does.
func (c *Controller) Exit() error {
	return c.m.call(c.m.killAll)
}

// do runs fn on the master's goroutine while the master is running;
// otherwise the error says why not (ErrStarting, ErrShuttingDown,
// ErrStopped).
func (c *Controller) do(fn func(m *master) error) error {
	var err error
	if cerr := c.m.call(func() {
		if c.m.state != running {
			err = ErrShuttingDown
			return
		}
		err = fn(c.m)
	}); cerr != nil {
		return cerr
	}
	return err
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// slotsOfGroup are the live slots of the group called name.
func (m *master) slotsOfGroup(name string) ([]*slot, error) {
	g := m.group(name)
	if g == nil {
		return nil, fmt.Errorf("%w %q (the groups are %q)", ErrNoSuchGroup, name, m.groupNames())
	}
	return slices.DeleteFunc(m.liveSlots(), func(s *slot) bool { return s.g != g }), nil
}

// slotsOf maps worker pids to their slots; no pids means every slot.
func (m *master) slotsOf(pids []int) ([]*slot, error) {
	if len(pids) == 0 {
		return m.liveSlots(), nil
	}
	var out []*slot
	for _, pid := range pids {
		i := slices.IndexFunc(m.slots, func(s *slot) bool {
			return s.state != slotRetiring && s.w != nil && s.w.p.Pid() == pid
		})
		if i < 0 {
			return nil, fmt.Errorf("%w %d", ErrNoSuchWorker, pid)
		}
		out = append(out, m.slots[i])
	}
	return out, nil
}
