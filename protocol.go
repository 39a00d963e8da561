package flock

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// flock's own kind of worker, both ends: this program started again with
// FLOCK_WORKER set, talking to the master over a socket pair. The worker's
// files: fd 3 the slot's socket of the first listener, fd 4 its end of the
// control socket (EOF tells either side the other is gone), then the
// slot's sockets of the other listeners, then the spares (FLOCK_SPARES:
// the listener of each), then the binary it was executed from
// (FLOCK_BINARY_FD; the worker closes it).
//
// Master to worker, one line each: "stop" (drain and exit), "ping" (answer
// "alive"), "spare N" with a socket attached (SCM_RIGHTS: accept on it
// too, for listener N).
// Worker to master: "ready", "alive", and at once when ready, then at most
// once a second while it serves, and once after its drain, a report:
// "requests N", "connections N" (totals so far), "open N" (connections
// open now), "heap TOTAL USED" (bytes), in that order, "heap" last; and
// "report TOPIC LEN" followed by LEN bytes (Report, report.go). Unknown lines
// are ignored, so that a master and a worker of different versions (during
// a HUP onto a new release) still work together.

const envBinaryFD = "FLOCK_BINARY_FD"

// flockLauncher starts flock workers.
type flockLauncher struct {
	log *slog.Logger
}

type flockProc struct {
	cmd     *exec.Cmd
	ctrl    *os.File // the master's end of the control socket pair
	log     *slog.Logger
	waiting atomic.Bool // the reader waits for a line, rather than handing one over
}

func (l flockLauncher) launch(s launchSpec) (proc, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	unix.SetNonblock(fds[0], true) // read through the poller, not a blocked thread per worker
	mine, theirs := os.NewFile(uintptr(fds[0]), "flock-control"), os.NewFile(uintptr(fds[1]), "flock-control")
	defer theirs.Close()

	files := append([]*os.File{s.socks[0], theirs}, s.socks[1:]...)
	var spareOf []string
	for _, sp := range s.spares {
		files = append(files, sp.f)
		spareOf = append(spareOf, strconv.Itoa(sp.ln))
	}
	files = append(files, s.bin.f)
	binFD := strconv.Itoa(3 + len(files) - 1)
	cmd := exec.Command("/proc/self/fd/"+binFD, os.Args[1:]...)
	cmd.Args[0] = os.Args[0]
	cmd.Env = append(s.env, envWorker+"="+strconv.Itoa(s.slot), envMasterPID+"="+strconv.Itoa(os.Getpid()),
		envSpares+"="+strings.Join(spareOf, ","), envBinaryFD+"="+binFD)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.ExtraFiles = files
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM, Credential: s.cred}
	if err := cmd.Start(); err != nil {
		mine.Close()
		return nil, err
	}
	p := &flockProc{cmd: cmd, ctrl: mine, log: l.log.With("pid", cmd.Process.Pid)}
	read := make(chan struct{})
	go p.read(s, read)
	go p.wait(s, read)
	return p, nil
}

func (p *flockProc) Pid() int { return p.cmd.Process.Pid }
func (p *flockProc) Stop()    { p.send("stop") }
func (p *flockProc) Ping()    { p.send("ping") }
func (p *flockProc) Kill()    { p.cmd.Process.Kill() }

func (p *flockProc) watched() bool { return true }

func (p *flockProc) send(line string) {
	if _, err := p.ctrl.Write([]byte(line + "\n")); err != nil {
		p.log.Debug("flock: cannot write to worker; it is probably exiting", "err", err)
	}
}

// TakeSpare sends the worker a socket of listener ln to accept on as
// well, while it runs.
func (p *flockProc) TakeSpare(f *os.File, ln int) error {
	rc, err := p.ctrl.SyscallConn()
	if err != nil {
		return err
	}
	sc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	cerr := sc.Control(func(sock uintptr) {
		err = rc.Write(func(fd uintptr) bool {
			serr = unix.Sendmsg(int(fd), []byte("spare "+strconv.Itoa(ln)+"\n"), unix.UnixRights(int(sock)), nil, 0)
			return serr != unix.EAGAIN
		})
	})
	for _, e := range []error{cerr, err, serr} {
		if e != nil {
			return e
		}
	}
	return nil
}

