package flock

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
)

// Worker groups: several programs under one master (node-cluster-service's
// worker groups), each with its own workers, command line and listeners,
// or none. The first group is the master's own: Supervise's program on
// Addr and Listeners with Workers workers (or, under Serve and Run, this
// program). The scaling signals, TTIN and TTOU, act on it; HUP, the
// shutdown signals and the monitor act on the whole service.

// WorkerGroup is one more program under Supervise's master
// (Options.WorkerGroups).
type WorkerGroup struct {
	// Name tells the group apart: in the status, the events and the
	// command surface, and as its Addr listener's name.
	Name    string
	Program Program
	// Workers is how many workers it starts with; 0 means 1.
	Workers int
	// Addr is its own listener's address (named Name); "" means none,
	// for workers that serve no socket (a queue consumer).
	Addr string
	// Listeners are more of its own, named uniquely across the groups.
	Listeners []Listener
	// SharedSocket gives its workers one socket per listener, shared, as
	// a systemd socket unit does, instead of one per worker: a single
	// accept queue, so that removing a worker never leaves a spare socket
	// and a worker always gets exactly one socket per listener. The socket
	// stays open while the group has a worker slot, and closes when
	// SetGroupWorkers takes it to 0.
	SharedSocket bool
}

// group is a Group as the master runs it.
type group struct {
	name     string
	program  *Program // nil: this program (Serve, Run)
	launcher launcher
	workers  int  // at start
	shared   bool // one socket per listener for all its slots (SharedSocket)
	lo, hi   int  // its listeners: config.listeners[lo:hi], the master's addrs alike
}

// owns reports whether listener i is one of the group's.
func (g *group) owns(i int) bool { return i >= g.lo && i < g.hi }

// ErrNoSuchGroup is in the error of a call naming a group the master does
// not have.
var ErrNoSuchGroup = errors.New("no such group")

// ErrPartlyAdded is in AddGroup's error when the group was added but not
// all its workers could start (the fd table full, say).
var ErrPartlyAdded = errors.New("group added")

// checkProgram fills in a Program's defaults and checks it, as Supervise
// does for every group.
func checkProgram(p *Program) error {
	if p.Path == "" {
		return errors.New("Program.Path: empty")
	}
	if p.Ready < ReadyAtOnce {
		return fmt.Errorf("Program.Ready %v: must be a duration, ReadyNotify or ReadyAtOnce", p.Ready)
	}
	if p.Ready == 0 {
		p.Ready = defaultReady
	}
	if p.StopSignal == 0 {
		p.StopSignal = syscall.SIGTERM
	}
	if p.Name == "" {
		p.Name = filepath.Base(p.Path)
	}
	if err := p.Output.valid(); err != nil {
		return fmt.Errorf("Program.%w", err)
	}
	_, err := p.resolve()
	return err
}

// resolveGroups makes the groups: the first from Options (p, nil under
// Serve and Run), then Options.Groups, whose listeners join the list after
// the first group's.
func (c *config) resolveGroups(p *Program) error {
	first := &group{name: MainListener, program: p, workers: c.Workers, hi: len(c.listeners)}
	if p != nil {
		first.name = p.Name
	}
	c.groups = []*group{first}
	if len(c.Options.WorkerGroups) > 0 && c.Single {
		return errors.New("flock: WorkerGroups: Single runs no master, so no group")
	}
	for i, g := range c.Options.WorkerGroups {
		ng, err := c.newGroup(g, c.groups)
		if err != nil {
			return fmt.Errorf("flock: WorkerGroups[%d]%w", i, err)
		}
		c.groups = append(c.groups, ng)
	}
	return nil
}

// newGroup checks g against the groups there are and makes it, its
// listeners added to the list. An error begins with what follows
// "WorkerGroups[i]" in a message.
func (c *config) newGroup(g WorkerGroup, groups []*group) (*group, error) {
	what := fmt.Sprintf(" %q", g.Name)
	switch {
	case g.Name == "":
		return nil, errors.New(": needs a Name")
	case strings.Contains(g.Name, ":"):
		return nil, fmt.Errorf("%s: no colons in a name (LISTEN_FDNAMES separates names with them)", what)
	case slices.ContainsFunc(groups, func(x *group) bool { return x.name == g.Name }):
		return nil, fmt.Errorf("%s: the name is taken", what)
	case g.Workers < 0:
		return nil, fmt.Errorf("%s: Workers %d: must be at least 1 (0 means 1)", what, g.Workers)
	}
	prog := g.Program
	if err := checkProgram(&prog); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	lns := g.Listeners
	if g.Addr != "" {
		lns = append([]Listener{{Name: g.Name, Addr: g.Addr}}, lns...)
	}
	ng := &group{name: g.Name, program: &prog, workers: max(g.Workers, 1), shared: g.SharedSocket, lo: len(c.listeners)}
	for j, l := range lns {
		if err := c.addListener(l); err != nil {
			c.listeners = c.listeners[:ng.lo]
			return nil, fmt.Errorf("%s: listener %d: %w", what, j, err)
		}
	}
	ng.hi = len(c.listeners)
	return ng, nil
}

