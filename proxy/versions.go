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
	added bool // its group is in the master
	want  int
	state vstate
	ready map[int]bool // the pids of its ready workers
	err   error        // why it failed
	fails int          // failed starts in a row
	gen   uint64       // its starts, counted: a timer or a stop is about one
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

// addr is where its workers listen.
func (v *version) addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(v.port)) }

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
	if _, err := p.cfg.versionDir(name); err != nil { // before any lock: an unknown version costs nothing
		return err
	}
	p.ops.Lock()
	defer p.ops.Unlock()
	p.mu.Lock()
	v := p.vs[name]
	switch {
	case v != nil && v.state == vFailed && time.Now().Before(v.retry):
		err := v.err
		p.mu.Unlock()
		return fmt.Errorf("%w (tried again from %s)", err, v.retry.Format(time.TimeOnly))
	case v != nil && (v.state == vStarting || v.state == vRunning) && v.want == n:
		p.mu.Unlock()
		return nil
	case v == nil || !v.added: // a port nobody holds now
		port, err := p.freePort()
		if err != nil {
			p.mu.Unlock()
			return err
		}
		if v == nil {
			// In the table before its group is added: its first events
			// find it.
			v = &version{name: name, ready: map[int]bool{}}
			p.vs[name] = v
		}
		v.port = port
	}
	added := v.added
	prog, err := p.cfg.program(name, v.port)
	if err != nil {
		p.mu.Unlock()
		return err
	}
	if v.state != vStarting && v.state != vRunning {
		p.startLocked(v)
	}
	v.want, v.used = n, time.Now()
	p.mu.Unlock()

	if !added {
		err = p.ctl.AddGroup(flock.WorkerGroup{Name: name, Program: prog, Workers: n, Addr: v.addr(), SharedSocket: true})
	} else {
		err = p.ctl.SetGroupWorkers(name, n)
	}
	exists := added || err == nil || errors.Is(err, flock.ErrPartlyAdded)
	p.mu.Lock()
	v.added = exists
	if len(v.ready) > 0 && v.state == vStarting {
		v.to(vRunning)
	}
	p.changedLocked()
	p.mu.Unlock()
	if err != nil {
		err = fmt.Errorf("%w: %s: %v", ErrVersionFailed, name, err)
		p.fail(name, 0, err) // with back-off: a port taken meanwhile, an fd table full
		return err
	}
	return nil
}

// startLocked moves v to starting, for at most VersionStartTimeout.
func (p *Proxy) startLocked(v *version) {
	v.to(vStarting)
	v.gen++
	gen, timeout := v.gen, p.cfg.startTimeout()
	time.AfterFunc(timeout, func() {
		p.mu.Lock()
		ready, want := len(v.ready), v.want
		p.mu.Unlock()
		p.fail(v.name, gen, fmt.Errorf("%w: %s: %d of %d workers ready after %v (versionStartTimeout)", ErrVersionFailed, v.name, ready, want, timeout))
	})
}

// waitReady waits until version name has n workers ready, or has failed
// (a start fails by itself after VersionStartTimeout), or ctx is over.
func (p *Proxy) waitReady(ctx context.Context, name string, n int) error {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.startTimeout()+time.Second) // the start's timer comes first
	defer cancel()
	for {
		p.mu.Lock()
		v, ch := p.vs[name], p.changed
		var err error
		done := true
		switch {
		case v == nil || v.state == vStopped || v.state == vStopping:
			err = fmt.Errorf("version %s was stopped while starting", name)
		case v.state == vFailed:
			err = v.err
		case len(v.ready) < n:
			done = false
		}
		ready := 0
		if v != nil {
			ready = len(v.ready)
		}
		p.mu.Unlock()
		if done {
			return err
		}
		select {
		case <-ch:
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("version %s: %d of %d workers ready after %v", name, ready, n, p.cfg.startTimeout())
			}
			return ctx.Err()
		}
	}
}

