package flock

import (
	"errors"
	"fmt"
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
}

// group is a Group as the master runs it.
type group struct {
	name     string
	program  *Program // nil: this program (Serve, Run)
	launcher launcher
	workers  int // at start
	lo, hi   int // its listeners: config.listeners[lo:hi], the master's addrs alike
}

// owns reports whether listener i is one of the group's.
func (g *group) owns(i int) bool { return i >= g.lo && i < g.hi }

// ErrNoSuchGroup is in the error of a call naming a group the master does
// not have.
var ErrNoSuchGroup = errors.New("no such group")

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
	if len(c.Options.WorkerGroups) > 0 && p == nil {
		return errors.New("flock: WorkerGroups: only Supervise runs groups (Serve and Run run this program)")
	}
	for i, g := range c.Options.WorkerGroups {
		what := fmt.Sprintf("flock: WorkerGroups[%d] %q", i, g.Name)
		switch {
		case g.Name == "":
			return fmt.Errorf("flock: WorkerGroups[%d]: needs a Name", i)
		case strings.Contains(g.Name, ":"):
			return fmt.Errorf("%s: no colons in a name (LISTEN_FDNAMES separates names with them)", what)
		case slices.ContainsFunc(c.groups, func(x *group) bool { return x.name == g.Name }):
			return fmt.Errorf("%s: the name is taken", what)
		case g.Workers < 0:
			return fmt.Errorf("%s: Workers %d: must be at least 1 (0 means 1)", what, g.Workers)
		}
		prog := g.Program
		if err := checkProgram(&prog); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		lns := g.Listeners
		if g.Addr != "" {
			lns = append([]Listener{{Name: g.Name, Addr: g.Addr}}, lns...)
		}
		ng := &group{name: g.Name, program: &prog, workers: max(g.Workers, 1), lo: len(c.listeners)}
		for j, l := range lns {
			if err := c.addListener(l); err != nil {
				return fmt.Errorf("%s: listener %d: %w", what, j, err)
			}
		}
		ng.hi = len(c.listeners)
		c.groups = append(c.groups, ng)
	}
	return nil
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
