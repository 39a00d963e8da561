package flock

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
)

// runSingle serves h in this process, with no master and no workers
// (Options.Single): what a developer runs under a debugger. Serve returns
// nil after TERM or QUIT (drained), ErrInterrupted after INT.
func runSingle(h http.Handler, c *config) error {
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
	ln, err := net.Listen("tcp", c.Addr)
	if err != nil {
		return fmt.Errorf("flock: listen %s: %w", c.Addr, unwrapOpError(err))
	}
	if c.PIDFile != "" {
		if err := writePIDFile(c.PIDFile, os.Getpid()); err != nil {
			ln.Close()
			return fmt.Errorf("flock: PIDFile %q: %v", c.PIDFile, err)
		}
		defer removePIDFile(c.PIDFile, os.Getpid())
	}
	if c.PIDDir != "" {
		if err := c.writeOwnPID(); err != nil {
			ln.Close()
			return err
		}
		defer c.removePID("master", os.Getpid())
	}
	app := newAppServer(h, c, log)
	app.serve(ln)
	log.Info("flock: listening", "event", "listening", "addr", ln.Addr().String())
	select {
	case err := <-app.served:
		return fmt.Errorf("flock: serve: %w", err)
	case sig := <-sigs:
		log.Info("flock: stopping", "event", "shutdown", "reason", signalName(sig))
		if sig == syscall.SIGINT {
			app.srv.Close()
			return ErrInterrupted
		}
		app.drain(c.ShutdownTimeout)
		return nil
	}
}
