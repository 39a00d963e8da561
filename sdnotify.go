package flock

import (
	"os"

	"golang.org/x/sys/unix"
)

// sdNotify sends state to systemd when it supervises us with Type=notify
// (NOTIFY_SOCKET set): one datagram, the whole protocol we need.
func sdNotify(state string) {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return
	}
	if addr[0] == '@' {
		addr = "\x00" + addr[1:] // abstract namespace
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return
	}
	defer unix.Close(fd)
	unix.Sendto(fd, []byte(state), 0, &unix.SockaddrUnix{Name: addr})
}
