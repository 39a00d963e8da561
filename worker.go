package flock

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime/metrics"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Inherited file descriptors (exec.Cmd.ExtraFiles: entry i is fd 3+i).
const (
	fdListener = 3 // the slot's socket, bound by the master
	fdControl  = 4 // the control socket pair; EOF means the master is gone (see protocol.go)
)

// orphanGrace bounds the drain when the master has died: workers must be
// gone within 2 s of their master.
const orphanGrace = 1500 * time.Millisecond

func runWorker(setup func(*Worker) error, c *config) error {
	log := c.Logger.With("pid", os.Getpid(), "slot", WorkerSlot())
	signal.Ignore(workerIgnored...)
	stopSig := make(chan os.Signal, 1)
	signal.Notify(stopSig, workerStop...)
	masterPID, _ := strconv.Atoi(os.Getenv(envMasterPID))
	if fd, err := strconv.Atoi(os.Getenv(envBinaryFD)); err == nil {
		unix.Close(fd) // what the master executed; the application has no use for it
		os.Unsetenv(envBinaryFD)
	}
	fail := func(what string, err error) {
		log.Error("flock: worker cannot start", "step", what, "err", err)
		os.Exit(exitBootFailure)
	}
	// FileConn takes a copy that processes the application starts do not
	// inherit: they must not hold the control socket, or the master would not
	// see this worker's end close.
	ctrlFile := os.NewFile(fdControl, "flock-control")
	ctrlConn, err := net.FileConn(ctrlFile)
	if err != nil {
		return fmt.Errorf("flock: %s is set but fd %d is not a control socket: %v", envWorker, fdControl, err)
	}
	ctrlFile.Close()
	ctrl := ctrlConn.(*net.UnixConn)
	fromMaster := make(chan ctrlMsg)
	go readControl(ctrl, fromMaster)

	w := newWorker(c)
	var early []ctrlMsg // spares sent while Init and setup ran
	for _, step := range []struct {
		name string
		fn   func() error
	}{{"Init", c.Init}, {"setup", func() error { return setup(w) }}} {
		if step.fn == nil {
			continue
		}
		got, err := boot(step.fn, fromMaster, stopSig, log)
		early = append(early, got...)
		if err != nil {
			fail(step.name, err)
		}
	}
	if name := w.missing(); name != "" {
		fail("setup", fmt.Errorf("%w %q", ErrNoServer, name))
	}
	v := newServers(len(w.names))
	for i, s := range w.servers {
		v.set(i, s)
	}
	// Joining the reuseport group only now keeps traffic away from a worker
	// that is not ready. For a replacement the sockets already listen, and
	// what queued on them while the slot was empty is served now.
	for i, fd := range listenerFDs(len(w.names)) {
		if err := unix.Listen(fd, backlog()); err != nil {
			fail("listen "+w.names[i], err)
		}
		ln, err := fileListener(fd, "flock-listener")
		if err != nil {
			fail("listener "+w.names[i], err)
		}
		v.serve(i, ln)
	}
	// Spares: sockets of removed slots the master keeps open; this worker
	// accepts on them too (see master.retireSocket).
	fd := fdControl + len(w.names)
	for _, i := range spareListeners(os.Getenv(envSpares)) {
		early = append(early, ctrlMsg{file: os.NewFile(uintptr(fd), "flock-spare"), ln: i})
		fd++
	}
	for _, m := range early {
		ln, err := net.FileListener(m.file)
		m.file.Close()
		if err != nil || m.ln >= len(w.names) {
			fail("spare listener", fmt.Errorf("listener %d: %v", m.ln, err))
		}
		v.serve(m.ln, ln)
	}

	// The master shows what each worker served (and recycles on counts):
	// tell it with "ready", then at most once a second, and not at all
	// while idle.
	var reported [3]int64
	reports := map[string][]byte{}
	report := func(force bool) {
		now := [3]int64{v.requests.Load(), v.accepted.Load(), v.open()}
		if now != reported || force {
			reported = now
			total, used := heap()
			fmt.Fprintf(ctrl, "requests %d\nconnections %d\nopen %d\nheap %d %d\n", now[0], now[1], now[2], total, used)
		}
		if err := sendReports(ctrl, reports); err != nil {
			log.Debug("flock: cannot send a report to the master", "err", err)
		}
	}
	if _, err := ctrl.Write([]byte("ready\n")); err != nil {
		log.Warn("flock: cannot reach the master", "err", err)
	}
	report(true)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	budget := c.ShutdownTimeout
	for stop := false; !stop; {
		select {
		case <-tick.C:
			report(false)
		case msg, ok := <-fromMaster:
			switch {
			case !ok:
				log.Warn("flock: master is gone; stopping")
				budget, stop = orphanGrace, true
			case msg.line == "stop":
				stop = true
			case msg.line == "ping":
				fmt.Fprintln(ctrl, "alive")
			case msg.file != nil: // a spare, while serving
				ln, err := net.FileListener(msg.file)
				msg.file.Close()
				if err != nil || msg.ln >= len(w.names) {
					log.Error("flock: cannot accept on a spare socket", "listener", msg.ln, "err", err)
					break
				}
				log.Info("flock: serving a spare socket too", "listener", w.names[msg.ln])
				v.serve(msg.ln, ln)
			}
		case sig := <-stopSig:
			if os.Getppid() != masterPID { // Pdeathsig: the master died
				budget = orphanGrace
			}
			log.Info("flock: worker stopping on signal", "signal", signalName(sig))
			stop = true
		case err := <-v.served:
			log.Error("flock: worker stopped serving", "err", err)
			return fmt.Errorf("flock: serve: %w", err)
		}
	}
	v.drain(budget)
	report(false) // what it did up to now, before its exit
	return nil
}

