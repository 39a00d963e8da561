package flock

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// sockets is the master's side of the listening sockets: the addresses
// every slot binds (one socket per listener), and the spares (sockets of
// removed slots kept open, see retireSocket).
type sockets struct {
	addrs  []*bound
	spares []spare
}

// bound is one listener's address, as every slot binds it.
type bound struct {
	name  string
	host  string // as configured, for messages
	ip    net.IP // nil for all interfaces
	port  int    // set by the first bind when configured as 0
	share bool   // its slots share one socket, bound with the first (a group's SharedSocket)
	// shared, when set, is the one socket every slot's is a copy of:
	// systemd's (activated.go).
	shared *os.File
}

func (b *bound) String() string { return net.JoinHostPort(b.host, strconv.Itoa(b.port)) }

// spare is a removed slot's socket of listener ln.
type spare struct {
	f  *os.File
	ln int
}

// bindAll creates each group's first slots, resolving port 0 once per
// listener so that every slot shares the same port. A busy port on any
// listener fails before a worker starts.
func (m *master) bindAll() error {
	for _, l := range m.c.listeners {
		addr, err := net.ResolveTCPAddr("tcp", l.Addr)
		if err != nil {
			return fmt.Errorf("flock: listen %s: %v", l.Addr, err)
		}
		host, _, _ := net.SplitHostPort(l.Addr)
		m.addrs = append(m.addrs, &bound{name: l.Name, host: host, ip: addr.IP, port: addr.Port})
	}
	m.markShared()
	files, names, err := activatedSockets()
	if err == nil && files != nil {
		err = m.takeActivated(files, names)
	}
	if err != nil {
		closeFiles(files)
		return err
	}
	for _, g := range m.groups {
		for range g.workers {
			if _, err := m.newSlot(g); err != nil {
				m.closeSockets()
				return err
			}
		}
	}
	return nil
}

// newSlot adds a slot to g with one socket per listener of g: a spare if
// there is one (its queue is then served again), else a new one. It
// starts idle, from the master's binary.
func (m *master) newSlot(g *group) (*slot, error) {
	socks := make([]*os.File, len(m.addrs))
	for i := g.lo; i < g.hi; i++ {
		if j := slices.IndexFunc(m.spares, func(sp spare) bool { return sp.ln == i }); j >= 0 {
			socks[i] = m.spares[j].f
			m.spares = slices.Delete(m.spares, j, j+1)
			continue
		}
		f, err := m.bind(i)
		if err != nil {
			closeFiles(socks)
			return nil, err
		}
		socks[i] = f
	}
	s := &slot{id: m.nextSlot, g: g, socks: socks, bin: m.bin, gone: make(chan struct{})}
	m.nextSlot++
	m.slots = append(m.slots, s)
	return s, nil
}

// bindSlot binds a fresh socket for each listener of g.
func (m *master) bindSlot(g *group) ([]*os.File, error) {
	socks := make([]*os.File, len(m.addrs))
	for i := g.lo; i < g.hi; i++ {
		f, err := m.bind(i)
		if err != nil {
			closeFiles(socks)
			return nil, err
		}
		socks[i] = f
	}
	return socks, nil
}

func (m *master) bind(i int) (*os.File, error) {
	a := m.addrs[i]
	if a.share && a.shared == nil {
		f, port, err := bindSocket(a.ip, a.port)
		if err != nil {
			return nil, fmt.Errorf("flock: listen %s: %w", a, err)
		}
		a.port, a.shared = port, f
	}
	if a.shared != nil {
		f, err := dupFile(a.shared, "flock-slot")
		if err != nil {
			return nil, fmt.Errorf("flock: copy the socket of %s: %w", a, err)
		}
		return f, nil
	}
	f, port, err := bindSocket(a.ip, a.port)
	if err != nil {
		return nil, fmt.Errorf("flock: listen %s: %w", a, err)
	}
	if a.port == 0 {
		// Set once, by the first bind (port 0 picks it), before any other
		// goroutine reads it (listenAddr).
		a.port = port
	}
	return f, nil
}

