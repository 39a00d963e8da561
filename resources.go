package flock

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// The master's file descriptors are a budget: each worker costs it two
// (its slot's socket and its end of the control socket) and five more
// while it starts (the other end, exec's error pipe, /dev/null). Go's exec
// also needs a free descriptor above the highest one it passes. At the
// limit, what breaks first is what the operator needs most: the monitor
// cannot accept (a load balancer takes a healthy node out) and a
// replacement cannot start. So the master keeps fdReserve descriptors for
// the monitor's and the command endpoint's connections: a start that would
// eat into them is refused with a clear error instead.
const (
	fdReserve  = 16
	fdsToStart = 5
)

// ErrNoResources is in the error of a worker start refused or failed for
// want of file descriptors or processes.
var ErrNoResources = errors.New("not enough resources")

// checkFDs reports an error when starting what needs need more
// descriptors would leave fewer than fdReserve free.
func checkFDs(what string, need int) error {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return nil // cannot tell: let the start try
	}
	open := openFDs()
	if open < 0 || uint64(open+need+fdReserve) <= lim.Cur {
		return nil
	}
	return fmt.Errorf("%w: %s needs %d file descriptors and %d are kept for the monitor and commands, but %d of the %d allowed (RLIMIT_NOFILE) are open; raise the limit (ulimit -n, LimitNOFILE=)",
		ErrNoResources, what, need, fdReserve, open, lim.Cur)
}

// openFDs counts this process's open file descriptors, -1 if unknown.
func openFDs() int {
	d, err := os.Open("/proc/self/fd")
	if err != nil {
		return -1
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return -1
	}
	return len(names) - 1 // the directory itself
}

// startError says what a failed start means, for the errors that have a
// remedy: the process limit.
func startError(exe string, err error) error {
	if errors.Is(err, unix.EAGAIN) {
		return fmt.Errorf("start %s: %w: %w (the process limit, RLIMIT_NPROC or kernel.threads-max, is reached)", exe, ErrNoResources, err)
	}
	return fmt.Errorf("start %s: %w", exe, err)
}
