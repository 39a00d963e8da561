package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/flockhq/flock"
	"golang.org/x/sys/unix"
)

// The versions, as the master's extension runs them: each is a worker
// group named as the version, on its own port of VersionPorts. The
// extension's state is under p.mu; the Controller calls that change
// groups are made one at a time, under p.ops, never under p.mu (the
// events that answer them need it).

// ErrUnknownVersion is in the error for a version with no folder of its
// name under VersionPath.
var ErrUnknownVersion = errors.New("unknown version")

// ErrVersionFailed is in the error for a version whose workers did not
// start (crashed, or were not ready in time); it is tried again after a
// back-off.
var ErrVersionFailed = errors.New("version did not start")

// vstate is where a version is in its life.
type vstate int

const (
	vStopped  vstate = iota // no worker
	vStarting               // workers asked for, none ready yet: requests wait
	vRunning                // at least one worker ready: requests go to its port
	vStopping               // the proxies are told to stop routing to it; then its workers drain
	vFailed                 // its workers did not start; stopped, tried again after retry
)

var vstateNames = [...]string{"stopped", "starting", "running", "stopping", "failed"}

func (s vstate) String() string { return vstateNames[s] }

var vmoves = map[vstate][]vstate{
	vStopped:  {vStarting},
	vStarting: {vRunning, vFailed, vStopping},
	vRunning:  {vStopping, vFailed},
	vStopping: {vStopped, vStarting},
	vFailed:   {vStarting, vStopping},
}

type version struct {
	name  string
	port  int
	addr  string // as bound: 127.0.0.1:port
	added bool   // its group is in the master
	want  int
	state vstate
	ready map[int]bool // the pids of its ready workers
	err   error        // why it failed
	fails int          // failed starts in a row
	retry time.Time    // when a failed version may be tried again
	used  time.Time    // its last request, as the proxies report
}

func (v *version) to(next vstate) {
	for _, ok := range vmoves[v.state] {
		if ok == next {
			v.state = next
			return
		}
	}
	panic(fmt.Sprintf("proxy: version %s: no transition from %v to %v", v.name, v.state, next))
}

// routable reports whether the proxies send requests to it.
func (v *version) routable() bool { return v.state == vRunning }

// failedBackoff is the wait before a version that failed n starts in a
// row is tried again.
func failedBackoff(n int) time.Duration {
	return min(time.Second<<min(n-1, 6), time.Minute)
}

// freePort finds a port of the range nobody listens on: a bind without
// SO_REUSEPORT fails where any socket is bound, ours (a version, or the
// previous master's after USR2) or anyone's.
func (p *Proxy) freePort() (int, error) {
	taken := map[int]bool{}
	for _, v := range p.vs {
		taken[v.port] = true
	}
	for port := p.cfg.lo; port <= p.cfg.hi; port++ {
		if taken[port] {
			continue
		}
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return 0, err
		}
		err = unix.Bind(fd, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}})
		unix.Close(fd)
		if err == nil {
			return port, nil
		}
	}
	return 0, fmt.Errorf("versionPorts %s: no free port left", p.cfg.VersionPorts)
}

// ensure has version name run n workers, starting it if it does not run.
// A version that failed is not tried again before its back-off is over.
func (p *Proxy) ensure(name string, n int) error {
	if err := checkVersion(name); err != nil {
		return fmt.Errorf("%w: %v", ErrUnknownVersion, err)
	}
	p.ops.Lock()
	defer p.ops.Unlock()
	p.mu.Lock()
	v := p.vs[name]
	switch {
	case v == nil:
		port, err := p.freePort()
		if err != nil {
			p.mu.Unlock()
			return err
		}
		v = &version{name: name, port: port, addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), ready: map[int]bool{}}
	case v.state == vFailed && time.Now().Before(v.retry):
		err := v.err
		p.mu.Unlock()
		return fmt.Errorf("%w (tried again from %s)", err, v.retry.Format(time.TimeOnly))
	case (v.state == vStarting || v.state == vRunning) && v.want == n:
		p.mu.Unlock()
		return nil
	}
	added := v.added
	prog, err := p.cfg.program(name, v.port)
	p.mu.Unlock()
	if err != nil {
		return err
	}
	if !added {
		err = p.ctl.AddGroup(flock.WorkerGroup{Name: name, Program: prog, Workers: n, Addr: v.addr, SharedSocket: true})
	} else {
		err = p.ctl.SetGroupWorkers(name, n)
	}
	if err != nil {
		return fmt.Errorf("version %s: %w", name, err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.vs[name], v.added, v.want, v.used = v, true, n, time.Now()
	switch v.state {
	case vStopped, vStopping, vFailed:
		v.to(vStarting)
		if len(v.ready) > 0 {
			v.to(vRunning)
		}
	}
	p.changedLocked()
	return nil
}

// waitReady waits until version name has n workers ready, or has failed,
// or the start timeout or ctx is over. A version that did not start in
// time is stopped, and the error says why.
func (p *Proxy) waitReady(ctx context.Context, name string, n int) error {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.startTimeout())
	defer cancel()
	for {
		p.mu.Lock()
		v, ch := p.vs[name], p.changed
		var err error
		done := v == nil
		if v != nil {
			switch {
			case v.state == vFailed:
				done, err = true, v.err
			case v.state == vStopped || v.state == vStopping:
				done, err = true, fmt.Errorf("version %s was stopped while starting", name)
			case len(v.ready) >= n:
				done = true
			}
		}
		p.mu.Unlock()
		if done {
			return err
		}
		select {
		case <-ch:
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				p.fail(name, fmt.Errorf("%w: %s: %d of %d workers ready after %v (versionStartTimeout)", ErrVersionFailed, name, p.readyCount(name), n, p.cfg.startTimeout()))
			}
			return p.failure(name, ctx.Err())
		}
	}
}

