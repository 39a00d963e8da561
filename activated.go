package flock

import (
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// The master under systemd's socket activation: started by a .socket unit
// (LISTEN_FDS and LISTEN_PID, its own pid, set), it takes the listening
// sockets systemd holds instead of binding its own. systemd keeps them
// open, queue and all, while the service restarts, so not even a full
// `systemctl restart` of the master loses a connection.
//
// Such a socket is shared: every slot's socket of that listener is a
// copy of it, and the workers accept from one queue. Per-slot sockets
// bound beside it would balance better (SO_REUSEPORT spreads connections
// over the sockets) but their queues die with the master, which is what
// activation is for. A retired slot's copy is simply closed: its queue is
// the shared one, which the other workers serve.

// activatedSockets are the sockets systemd passed to this process, by
// name (LISTEN_FDNAMES, "" when unnamed), or nil. It takes them: they
// are closed on exec, and the variables are unset, so that no child
// process mistakes them for its own.
func activatedSockets() (files []*os.File, names []string, err error) {
	pid, n := os.Getenv("LISTEN_PID"), os.Getenv("LISTEN_FDS")
	if n == "" || pid != strconv.Itoa(os.Getpid()) {
		return nil, nil, nil
	}
	count, err := strconv.Atoi(n)
	if err != nil || count < 1 {
		return nil, nil, fmt.Errorf("flock: LISTEN_FDS=%q: not a positive number", n)
	}
	names = strings.Split(os.Getenv("LISTEN_FDNAMES"), ":")
	for _, v := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
		os.Unsetenv(v)
	}
	for i := range count {
		fd := 3 + i
		unix.CloseOnExec(fd)
		if ok, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err != nil || ok != 1 {
			return nil, nil, fmt.Errorf("flock: socket activation: fd %d is not a listening socket (a .socket unit with ListenStream= passes one)", fd)
		}
		files = append(files, os.NewFile(uintptr(fd), "systemd-socket"))
	}
	if len(names) != count {
		names = make([]string, count)
	}
	return files, names, nil
}

// takeActivated makes the sockets systemd passed the listeners' shared
// sockets: each listener takes the one named as it is
// (FileDescriptorName=), then the listeners left take the sockets left,
// in order. A listener without one binds its own per-slot sockets, as
// usual; a socket no listener takes is an error.
func (m *master) takeActivated(files []*os.File, names []string) error {
	listeners := m.listenerNames()
	var free []int // the sockets named for no listener, in order
	for j, n := range names {
		if !slices.Contains(listeners, n) {
			free = append(free, j)
		}
	}
	taken := make([]bool, len(files))
	pick := make([]int, len(m.addrs))
	for i, b := range m.addrs {
		pick[i] = slices.Index(names, b.name)
		if pick[i] < 0 && len(free) > 0 {
			pick[i], free = free[0], free[1:]
		}
		if pick[i] >= 0 {
			taken[pick[i]] = true
		}
	}
	for i, b := range m.addrs {
		j := pick[i]
		if j < 0 {
			continue
		}
		sa, err := sockName(files[j])
		if err != nil {
			return fmt.Errorf("flock: socket activation: listener %q: %v", b.name, err)
		}
		b.ip, b.port = sockAddr(sa)
		if b.ip.IsUnspecified() {
			b.ip = nil
		}
		b.host, b.shared = hostOf(b.ip), files[j]
		m.log.Info("flock: listener from systemd", "listener", b.name, "addr", b.String())
	}
	if i := slices.Index(taken, false); i >= 0 {
		return fmt.Errorf("flock: socket activation: no listener takes fd %d (named %q); the listeners are %q", 3+i, names[i], listeners)
	}
	return nil
}

func hostOf(ip net.IP) string {
	if ip == nil {
		return ""
	}
	return ip.String()
}

func (m *master) listenerNames() []string {
	var out []string
	for _, b := range m.addrs {
		out = append(out, b.name)
	}
	return out
}
