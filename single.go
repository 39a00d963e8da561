package flock

import (
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
)

// runSingle runs the servers in this process, with no master and no
// workers (Options.Single): what a developer runs under a debugger. It
// returns nil after TERM or QUIT (drained), ErrInterrupted after INT.
func runSingle(setup func(*Worker) error, c *config) error {
	log := c.Logger.With("pid", os.Getpid(), "mode", "single")
	signal.Ignore(workerIgnored...)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGQUIT, syscall.SIGINT)
	defer signal.Stop(sigs)
	if c.Init != nil {
		if err := c.Init(); err != nil {
			return fmt.Errorf("flock: Init: %w", err)
		}
	}
	w := newWorker(c)
	if err := setup(w); err != nil {
		return fmt.Errorf("flock: setup: %w", err)
	}
	if name := w.missing(); name != "" {
		return fmt.Errorf("flock: setup: %w %q", ErrNoServer, name)
	}
	var lns []net.Listener
	closeAll := func() {
		for _, ln := range lns {
			ln.Close()
		}
	}
	for _, l := range c.listeners {
		ln, err := net.Listen("tcp", l.Addr)
		if err != nil {
			closeAll()
			return fmt.Errorf("flock: listen %s: %w", l.Addr, unwrapOpError(err))
		}
		lns = append(lns, ln)
	}
	ln := lns[0]
	if c.PIDFile != "" {
		if err := writePIDFile(c.PIDFile, os.Getpid()); err != nil {
			closeAll()
			return fmt.Errorf("flock: PIDFile %q: %v", c.PIDFile, err)
		}
		defer removePIDFile(c.PIDFile, os.Getpid())
	}
	if c.PIDDir != "" {
		if err := c.writeOwnPID(); err != nil {
			closeAll()
			return err
		}
		defer c.removePID("master", os.Getpid())
	}
	v := newServers(len(lns))
	for i, s := range w.servers {
		v.set(i, s)
	}
	for i, ln := range lns {
		v.serve(i, ln)
	}
	log.Info("flock: listening", "event", "listening", "addr", ln.Addr().String())
	select {
	case err := <-v.served:
		return fmt.Errorf("flock: serve: %w", err)
	case sig := <-sigs:
		log.Info("flock: stopping", "event", "shutdown", "reason", signalName(sig))
		if sig == syscall.SIGINT {
			v.stopAll()
			return ErrInterrupted
		}
		v.drain(c.ShutdownTimeout)
		return nil
	}
}
