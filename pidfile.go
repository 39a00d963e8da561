package flock

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// writePIDFile writes pid atomically: a reader sees the old file or the new
// one, never a half-written one.
func writePIDFile(path string, pid int) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".flock-pid-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := fmt.Fprintf(tmp, "%d\n", pid); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// removePIDFile removes path only if it still names pid (a successor may
// have replaced it).
func removePIDFile(path string, pid int) {
	b, err := os.ReadFile(path)
	if err == nil && strings.TrimSpace(string(b)) == strconv.Itoa(pid) {
		os.Remove(path)
	}
}

// The PID directory (Options.PIDDir): one file per process, named by its
// role and pid, holding the pid: cluster2's layout. The master writes them
// all (a worker killed with SIGKILL could not remove its own), and removes
// what processes that are gone left behind when it starts.

func pidName(dir, role string, pid int) string {
	return filepath.Join(dir, role+"."+strconv.Itoa(pid)+".pid")
}

// writeOwnPID prepares the directory and writes this master's file.
func (c *config) writeOwnPID() error {
	if err := os.MkdirAll(c.PIDDir, 0o755); err != nil {
		return fmt.Errorf("flock: PIDDir %q: %v", c.PIDDir, err)
	}
	removeStalePIDs(c.PIDDir)
	if err := writePIDFile(pidName(c.PIDDir, "master", os.Getpid()), os.Getpid()); err != nil {
		return fmt.Errorf("flock: PIDDir %q: %v", c.PIDDir, err)
	}
	return nil
}

// writePID writes the file of a worker (role "worker") or a master.
func (c *config) writePID(role string, pid int) {
	if c.PIDDir != "" {
		if err := writePIDFile(pidName(c.PIDDir, role, pid), pid); err != nil {
			c.Logger.Warn("flock: cannot write a pid file", "dir", c.PIDDir, "pid", pid, "err", err)
		}
	}
}

func (c *config) removePID(role string, pid int) {
	if c.PIDDir != "" {
		removePIDFile(pidName(c.PIDDir, role, pid), pid)
	}
}

// removeStalePIDs removes the files of processes that no longer run.
func removeStalePIDs(dir string) {
	names, _ := filepath.Glob(filepath.Join(dir, "*.*.pid"))
	for _, name := range names {
		b, err := os.ReadFile(name)
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err == nil && pid > 0 && unix.Kill(pid, 0) == unix.ESRCH {
			os.Remove(name)
		}
	}
}
