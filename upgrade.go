package flock

import (
	"bufio"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// A USR2 upgrade replaces the master itself, nginx-style. The old master
// starts the binary now on disk as a new master and hands it every slot
// socket and the monitor's listener. The new master starts its own workers
// on those same sockets (so old and new workers accept side by side and
// nothing queued is lost), and only when all of them are ready does it say
// so on a pipe. Then it takes over the monitor and the PID file, and the old
// master drains its workers and returns. If the new master exits first, or
// is not ready within UpgradeTimeout, the old one kills it and goes on
// serving: a broken binary costs nothing.

const envUpgrade = "FLOCK_UPGRADE"

// upgradeSpec tells the new master what it inherits; the files follow in
// this order from fd 3: the pipe to the old master, the monitor's listener
// (when Monitor), each slot's sockets (one per name in Names, in that
// order), the spares, then the extensions' listeners. The new master takes
// each listener's sockets by name: one it does not have is closed, a new
// one is bound.
type upgradeSpec struct {
	Slots     int      `json:"slots"`
	Names     []string `json:"names"` // the listeners
	Monitor   bool     `json:"monitor"`
	Disabled  bool     `json:"disabled"`
	SpareOf   []int    `json:"spareOf"`   // the listener (index in Names) of each spare, after the slots
	Listeners []string `json:"listeners"` // extensions' listeners, by name, after the spares
	Shared    []string `json:"shared"`    // the listeners whose slots share one socket (systemd's)
	// Per slot, its group and the listeners of the sockets it hands down,
	// in order. A master from before groups sent neither: each of its
	// slots has every listener of Names, and is the first group's.
	SlotGroups []string   `json:"slotGroups,omitempty"`
	FirstGroup string     `json:"firstGroup,omitempty"` // the first group's name: the new master's first, whatever its own
	SlotNames  [][]string `json:"slotNames,omitempty"`
	// Added are the groups added while running (AddGroup) that have
	// workers: the new master adds those its options lack, so that their
	// slots have a group.
	Added []WorkerGroup `json:"added,omitempty"`
}

// upgrades is the master's part in USR2, from either side.
type upgrades struct {
	upgrade   *upgrade   // under way, seen from the old master
	inh       *inherited // what an old master handed down
	heir      *os.File   // pipe to the old master, until the handover
	announced bool       // READY=1 sent to systemd
}

// upgrade is an upgrade under way, seen from the old master.
type upgrade struct {
	cmd    *exec.Cmd
	began  time.Time
	timer  *time.Timer
	exited bool
	handed bool
}

// inherited is what a new master received from the old one.
type inherited struct {
	upgradeSpec
	pipe      *os.File
	monitor   *os.File
	slots     [][]*os.File // per slot, per name in slotNames
	slotNames [][]string
	spares    []*os.File
	listeners map[string]*os.File
}

// startUpgrade starts the binary now at os.Executable() as a new master.
func (m *master) startUpgrade() {
	fail := func(err error) {
		m.log.Error("flock: upgrade failed; this master keeps serving", "err", err)
		m.emit(Event{Kind: EventUpgrade, Phase: PhaseFailed, Err: err})
	}
	if m.upgrade != nil {
		fail(fmt.Errorf("an upgrade is already under way (new master %d)", m.upgrade.cmd.Process.Pid))
		return
	}
	exe, err := os.Executable()
	if err != nil {
		fail(err)
		return
	}
	r, w, err := os.Pipe()
	if err != nil {
		fail(err)
		return
	}
	defer w.Close()
	spec := upgradeSpec{Disabled: m.disabled, FirstGroup: m.groups[0].name}
	for _, g := range m.added { // those with workers: the new master can add an idle one itself
		if m.groupSlots(m.group(g.Name)) > 0 {
			spec.Added = append(spec.Added, g)
		}
	}
	files := []*os.File{w}
	if f := m.mon.file(); f != nil {
		spec.Monitor = true
		files = append(files, f)
	}
	// A given-up slot has no socket: the new master gets a fresh one, bound
	// only for it and closed here once it has started, so that a failed
	// upgrade leaves no listening socket without a worker behind.
	var fresh []*os.File
	defer func() {
		for _, f := range fresh {
			f.Close()
		}
	}()
	for _, a := range m.addrs {
		spec.Names = append(spec.Names, a.name)
		if a.shared != nil {
			spec.Shared = append(spec.Shared, a.name)
		}
	}
	for _, s := range m.slots {
		socks := s.socks
		switch s.state {
		case slotRetiring:
			continue // TTOU: its sockets are retired
		case slotGaveUp:
			var err error
			if socks, err = m.bindSlot(s.g); err != nil {
				r.Close()
				fail(err)
				return
			}
			fresh = append(fresh, socks...)
		}
		var names []string
		for i, f := range socks {
			if f != nil {
				files, names = append(files, f), append(names, m.addrs[i].name)
			}
		}
		spec.Slots++
		spec.SlotGroups, spec.SlotNames = append(spec.SlotGroups, s.g.name), append(spec.SlotNames, names)
	}
	for _, sp := range m.spares {
		files = append(files, sp.f)
		spec.SpareOf = append(spec.SpareOf, sp.ln)
	}
	m.extMu.Lock()
	for _, name := range slices.Sorted(maps.Keys(m.extFiles)) {
		spec.Listeners = append(spec.Listeners, name)
		files = append(files, m.extFiles[name])
	}
	m.extMu.Unlock()
	js, _ := json.Marshal(spec)
	cmd := exec.Command(exe, os.Args[1:]...)
	cmd.Args[0] = os.Args[0]
	cmd.Env = append(ownEnvRemoved(), envUpgrade+"="+string(js))
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.ExtraFiles = files
	// No Pdeathsig: the new master must outlive this one.
	if err := cmd.Start(); err != nil {
		r.Close()
		fail(fmt.Errorf("start %s: %w", exe, err))
		return
	}
	u := &upgrade{cmd: cmd, began: time.Now()}
	m.upgrade = u
	sdNotify("RELOADING=1")
	m.emit(Event{Kind: EventUpgrade, Phase: PhaseBegan, PID: cmd.Process.Pid})
	u.timer = m.after(m.c.UpgradeTimeout, func() {
		if m.upgrade == u && !u.handed {
			m.rollback(u, fmt.Errorf("new master %d not ready within UpgradeTimeout %v; killed it", cmd.Process.Pid, m.c.UpgradeTimeout))
		}
	})
	go func() {
		defer r.Close()
		line, _ := bufio.NewReader(r).ReadString('\n')
		if strings.TrimSpace(line) == "ready" {
			select {
			case m.inbox <- func() { m.handedOver(u) }:
			case <-m.done:
			}
		}
	}()
	go func() {
		cmd.Wait()
		select {
		case m.inbox <- func() {
			u.exited = true
			if m.upgrade == u && !u.handed {
				m.rollback(u, fmt.Errorf("new master exited before it was ready: %v", cmd.ProcessState))
			}
		}:
		case <-m.done:
		}
	}()
}

// handedOver: the new master's workers are all ready and it serves the
// monitor; this master drains and exits.
func (m *master) handedOver(u *upgrade) {
	if m.upgrade != u || u.exited {
		return
	}
	u.handed = true
	u.timer.Stop()
	took := time.Since(u.began)
	m.log.Info("flock: new master took over; draining this one", "new_master", u.cmd.Process.Pid, "took", took.Round(time.Millisecond))
	m.emit(Event{Kind: EventUpgrade, Phase: PhaseHandedOver, PID: u.cmd.Process.Pid, Took: took})
	m.mon.close()
	m.abortRolls(fmt.Errorf("%w: upgraded to new master %d", ErrShuttingDown, u.cmd.Process.Pid))
	m.stopRestarts()
	m.stopAll(ExitUpgrade)
}

func (m *master) rollback(u *upgrade, err error) {
	m.upgrade = nil
	u.timer.Stop()
	if !u.exited {
		u.cmd.Process.Kill() // its workers follow: control-socket EOF and Pdeathsig
	}
	m.log.Error("flock: upgrade failed; this master keeps serving", "err", err)
	m.emit(Event{Kind: EventUpgrade, Phase: PhaseFailed, Err: err, PID: u.cmd.Process.Pid})
	sdNotify("READY=1")
}

// cancelUpgrade kills a new master that has not taken over yet (shutdown).
func (m *master) cancelUpgrade(why string) {
	if u := m.upgrade; u != nil && !u.handed {
		m.rollback(u, fmt.Errorf("cancelled: %s", why))
	}
}

func sockName(f *os.File) (sa unix.Sockaddr, err error) {
	err = withFD(f, func(fd int) error { sa, err = unix.Getsockname(fd); return err })
	return sa, err
}

// handoverIfReady: a new master tells the old one it can go once every slot
// has a ready worker. It takes over the monitor and the PID file first.
// On a first start it tells systemd it is ready.
func (m *master) handoverIfReady() {
	for _, s := range m.slots {
		if s.state != slotRetiring && (s.w == nil || s.w.state != workerReady) {
			return
		}
	}
	if m.heir == nil {
		if !m.announced {
			m.announced = true
			sdNotify("READY=1")
		}
		return
	}
	m.mon.serve()
	if m.c.PIDFile != "" {
		if err := writePIDFile(m.c.PIDFile, os.Getpid()); err != nil {
			m.log.Error("flock: cannot update PIDFile", "path", m.c.PIDFile, "err", err)
		}
	}
	if _, err := m.heir.Write([]byte("ready\n")); err != nil {
		m.log.Error("flock: cannot tell the old master we are ready", "err", err)
	}
	m.heir.Close()
	m.heir = nil
	m.announced = true
	sdNotify("MAINPID=" + strconv.Itoa(os.Getpid()) + "\nREADY=1")
	m.log.Info("flock: took over from the old master")
}
