package flock

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"slices"

	"golang.org/x/sys/unix"
)

// The new master's side of USR2: what the old master handed down, and
// taking its sockets back into slots and groups.

// inheritance reads what an old master handed down, if this process is a
// new master started by USR2.
func inheritance() (*inherited, error) {
	js, ok := os.LookupEnv(envUpgrade)
	if !ok {
		return nil, nil
	}
	os.Unsetenv(envUpgrade) // not for our workers, nor a later upgrade
	var inh inherited
	if err := json.Unmarshal([]byte(js), &inh.upgradeSpec); err != nil {
		return nil, fmt.Errorf("flock: %s=%q: %v", envUpgrade, js, err)
	}
	fd := 3
	next := func(name string) *os.File {
		unix.CloseOnExec(fd) // handed to our workers explicitly, not by accident
		f := os.NewFile(uintptr(fd), name)
		fd++
		return f
	}
	inh.pipe = next("flock-upgrade")
	if inh.Monitor {
		inh.monitor = next("flock-monitor")
	}
	for k := range inh.Slots {
		names := inh.Names
		if inh.SlotNames != nil {
			names = inh.SlotNames[k]
		}
		var socks []*os.File
		for range names {
			socks = append(socks, next("flock-slot"))
		}
		inh.slots, inh.slotNames = append(inh.slots, socks), append(inh.slotNames, names)
	}
	for range inh.SpareOf {
		inh.spares = append(inh.spares, next("flock-spare"))
	}
	inh.listeners = map[string]*os.File{}
	for _, name := range inh.Listeners {
		inh.listeners[name] = next("flock-" + name)
	}
	return &inh, nil
}

// listener is the inherited listener of an extension, or nil.
func (inh *inherited) listener(name string) *os.File {
	if inh == nil {
		return nil
	}
	return inh.listeners[name]
}

// inherit takes the inherited slot sockets instead of binding new ones:
// each slot back into its group (by name), each socket to its listener
// (by name). A listener or group this version adds is bound and started
// as on a first start; sockets of ones it dropped are closed.
func (m *master) inherit(inh *inherited) error {
	m.adopt(inh.Added)
	// An inherited socket of each listener, for its address.
	some := map[string]*os.File{}
	for k, files := range inh.slots {
		for j, f := range files {
			if name := inh.slotNames[k][j]; some[name] == nil {
				some[name] = f
			}
		}
	}
	for _, l := range m.c.listeners {
		host, _, _ := net.SplitHostPort(l.Addr)
		b := &bound{name: l.Name, host: host}
		if f := some[l.Name]; f != nil {
			sa, err := sockName(f)
			if err != nil {
				return fmt.Errorf("flock: inherited socket of %q: %v", l.Name, err)
			}
			if b.ip, b.port = sockAddr(sa); b.ip.IsUnspecified() {
				b.ip = nil
			}
			if slices.Contains(inh.Shared, l.Name) {
				if b.shared, err = dupFile(f, "systemd-socket"); err != nil {
					return fmt.Errorf("flock: inherited socket of %q: %v", l.Name, err)
				}
			}
		} else {
			addr, err := net.ResolveTCPAddr("tcp", l.Addr)
			if err != nil {
				return fmt.Errorf("flock: listen %s: %v", l.Addr, err)
			}
			b.ip, b.port = addr.IP, addr.Port
		}
		m.addrs = append(m.addrs, b)
	}
	m.markShared()
	index := func(name string) int { return slices.IndexFunc(m.addrs, func(b *bound) bool { return b.name == name }) }
	for k, files := range inh.slots {
		g := m.groups[0]
		if inh.SlotGroups != nil && inh.SlotGroups[k] != inh.FirstGroup {
			g = m.group(inh.SlotGroups[k])
		}
		socks := make([]*os.File, len(m.addrs))
		for j, f := range files {
			if i := index(inh.slotNames[k][j]); g != nil && i >= 0 && g.owns(i) {
				socks[i], files[j] = f, nil
			}
		}
		closeFiles(files) // listeners or a group this version no longer has
		if g == nil {
			continue
		}
		for i := g.lo; i < g.hi; i++ {
			if socks[i] == nil {
				f, err := m.bind(i) // a listener this version adds
				if err != nil {
					closeFiles(socks)
					return err
				}
				socks[i] = f
			}
		}
		m.slots = append(m.slots, &slot{id: m.nextSlot, g: g, socks: socks, bin: m.bin, gone: make(chan struct{})})
		m.nextSlot++
	}
	for _, g := range m.groups { // a group this version adds
		if m.groupSlots(g) > 0 {
			continue
		}
		for range g.workers {
			if _, err := m.newSlot(g); err != nil {
				return err
			}
		}
	}
	for k, f := range inh.spares {
		if ln := inh.SpareOf[k]; ln >= 0 && ln < len(inh.Names) && index(inh.Names[ln]) >= 0 {
			i := index(inh.Names[ln])
			m.spares = append(m.spares, spare{f, i})
		} else {
			f.Close()
		}
	}
	m.disabled = inh.Disabled
	m.heir = inh.pipe
	return nil
}

// adopt adds the groups the old master had added while running, and this
// master's options lack, with no worker of their own: they get the slots
// handed down, if any. A group that cannot be added (its program gone from
// disk) is left out, and its sockets are closed.
func (m *master) adopt(groups []WorkerGroup) {
	for _, g := range groups {
		if m.group(g.Name) != nil {
			continue
		}
		ng, err := m.c.newGroup(g, m.groups)
		if err != nil {
			m.log.Warn("flock: a group the old master added cannot be added here; its sockets are closed", "group", g.Name, "err", "group"+err.Error())
			continue
		}
		ng.workers = 0
		ng.launcher = m.c.launcher(ng)
		m.groups, m.added = append(m.groups, ng), append(m.added, g)
	}
}
