package flock

import (
	"cmp"
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

// sockets is the master's side of the listening sockets: the address every
// slot binds, and the spares (sockets of removed slots kept open, see
// retireSocket).
type sockets struct {
	ip     net.IP // bound address; nil for all interfaces
	port   int
	spares []*os.File
}

// bindAll creates the first Workers slots, resolving port 0 once so that
// every slot shares the same port.
func (m *master) bindAll() error {
	addr, err := net.ResolveTCPAddr("tcp", m.c.Addr)
	if err != nil {
		return fmt.Errorf("flock: listen %s: %v", m.c.Addr, err)
	}
	m.ip, m.port = addr.IP, addr.Port
	for range m.c.Workers {
		if _, err := m.newSlot(); err != nil {
			m.closeSockets()
			return err
		}
	}
	return nil
}

// newSlot adds a slot with a socket: a spare if there is one (its queue is
// then served again), else a new one. It starts idle, from the master's
// binary.
func (m *master) newSlot() (*slot, error) {
	var f *os.File
	if n := len(m.spares); n > 0 {
		f, m.spares = m.spares[n-1], m.spares[:n-1]
	} else {
		var err error
		if f, err = m.bind(); err != nil {
			return nil, err
		}
	}
	s := &slot{id: m.nextSlot, sock: f, bin: m.bin, gone: make(chan struct{})}
	m.nextSlot++
	m.slots = append(m.slots, s)
	return s, nil
}

func (m *master) bind() (*os.File, error) {
	f, port, err := bindSocket(m.ip, m.port)
	if err != nil {
		return nil, fmt.Errorf("flock: listen %s: %w", net.JoinHostPort(m.c.host, strconv.Itoa(m.port)), err)
	}
	if m.port == 0 {
		// Set once, by the first bind (port 0 picks it), before any other
		// goroutine reads it (listenAddr).
		m.port = port
	}
	return f, nil
}

func (m *master) listenAddr() string {
	return net.JoinHostPort(m.c.host, strconv.Itoa(m.port))
}

func (m *master) closeSockets() {
	for _, s := range m.slots {
		s.closeSocket()
	}
	for _, f := range m.spares {
		f.Close()
	}
	m.spares = nil
}

// retireSocket takes a removed slot's socket out of service. With
// net.ipv4.tcp_migrate_req=1 closing it loses nothing: the kernel hands
// what is queued on it to the port's other sockets once the last worker
// holding it has closed it too. Without, closing would reset those
// connections, so the master keeps the socket open as a spare, queue and
// all, and hands it to every running worker, which accepts on it too
// (workers started later inherit every spare). A later TTIN reuses a
// spare as its socket.
func (m *master) retireSocket(s *slot) {
	if s.sock == nil {
		return
	}
	if migrating() {
		s.closeSocket()
		return
	}
	m.spares = append(m.spares, s.sock)
	s.sock = nil
	m.shareSpares()
}

// spareTaker is a proc that can accept on one more socket while it runs.
// A kind that cannot (sockets passed at start only) serves the spares of
// the workers started after them.
type spareTaker interface {
	TakeSpare(f *os.File) error
}

// shareSpares hands every spare to every running worker that lacks it.
func (m *master) shareSpares() {
	for _, w := range m.workers {
		t, ok := w.p.(spareTaker)
		if !ok || w.going() {
			continue
		}
		for _, f := range m.spares {
			if slices.Contains(w.spares, f) {
				continue
			}
			if err := t.TakeSpare(f); err != nil {
				m.quiet.log(m.log, slog.LevelWarn, "spare", "flock: cannot hand a spare socket to a worker", "pid", w.p.Pid(), "err", err)
				continue
			}
			w.spares = append(w.spares, f)
		}
	}
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

// dupFile copies a listener's descriptor into an os.File without
// TCPListener.File, whose Fd (called by os/exec) would switch the socket,
// shared with the listener, to blocking mode.
func dupFile(ln syscall.Conn, name string) (*os.File, error) {
	rc, err := ln.SyscallConn()
	if err != nil {
		return nil, err
	}
	var fd int
	cerr := rc.Control(func(s uintptr) { fd, err = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) })
	if err = cmp.Or(cerr, err); err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), name), nil
}