// listenAddr is the main listener's address (Addr).
func (m *master) listenAddr() string { return m.addrs[0].String() }

func closeFiles(fs []*os.File) {
	for _, f := range fs {
		if f != nil {
			f.Close()
		}
	}
}

func (m *master) closeSockets() {
	for _, s := range m.slots {
		s.closeSockets()
	}
	for _, sp := range m.spares {
		sp.f.Close()
	}
	m.spares = nil
	for _, a := range m.addrs {
		if a.shared != nil {
			a.shared.Close()
		}
	}
}

// retireSocket takes a removed slot's sockets out of service. With
// net.ipv4.tcp_migrate_req=1 closing them loses nothing: the kernel hands
// what is queued on them to the port's other sockets once the last worker
// holding them has closed them too. Without, closing would reset those
// connections, so the master keeps the sockets open as spares, queue and
// all, and hands them to every running worker, which accepts on them too
// (workers started later inherit every spare). A later TTIN reuses spares
// as its sockets.
func (m *master) retireSocket(s *slot) {
	if s.socks == nil {
		return
	}
	if migrating() {
		s.closeSockets()
		return
	}
	for i, f := range s.socks {
		if f == nil {
			continue // another group's listener
		}
		if m.addrs[i].shared != nil {
			f.Close() // a copy: the queue is the shared socket's, which the others serve
			continue
		}
		m.spares = append(m.spares, spare{f, i})
	}
	s.socks = nil
	m.shareSpares()
}

// spareTaker is a proc that can accept on one more socket while it runs.
// A kind that cannot (a foreign program: sockets passed at start only)
// serves the spares that existed when it started.
type spareTaker interface {
	TakeSpare(f *os.File, listener int) error
}

// shareSpares hands every spare to every running worker that lacks it.
// When no worker has them all (none can take one while it runs), one is
// replaced, readiness-gated: its replacement starts with every spare, so
// that what is queued on them is served.
func (m *master) shareSpares() {
	lacking := map[*group]*worker{}
	served := map[*group]bool{}
	for _, w := range m.workers {
		g := w.slot.g
		if w.going() {
			continue
		}
		t, ok := w.p.(spareTaker)
		if !ok {
			if m.hasSpares(w) {
				served[g] = true
			} else if w.state == workerReady && w.slot.w == w && w.slot.state == slotActive {
				lacking[g] = w
			}
			continue
		}
		served[g] = true
		for _, sp := range m.spares {
			if !g.owns(sp.ln) || slices.Contains(w.spares, sp.f) {
				continue
			}
			if err := t.TakeSpare(sp.f, sp.ln); err != nil {
				m.quiet.log(m.log, slog.LevelWarn, "spare", "flock: cannot hand a spare socket to a worker", "pid", w.p.Pid(), "err", err)
				continue
			}
			w.spares = append(w.spares, sp.f)
		}
	}
	for g, w := range lacking {
		if !served[g] {
			m.adoptSpares(w)
		}
	}
}

// hasSpares reports whether w has every spare of its group.
func (m *master) hasSpares(w *worker) bool {
	for _, sp := range m.spares {
		if w.slot.g.owns(sp.ln) && !slices.Contains(w.spares, sp.f) {
			return false
		}
	}
	return true
}

// adoptSpares replaces w so that its replacement serves the spares.
func (m *master) adoptSpares(w *worker) {
	if m.state != running {
		return
	}
	s := w.slot
	m.log.Info("flock: replacing a worker to serve the spare sockets (it cannot take them while it runs)", "pid", w.p.Pid(), "slot", s.id)
	m.startRoll(&roll{kind: rollRecycle, bin: s.bin, queue: []*slot{s}, expect: w, width: 1})
}

