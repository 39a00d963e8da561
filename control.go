package flock

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"time"
)

// Extension runs in the master beside the workers, for features the core
// does not carry itself; the command surface (package command) is one.
// Extensions never run in workers.
type Extension interface {
	// Start is called in the master once the sockets are bound, before any
	// worker starts. An error stops Serve.
	Start(c *Controller) error
	// Event is called for every master event, on the master's goroutine,
	// after Options.OnEvent: it must return quickly.
	Event(e Event)
	// Stop is called when Serve is about to return.
	Stop()
}

// Controller is what an Extension may ask of the master. Its methods are
// safe from any goroutine: each runs on the master's own goroutine and
// waits for the outcome. After the master has stopped they return
// ErrStopped.
type Controller struct {
	m *master
}

// ErrStopped is returned by Controller methods once the master has stopped.
var ErrStopped = errors.New("flock: the master has stopped")

// Listen gives an extension a TCP listener on addr, to call from Start
// only. name identifies it across a USR2 upgrade: the new master's
// extension gets the same socket back from Listen, so the port is never
// busy and never closed during the handover.
func (c *Controller) Listen(name, addr string) (net.Listener, error) {
	m := c.m
	if _, dup := m.extFiles[name]; dup {
		return nil, fmt.Errorf("listener %q requested twice", name)
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

// Status describes the master and its workers now.
func (c *Controller) Status() Status {
	return c.m.status(c.m.mon)
}

// AddWorkers starts n more workers, as n TTIN signals would.
func (c *Controller) AddWorkers(n int) error {
	if n < 1 {
		return fmt.Errorf("count %d: must be at least 1", n)
	}
	var err error
	ok := c.m.call(func() {
		if c.m.state != running {
			err = errors.New("shutting down")
			return
		}
		for range n {
			c.m.addSlot()
		}
	})
	return cmpErr(ok, err)
}

// Restart replaces the workers with the given pids (all when pids is
// empty), readiness-gated and 1 + floor(n × RestartConcurrencyRatio) at a
// time, from the binary at exe ("" means the file now at os.Executable()).
// A replacement not ready within timeout (0 means BootTimeout) stops the
// restart; the workers not yet replaced keep serving. reason is
// ReasonRestart or ReasonUpgrade. It returns how many were replaced.
func (c *Controller) Restart(pids []int, exe, reason string, timeout time.Duration) (int, error) {
	type result struct {
		n   int
		err error
	}
	res := make(chan result, 1)
	done := func(n int, err error) { res <- result{n, err} }
	ok := c.m.call(func() {
		m := c.m
		if m.state != running {
			done(0, errors.New("shutting down"))
			return
		}
		slots, err := m.slotsOf(pids)
		if err != nil {
			done(0, err)
			return
		}
		if exe == "" {
			if exe, err = os.Executable(); err != nil {
				done(0, err)
				return
			}
		}
		if _, err := os.Stat(exe); err != nil {
			done(0, err)
			return
		}
		m.startRoll(&roll{reason: reason, exe: exe, queue: slots, boot: timeout,
			width: rollWidth(len(slots), m.c.RestartConcurrencyRatio), done: done})
	})
	if !ok {
		return 0, ErrStopped
	}
	r := <-res
	return r.n, r.err
}

// StopWorkers drains the workers with the given pids and removes their
// slots (never the last one), killing what still runs after timeout (0
// means ShutdownTimeout). It returns once they have exited.
func (c *Controller) StopWorkers(pids []int, timeout time.Duration) error {
	var exited []chan struct{}
	var err error
	ok := c.m.call(func() {
		m := c.m
		slots, e := m.slotsOf(pids)
		switch {
		case m.state != running:
			err = errors.New("shutting down")
		case e != nil:
			err = e
		case len(slots) >= m.activeSlots():
			err = errors.New("that would stop every worker; use a shutdown of the whole service")
		}
		if err != nil {
			return
		}
		for _, s := range slots {
			ch := make(chan struct{})
			exited = append(exited, ch)
			s.w.onExit = append(s.w.onExit, func() { close(ch) })
			m.retireSlot(s, orDefault(timeout, m.c.ShutdownTimeout))
		}
		m.emit(Event{Kind: EventScaled, Workers: m.activeSlots()})
	})
	if err = cmpErr(ok, err); err != nil {
		return err
	}
	for _, ch := range exited {
		<-ch
	}
	return nil
}

// Shutdown begins a graceful shutdown of the whole service, as TERM does,
// with timeout (0 means ShutdownTimeout) in place of ShutdownTimeout. It
// returns at once; Serve returns once the workers are gone.
func (c *Controller) Shutdown(timeout time.Duration) error {
	var err error
	ok := c.m.call(func() {
		if c.m.state != running {
			err = errors.New("already shutting down")
			return
		}
		c.m.stopTimeout = orDefault(timeout, c.m.c.ShutdownTimeout)
		c.m.shutdown("command")
	})
	return cmpErr(ok, err)
}

// Exit stops the service at once, as INT does.
func (c *Controller) Exit() error {
	return cmpErr(c.m.call(c.m.killAll), nil)
}

func cmpErr(ok bool, err error) error {
	if !ok {
		return ErrStopped
	}
	return err
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// slotsOf maps worker pids to their slots; no pids means every slot.
func (m *master) slotsOf(pids []int) ([]*slot, error) {
	if len(pids) == 0 {
		return slices.DeleteFunc(slices.Clone(m.slots), func(s *slot) bool { return s.removing }), nil
	}
	var out []*slot
	for _, pid := range pids {
		i := slices.IndexFunc(m.slots, func(s *slot) bool { return s.w != nil && s.w.pid == pid && !s.removing })
		if i < 0 {
			return nil, fmt.Errorf("no worker with pid %d", pid)
		}
		out = append(out, m.slots[i])
	}
	return out, nil
}

// status is the monitor's and the Controller's view: the published
// snapshot, with mon's ECV state and each worker's RSS read now. It runs
// on other goroutines: it reads only the snapshot and what never changes.
func (m *master) status(mon *monitor) Status {
	s := m.snap.Load()
	st := Status{PID: os.Getpid(), Started: m.started, ECV: mon.state(s), State: s.state.String(),
		Addr: m.listenAddr(), Workers: make([]WorkerStatus, len(s.workers))}
	for i, ws := range s.workers {
		ws.RSS = rss(ws.PID)
		st.Workers[i] = ws
	}
	return st
}