// AddGroup adds a worker group to the running master and starts its
// Workers workers (0 means 1), as WorkerGroups does at start: under
// Supervise, Serve or Run alike. Its listeners are bound as its first
// worker starts: a busy port fails the call, and the group is not added;
// an error after the first worker wraps ErrPartlyAdded.
// USR2 hands it down with its workers' sockets: the new master adds it
// too, unless its options have a group of that name, and starts its
// workers on them (none if it had none).
func (c *Controller) AddGroup(g WorkerGroup) error {
	return c.do(func(m *master) error {
		ng, err := m.c.newGroup(g, m.groups)
		if err != nil {
			return fmt.Errorf("flock: add group%w", err)
		}
		for _, l := range m.c.listeners[ng.lo:ng.hi] {
			addr, err := net.ResolveTCPAddr("tcp", l.Addr)
			if err != nil {
				m.c.listeners = m.c.listeners[:ng.lo]
				return fmt.Errorf("flock: listen %s: %v", l.Addr, err)
			}
			host, _, _ := net.SplitHostPort(l.Addr)
			m.addrs = append(m.addrs, &bound{name: l.Name, host: host, ip: addr.IP, port: addr.Port, share: ng.shared})
		}
		ng.launcher = m.c.launcher(ng)
		m.groups, m.added = append(m.groups, ng), append(m.added, g)
		for i := range ng.workers {
			if err := m.addSlot(ng); err != nil && i == 0 { // nothing left bound: as if never added
				for _, a := range m.addrs[ng.lo:] {
					if a.shared != nil {
						a.shared.Close()
					}
				}
				m.groups, m.addrs, m.c.listeners = m.groups[:len(m.groups)-1], m.addrs[:ng.lo], m.c.listeners[:ng.lo]
				m.added = m.added[:len(m.added)-1]
				return err
			} else if err != nil {
				return fmt.Errorf("%w: %d of %d workers started: %w", ErrPartlyAdded, i, ng.workers, err)
			}
		}
		return nil
	})
}

// SetGroupWorkers starts or stops workers of the group called name until
// it has n (stopping the oldest first, each drained within
// ShutdownTimeout). n may be 0 for any group but the first: its sockets
// are then closed at once, so that nothing is queued where nobody will
// accept, and the group stays, idle, for a later call to start it again.
func (c *Controller) SetGroupWorkers(name string, n int) error {
	return c.do(func(m *master) error {
		g := m.group(name)
		switch {
		case g == nil:
			return fmt.Errorf("%w %q (the groups are %q)", ErrNoSuchGroup, name, m.groupNames())
		case n < 0 || n == 0 && g == m.groups[0]:
			return fmt.Errorf("group %q: %d workers: the first group keeps at least 1, the others at least 0", name, n)
		}
		for have := m.groupSlots(g); have < n; have++ {
			if err := m.addSlot(g); err != nil {
				return err
			}
		}
		for m.groupSlots(g) > n {
			s := m.oldestSlot(g)
			if n == 0 {
				s.closeSockets()
			}
			m.retireSlot(s, m.c.ShutdownTimeout)
			m.emit(Event{Kind: EventScaled, Workers: m.activeSlots()})
		}
		if n == 0 {
			m.spares = slices.DeleteFunc(m.spares, func(sp spare) bool {
				if g.owns(sp.ln) {
					sp.f.Close()
				}
				return g.owns(sp.ln)
			})
			for _, a := range m.addrs[g.lo:g.hi] {
				if a.share && a.shared != nil {
					a.shared.Close()
					a.shared = nil
				}
			}
		}
		return nil
	})
}

// group is the group called name, or nil.
func (m *master) group(name string) *group {
	if i := slices.IndexFunc(m.groups, func(g *group) bool { return g.name == name }); i >= 0 {
		return m.groups[i]
	}
	return nil
}

func (m *master) groupNames() []string {
	var out []string
	for _, g := range m.groups {
		out = append(out, g.name)
	}
	return out
}
