package flock

import (
	"net"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// A foreign worker's NOTIFY_SOCKET: the master's end of sd_notify, one
// datagram socket per worker in the abstract namespace (nothing on disk to
// clean up). As systemd's NotifyAccess=main, only the worker's own process
// is heard; the kernel attaches every sender's pid (SO_PASSCRED).

type notifySocket struct {
	name    string // NOTIFY_SOCKET: "@" for the abstract namespace
	c       *net.UnixConn
	closing chan struct{} // closed once the program has exited
}

var notifySockets atomic.Int64

func newNotifySocket() (*notifySocket, error) {
	name := "@flock/" + strconv.Itoa(os.Getpid()) + "/" + strconv.FormatInt(notifySockets.Add(1), 10)
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		return nil, err
	}
	rc, err := c.SyscallConn()
	if err == nil {
		cerr := rc.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1) })
		if err == nil {
			err = cerr
		}
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	return &notifySocket{name: name, c: c, closing: make(chan struct{})}, nil
}

// read turns p's datagrams into events until the socket is closed or
// drained.
func (n *notifySocket) read(p *foreignProc, s launchSpec) {
	buf, oob := make([]byte, 4096), make([]byte, unix.CmsgSpace(unix.SizeofUcred))
	warned := false
	for {
		nb, oobn, _, _, err := n.c.ReadMsgUnix(buf, oob)
		if err != nil {
			return
		}
		if pid := sender(oob[:oobn]); pid != p.Pid() {
			if !warned { // once per worker
				warned = true
				p.log.Warn("flock: sd_notify message from another process than the worker's; ignored (only its main process is heard)", "from", pid)
			}
			continue
		}
		for _, line := range strings.Split(string(buf[:nb]), "\n") {
			e, ok := notifyEvent(line)
			if !ok {
				continue
			}
			e.p = p
			select {
			case s.out <- e:
			case <-s.done:
				return
			}
		}
	}
}

// notifyEvent is what one sd_notify assignment means to the master, if
// anything.
func notifyEvent(line string) (procEvent, bool) {
	k, v, _ := strings.Cut(line, "=")
	switch {
	case line == "READY=1":
		return procEvent{kind: procReady}, true
	case line == "WATCHDOG=1":
		return procEvent{kind: procAlive}, true
	case line == "WATCHDOG=trigger":
		return procEvent{kind: procHung}, true
	case line == "STOPPING=1":
		return procEvent{kind: procStopping}, true
	case k == "STATUS":
		return procEvent{kind: procSaid, text: v}, true
	}
	return procEvent{}, false // RELOADING, MAINPID, EXTEND_TIMEOUT_USEC, …: not acted on
}

// sender is the pid in a datagram's credentials, 0 if none.
func sender(oob []byte) int {
	msgs, _ := unix.ParseSocketControlMessage(oob)
	for _, m := range msgs {
		if cred, err := unix.ParseUnixCredentials(&m); err == nil {
			return int(cred.Pid)
		}
	}
	return 0
}

// drain ends the reader once it has read what is queued: the program has
// exited, so anything it said is there already.
func (n *notifySocket) drain() {
	close(n.closing)
	n.c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
}

func (n *notifySocket) Close() error { return n.c.Close() }