// newWorker is the Worker of Run's setup: the names of its listeners, the
// first group's (the other groups' are other programs').
func newWorker(c *config) *Worker {
	mine := c.listeners[:c.groups[0].hi]
	w := &Worker{servers: make([]Server, len(mine))}
	for _, l := range mine {
		w.names = append(w.names, l.Name)
	}
	return w
}

// listenerFDs are where a worker finds the slot's sockets, one per
// listener: fd 3 for the first (as before there were more), the others
// after the control socket.
func listenerFDs(n int) []int {
	fds := []int{fdListener}
	for i := 1; i < n; i++ {
		fds = append(fds, fdControl+i)
	}
	return fds
}

// spareListeners reads FLOCK_SPARES: the listener index of each spare
// socket, comma-separated.
func spareListeners(s string) []int {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if i, err := strconv.Atoi(f); err == nil && i >= 0 {
			out = append(out, i)
		}
	}
	return out
}

func fileListener(fd int, name string) (net.Listener, error) {
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	return net.FileListener(f)
}

// boot runs fn (Init, setup), and exits the process if the master goes or
// asks it to stop meanwhile: it has accepted nothing yet, so nothing is
// lost, and a worker stuck in Init must not outlive its master. It returns
// the spares the master sent meanwhile.
func boot(fn func() error, fromMaster <-chan ctrlMsg, stopSig <-chan os.Signal, log *slog.Logger) ([]ctrlMsg, error) {
	done := make(chan error, 1)
	go func() { done <- fn() }()
	var spares []ctrlMsg
	for {
		select {
		case err := <-done:
			return spares, err
		case msg, ok := <-fromMaster:
			switch {
			case !ok || msg.line == "stop":
				log.Info("flock: worker stopped before it was ready", "master_gone", !ok)
				os.Exit(0)
			case msg.file != nil:
				spares = append(spares, msg)
			}
		case sig := <-stopSig:
			log.Info("flock: worker stopped before it was ready", "signal", signalName(sig))
			os.Exit(0)
		}
	}
}

// heap is the Go heap the runtime holds (live objects, free and unused
// spans not returned to the OS) and the part live objects use: what
// node-cluster-service reports as V8's heapTotal and heapUsed. Read from
// runtime/metrics, which does not stop the world.
func heap() (total, used int64) {
	s := []metrics.Sample{
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/unused:bytes"},
		{Name: "/memory/classes/heap/free:bytes"},
	}
	metrics.Read(s)
	for i, m := range s {
		if m.Value.Kind() == metrics.KindUint64 {
			v := int64(m.Value.Uint64())
			total += v
			if i == 0 {
				used = v
			}
		}
	}
	return total, used
}

// backlog is the listen backlog: the kernel's maximum, as net.Listen uses.
func backlog() int {
	b, err := os.ReadFile("/proc/sys/net/core/somaxconn")
	if n, err2 := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && err2 == nil && n > 0 {
		return min(n, 1<<16-1)
	}
	return unix.SOMAXCONN
}