func (p *Proxy) readyCount(name string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if v := p.vs[name]; v != nil {
		return len(v.ready)
	}
	return 0
}

// failure is why name failed, or else err.
func (p *Proxy) failure(name string, err error) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if v := p.vs[name]; v != nil && v.state == vFailed {
		return v.err
	}
	return err
}

// fail marks a version that has no worker ready failed, and stops it.
func (p *Proxy) fail(name string, why error) {
	p.mu.Lock()
	v := p.vs[name]
	if v == nil || v.state != vStarting && (v.state != vRunning || len(v.ready) > 0) {
		p.mu.Unlock()
		return
	}
	v.fails++
	wait := failedBackoff(v.fails)
	v.err, v.retry = why, time.Now().Add(wait)
	v.to(vFailed)
	p.changedLocked()
	p.mu.Unlock()
	p.log.Warn("flock proxy: version failed to start; stopping it", "version", name, "err", why, "retry_in", wait.String())
	go func() {
		p.ops.Lock()
		defer p.ops.Unlock()
		if err := p.ctl.SetGroupWorkers(name, 0); err != nil && !errors.Is(err, flock.ErrShuttingDown) {
			p.log.Warn("flock proxy: cannot stop a failed version", "version", name, "err", err)
		}
	}()
}

// stop takes version name out of the proxies' table, waits until every
// proxy worker has the table without it (requests they forwarded before
// that are in flight on its workers, which drain), and stops its workers.
func (p *Proxy) stop(name string) error {
	p.ops.Lock()
	defer p.ops.Unlock()
	p.mu.Lock()
	v := p.vs[name]
	switch {
	case v == nil || v.state == vStopped:
		p.mu.Unlock()
		return nil
	case name == p.def:
		p.mu.Unlock()
		return fmt.Errorf("version %s is the default: promote another one first", name)
	case v.state != vStopping:
		v.to(vStopping)
	}
	seq := p.changedLocked()
	p.mu.Unlock()
	p.waitAcks(seq, 5*time.Second)
	if err := p.ctl.SetGroupWorkers(name, 0); err != nil {
		return fmt.Errorf("version %s: %w", name, err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if v.state == vStopping {
		v.to(vStopped)
		v.want, v.ready = 0, map[int]bool{}
		p.changedLocked()
	}
	return nil
}

// reportLag bounds how late the proxy workers' usage reaches the master:
// they report at most once a second.
const reportLag = 2 * time.Second

// idle stops the versions other than the default that have served no
// request for NonDefaultWorkerIdleTime (and for reportLag at least).
func (p *Proxy) idle(now time.Time) {
	var names []string
	p.mu.Lock()
	for name, v := range p.vs {
		if name != p.def && v.state == vRunning && now.Sub(v.used) >= max(p.cfg.idleTime(), reportLag) && !p.activeLocked(name) {
			names = append(names, name)
		}
	}
	p.mu.Unlock()
	for _, name := range names {
		p.log.Info("flock proxy: version idle; stopping it", "version", name, "idle", p.cfg.idleTime())
		if err := p.stop(name); err != nil && !errors.Is(err, flock.ErrShuttingDown) {
			p.log.Warn("flock proxy: cannot stop an idle version", "version", name, "err", err)
		}
	}
}

// Event follows the versions' workers and the proxy workers' reports.
func (p *Proxy) Event(e flock.Event) {
	switch e.Kind {
	case flock.EventReport:
		if e.Topic == reportTopic {
			p.usage(e.PID, e.Data)
		}
		return
	case flock.EventForked, flock.EventReady, flock.EventExited, flock.EventGaveUp:
	default:
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if e.Kind == flock.EventExited {
		delete(p.acks, e.PID)
		delete(p.use, e.PID)
	}
	v := p.vs[e.Group]
	if v == nil {
		return
	}
	switch e.Kind {
	case flock.EventForked:
		if !p.countForks || e.Start != flock.StartFirst {
			return
		}
		v.want++
		if v.state == vStopped {
			v.to(vStarting)
		}
	case flock.EventReady:
		v.ready[e.PID] = true
		if v.state == vStarting {
			v.to(vRunning)
			v.fails = 0
		}
	case flock.EventExited:
		delete(v.ready, e.PID)
		if e.Exit.Failed() && v.state == vStarting {
			why := fmt.Errorf("%w: %s: worker %d exited (%s, status %d) before it was ready", ErrVersionFailed, v.name, e.PID, e.Exit, e.Status)
			if e.Exit == flock.ExitBootTimeout {
				why = fmt.Errorf("%w: %s: worker %d not ready within the boot timeout", ErrVersionFailed, v.name, e.PID)
			}
			p.mu.Unlock()
			p.fail(v.name, why)
			p.mu.Lock()
			return
		}
	case flock.EventGaveUp:
		if len(v.ready) == 0 && v.state == vRunning {
			p.mu.Unlock()
			p.fail(v.name, fmt.Errorf("%w: %s: %v", ErrVersionFailed, v.name, e.Err))
			p.mu.Lock()
			return
		}
	}
	p.changedLocked()
}