// fail marks a starting version, or a running one with no worker ready,
// failed, and stops its workers. gen, unless 0, is the start it is about:
// a later start is left alone.
func (p *Proxy) fail(name string, gen uint64, why error) {
	p.mu.Lock()
	v := p.vs[name]
	if v == nil || gen != 0 && v.gen != gen || v.state != vStarting && (v.state != vRunning || len(v.ready) > 0) {
		p.mu.Unlock()
		return
	}
	v.fails++
	wait := failedBackoff(v.fails)
	v.err, v.retry = why, time.Now().Add(wait)
	v.to(vFailed)
	p.changedLocked()
	gen, added := v.gen, v.added
	p.mu.Unlock()
	p.log.Warn("flock proxy: version failed to start; stopping it", "version", name, "err", why, "retry_in", wait.String())
	if !added {
		return
	}
	go func() {
		p.ops.Lock()
		defer p.ops.Unlock()
		p.mu.Lock()
		still := v.gen == gen && v.state == vFailed // not started again meanwhile
		p.mu.Unlock()
		if !still {
			return
		}
		if err := p.ctl.SetGroupWorkers(name, 0); err != nil && !stopping(err) {
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
		if err := p.stop(name); err != nil && !stopping(err) {
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
	case flock.EventListening:
		p.startDefault()
		return
	case flock.EventForked, flock.EventReady, flock.EventExited, flock.EventGaveUp:
	default:
		return
	}
	if why := p.track(e); why != nil {
		p.fail(e.Group, 0, why)
	}
}

// track takes a worker event into the state, and returns why the
// version failed, if the event says it did.
func (p *Proxy) track(e flock.Event) (failed error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.acks[e.PID]; ok && e.Kind == flock.EventExited { // a proxy worker: waitAcks no longer waits for it
		delete(p.acks, e.PID)
		p.changedLocked()
	}
	if e.Kind == flock.EventExited {
		delete(p.use, e.PID)
	}
	v := p.vs[e.Group]
	if v == nil {
		return nil
	}
	switch e.Kind {
	case flock.EventForked:
		if p.ctl.Predecessor() == 0 || e.Start != flock.StartFirst { // counted so only after USR2 (inherit)
			return nil
		}
		v.want++
		if v.state == vStopped {
			p.startLocked(v)
		}
	case flock.EventReady:
		v.ready[e.PID] = true
		if v.state == vStarting {
			v.to(vRunning)
			v.fails = 0
		}
	case flock.EventExited:
		delete(v.ready, e.PID)
		switch {
		case e.Exit == flock.ExitBootTimeout && v.state == vStarting:
			return fmt.Errorf("%w: %s: worker %d not ready within the boot timeout", ErrVersionFailed, v.name, e.PID)
		case e.Exit.Failed() && v.state == vStarting:
			return fmt.Errorf("%w: %s: worker %d exited (%s, status %d) before it was ready", ErrVersionFailed, v.name, e.PID, e.Exit, e.Status)
		}
	case flock.EventGaveUp:
		if len(v.ready) == 0 && (v.state == vRunning || v.state == vStarting) {
			return fmt.Errorf("%w: %s: %v", ErrVersionFailed, v.name, e.Err)
		}
	}
	p.changedLocked()
	return nil
}

// startDefault starts the default version as the master begins to serve,
// unless the old master handed it down (USR2).
func (p *Proxy) startDefault() {
	p.mu.Lock()
	def, inherited := p.def, p.vs[p.def] != nil
	p.mu.Unlock()
	if def == "" || inherited {
		return
	}
	go func() {
		if err := p.ensure(def, p.cfg.DefaultWorkerCount); err != nil && !stopping(err) {
			p.log.Error("flock proxy: cannot start the default version; requests will try again", "version", def, "err", err)
		}
	}()
}

// stopping reports whether err says the master is going away: nothing to
// log when a background step meets it.
func stopping(err error) bool {
	return errors.Is(err, flock.ErrShuttingDown) || errors.Is(err, flock.ErrStopped)
}