// read turns the worker's lines into events until EOF.
func (p *flockProc) read(s launchSpec, done chan<- struct{}) {
	defer close(done)
	var c counts
	// A report is a block of lines ending with "heap": one event for the
	// block, so that a rate sees one update a second. A worker that never
	// sends "heap" (an older flock) gets an event per line.
	warned, blocks := false, false
	br := bufio.NewReader(p.ctrl)
	for {
		p.waiting.Store(br.Buffered() == 0)
		line, err := br.ReadString('\n')
		p.waiting.Store(false)
		if err != nil {
			return
		}
		line = strings.TrimSuffix(line, "\n")
		verb, arg, _ := strings.Cut(line, " ")
		e := procEvent{p: p}
		switch verb {
		case "ready":
			e.kind = procReady
		case "alive":
			e.kind = procAlive
		case "report":
			topic, data, err := readReport(br, arg)
			if err != nil {
				p.log.Warn("flock: bad report from worker", "err", err)
				if errors.Is(err, errReportDropped) {
					continue
				}
				return // the stream is out of step
			}
			e.kind, e.text, e.data = procReport, topic, data
		default:
			if c.set(verb, arg) {
				blocks = blocks || verb == "heap"
				if blocks && verb != "heap" {
					continue // the rest of the block follows
				}
				e.kind, e.counts = procCounts, c
				break
			}
			if !warned { // once per worker
				warned = true
				p.log.Warn("flock: unknown message from worker", "message", line)
			}
			continue
		}
		select {
		case s.out <- e:
		case <-s.done:
			return
		}
	}
}

// wait reaps the process and reports its exit once what it said before
// has been read: its end of the control socket closes with it, unless a
// process it started holds it. So, after the exit, the socket is closed
// once the reader has waited 100 ms for a line with nothing unread; never
// while it is handing over what it read (the master may be slow to take
// it: its last report must not be lost).
func (p *flockProc) wait(s launchSpec, read <-chan struct{}) {
	p.cmd.Wait()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	quiet := 0
	for open := true; open; {
		select {
		case <-read:
			open = false
		case <-s.done:
			open = false
		case <-tick.C:
			if quiet++; !p.waiting.Load() || unread(p.ctrl) > 0 {
				quiet = 0
			}
			if quiet >= 10 {
				p.ctrl.Close() // ends the reader
				<-read
				open = false
			}
		}
	}
	p.ctrl.Close()
	select {
	case s.out <- procEvent{p: p, kind: procExited, state: p.cmd.ProcessState}:
	case <-s.done:
	}
}

// unread is how many bytes wait in socket f, 0 if unknown.
func unread(f *os.File) int {
	n := 0
	withFD(f, func(fd int) (err error) { n, err = unix.IoctlGetInt(fd, unix.SIOCINQ); return err })
	return n
}

// The worker's end.

// ctrlMsg is a line from the master, with the socket it carried ("spare
// N": a spare of listener N).
type ctrlMsg struct {
	line string
	file *os.File
	ln   int
}

// readControl reads the master's lines, and the sockets that come with
// them, until EOF; then it closes out.
func readControl(c *net.UnixConn, out chan<- ctrlMsg) {
	defer close(out)
	buf, oob := make([]byte, 4096), make([]byte, unix.CmsgSpace(4*8))
	var pending []byte
	var fds []int
	for {
		n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
		if oobn > 0 {
			cmsgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
			for _, cm := range cmsgs {
				if got, err := unix.ParseUnixRights(&cm); err == nil {
					fds = append(fds, got...)
				}
			}
		}
		pending = append(pending, buf[:n]...)
		for {
			i := bytes.IndexByte(pending, '\n')
			if i < 0 {
				break
			}
			m := ctrlMsg{line: string(pending[:i])}
			pending = pending[i+1:]
			if verb, arg, _ := strings.Cut(m.line, " "); verb == "spare" && len(fds) > 0 {
				m.ln, _ = strconv.Atoi(arg)
				unix.CloseOnExec(fds[0])
				m.file, fds = os.NewFile(uintptr(fds[0]), "flock-spare"), fds[1:]
			}
			out <- m
		}
		if err != nil {
			return
		}
	}
}
