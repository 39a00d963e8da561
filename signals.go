package flock

import (
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/sys/unix"
)

// What a signal asks of the master. The table below is the whole contract;
// master.onSignal carries it out.
type action int

const (
	actAddWorker    action = iota // TTIN
	actRemoveWorker               // TTOU
	actGraceful                   // QUIT, TERM
	actImmediate                  // INT
	actRoll                       // HUP: rolling restart
	actUpgrade                    // USR2: binary upgrade
)

var masterSignals = map[os.Signal]action{
	syscall.SIGTTIN: actAddWorker,
	syscall.SIGTTOU: actRemoveWorker,
	syscall.SIGQUIT: actGraceful,
	syscall.SIGTERM: actGraceful,
	syscall.SIGINT:  actImmediate,
	syscall.SIGHUP:  actRoll,
	syscall.SIGUSR2: actUpgrade,
}

// Signals meant for the master that a worker must survive. TTIN and TTOU
// would otherwise stop (freeze) a Go process; HUP and USR2 would kill it.
var workerIgnored = []os.Signal{syscall.SIGTTIN, syscall.SIGTTOU, syscall.SIGHUP, syscall.SIGUSR2}

// Signals on which a worker drains and exits by itself (for example under
// systemd's KillMode=control-group, which signals every process).
var workerStop = []os.Signal{syscall.SIGTERM, syscall.SIGQUIT}

// notifyMaster subscribes to the master's signals. The channel is generously
// buffered and its reader never blocks, so a burst is not dropped by
// signal.Notify; only signals of one kind arriving faster than the loop
// runs can coalesce in the kernel. The signals are named one by one: a bare
// Notify would also deliver the runtime's SIGURG.
func notifyMaster() (<-chan os.Signal, func()) {
	ch := make(chan os.Signal, 64)
	sigs := make([]os.Signal, 0, len(masterSignals))
	for s := range masterSignals {
		sigs = append(sigs, s)
	}
	signal.Notify(ch, sigs...)
	return ch, func() { signal.Stop(ch) }
}

// signalName is "SIGTTIN" rather than Go's "stopped (tty input)".
func signalName(s os.Signal) string {
	if n, ok := s.(syscall.Signal); ok {
		if name := unix.SignalName(n); name != "" {
			return name
		}
	}
	return s.String()
}