// queues reads every listener's accept queues from its sockets.
func (m *master) queues() []Queue {
	out := make([]Queue, len(m.addrs))
	add := func(i int, f *os.File) {
		withFD(f, func(fd int) error {
			ti, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
			if err == nil && ti.State == unix.BPF_TCP_LISTEN {
				// On a listening socket, unacked is the accept queue's
				// length and sacked its backlog.
				out[i].Queued += int(ti.Unacked)
				out[i].Max += int(ti.Sacked)
			}
			return err
		})
	}
	for i, a := range m.addrs {
		out[i].Listener = a.name
		if a.shared != nil {
			add(i, a.shared) // one queue, whatever the slots' copies
		}
	}
	for _, s := range m.slots {
		for i, f := range s.socks {
			if f != nil && m.addrs[i].shared == nil {
				add(i, f)
			}
		}
	}
	for _, sp := range m.spares {
		add(sp.ln, sp.f)
	}
	return out
}

// migrating reports whether net.ipv4.tcp_migrate_req is on.
func migrating() bool {
	b, _ := os.ReadFile("/proc/sys/net/ipv4/tcp_migrate_req")
	return strings.TrimSpace(string(b)) == "1"
}

// bindSocket creates a TCP socket with SO_REUSEPORT bound to ip:port, but
// does not listen: the worker calls listen once it is ready, which is when
// the kernel starts handing the socket connections. It returns the bound
// port (useful when port is 0).
func bindSocket(ip net.IP, port int) (*os.File, int, error) {
	family, sa := unix.AF_INET6, unix.Sockaddr(&unix.SockaddrInet6{Port: port})
	if ip4 := ip.To4(); ip4 != nil {
		family, sa = unix.AF_INET, &unix.SockaddrInet4{Port: port, Addr: [4]byte(ip4)}
	} else if ip != nil {
		sa = &unix.SockaddrInet6{Port: port, Addr: [16]byte(ip.To16())}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil && ip == nil { // no IPv6 on this machine: all IPv4 interfaces
		family, sa = unix.AF_INET, &unix.SockaddrInet4{Port: port}
		fd, err = unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	}
	if err != nil {
		return nil, 0, err
	}
	opts := [][2]int{{unix.SOL_SOCKET, unix.SO_REUSEADDR}, {unix.SOL_SOCKET, unix.SO_REUSEPORT}}
	if family == unix.AF_INET6 && ip == nil {
		opts = append(opts, [2]int{unix.IPPROTO_IPV6, unix.IPV6_V6ONLY}) // set to 0 below: dual stack
	}
	for _, o := range opts {
		v := 1
		if o[1] == unix.IPV6_V6ONLY {
			v = 0
		}
		if err := unix.SetsockoptInt(fd, o[0], o[1], v); err != nil {
			unix.Close(fd)
			return nil, 0, err
		}
	}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return nil, 0, err
	}
	if port == 0 {
		got, err := unix.Getsockname(fd)
		if err != nil {
			unix.Close(fd)
			return nil, 0, err
		}
		_, port = sockAddr(got)
	}
	return os.NewFile(uintptr(fd), "flock-slot"), port, nil
}

func sockAddr(sa unix.Sockaddr) (net.IP, int) {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return net.IP(a.Addr[:]), a.Port
	case *unix.SockaddrInet6:
		return net.IP(a.Addr[:]), a.Port
	}
	return nil, 0
}

// withFD runs fn on c's descriptor, and returns what failed first.
func withFD(c syscall.Conn, fn func(fd int) error) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	if cerr := rc.Control(func(fd uintptr) { err = fn(int(fd)) }); cerr != nil {
		return cerr
	}
	return err
}

// dupFile copies a listener's descriptor into an os.File without
// TCPListener.File, whose Fd (called by os/exec) would switch the socket,
// shared with the listener, to blocking mode.
func dupFile(ln syscall.Conn, name string) (*os.File, error) {
	var fd int
	err := withFD(ln, func(s int) (err error) { fd, err = unix.FcntlInt(uintptr(s), unix.F_DUPFD_CLOEXEC, 0); return err })
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), name), nil
}

// markShared marks the listeners of SharedSocket groups.
func (m *master) markShared() {
	for _, g := range m.groups {
		for _, a := range m.addrs[g.lo:g.hi] {
			a.share = a.share || g.shared
		}
	}
}
