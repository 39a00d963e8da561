// Package proxy is node-cluster-service's proxy mode over flock: several
// versions of an application side by side, on one machine, behind proxy
// workers that route each request by a header.
//
// The master runs two kinds of workers. The proxy workers are flock's own
// (this program, under flock.Run) on the public ports, the config's
// bindings, with the zero-loss lifecycle of any flock worker. Each version
// is a worker group of a foreign program (flock.Supervise's kind): the
// program in VersionPath/<version>/, on a private port of VersionPorts
// that the master binds and hands over by socket activation (fd 3,
// LISTEN_FDS), and also names in PROXY_PORT, with its name in
// PROXY_VERSION.
//
// A request that names a version (x-version: v2) goes to that version's
// workers; one that names none, to the default version's. A version that
// does not run yet is started on demand, with NonDefaultWorkerCount
// workers, and its first requests wait until one is ready (at most
// VersionStartTimeout, then 503); a version with no folder gets 404. A
// version other than the default that serves nothing for
// NonDefaultWorkerIdleTime is stopped. `proxy promote v2 4` starts v2 with
// 4 workers, waits until they are ready, rewrites the config file's
// defaultVersion and only then sends new requests to v2: requests in
// flight on the old default finish there, and a version that does not
// start leaves the old default serving, the command saying why.
//
// The proxy workers learn the routes from the master over a unix socket
// (abstract, @flock-proxy/<master pid>, open to the master's own workers
// only): a long poll of the table of versions, and a call that starts a
// version and answers once it is ready. They report each version's
// requests and the ones in flight with flock.Report, which is what idle
// time is measured with.
package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/flockhq/flock"
	"golang.org/x/sys/unix"
)

// Proxy is the master's side: a flock.Extension that runs the versions.
type Proxy struct {
	cfg *Config
	ctl *flock.Controller
	log *slog.Logger

	ops sync.Mutex // one Controller call changing versions at a time

	mu      sync.Mutex
	def     string
	vs      map[string]*version
	seq     uint64
	changed chan struct{}             // closed and replaced at every change of the table
	acks    map[int]uint64            // the table each proxy worker has, by pid
	use     map[int]map[string]counts // each proxy worker's last report

	ln   net.Listener
	srv  *http.Server
	quit chan struct{}
	wg   sync.WaitGroup
}

// table is what the proxy workers route by.
type table struct {
	Seq      uint64            `json:"seq"`
	Default  string            `json:"default"`
	Versions map[string]string `json:"versions"` // the routable ones: name → address
}

const reportTopic = "proxy"

// linkAddr is the master's unix socket for its proxy workers.
func linkAddr(master int) string { return "@flock-proxy/" + strconv.Itoa(master) }

func newProxy(cfg *Config) *Proxy {
	return &Proxy{cfg: cfg, def: cfg.DefaultVersion, vs: map[string]*version{}, changed: make(chan struct{}), seq: 1, // a worker's first poll is after 0
		acks: map[int]uint64{}, use: map[int]map[string]counts{}, quit: make(chan struct{})}
}

// Start listens for the proxy workers and starts the idle check.
func (p *Proxy) Start(c *flock.Controller) error {
	p.ctl, p.log = c, c.Logger()
	if c.Predecessor() != 0 {
		p.inherit(c.Status())
	}
	ln, err := net.Listen("unix", linkAddr(os.Getpid()))
	if err != nil {
		return fmt.Errorf("proxy: %w", err)
	}
	p.ln = childrenOnly{ln}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /table", p.serveTable)
	mux.HandleFunc("POST /want", p.serveWant)
	p.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ErrorLog: c.ServerErrorLog(),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, peerKey{}, c.(peerConn).pid)
		}}
	p.wg.Add(2)
	go func() { defer p.wg.Done(); p.srv.Serve(p.ln) }()
	go func() { defer p.wg.Done(); p.idleLoop() }()
	return nil
}

// Stop ends the link and the idle check.
func (p *Proxy) Stop() {
	close(p.quit)
	if p.srv != nil {
		p.srv.Close()
	}
	p.wg.Wait()
}

// inherit takes the versions the old master ran (USR2), whose groups and
// sockets it handed down: each a version that starts with the workers the
// old one had, on its port.
func (p *Proxy) inherit(st flock.Status) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	for _, name := range st.Groups[1:] {
		v := p.vs[name]
		if v == nil && checkVersion(name) == nil {
			v = &version{name: name, added: true, ready: map[int]bool{}, used: now}
			p.vs[name] = v
		}
		if v == nil {
			continue
		}
		v.want = 0 // as many as are forked
		for _, l := range st.Listens {
			if l.Name == name {
				_, port, _ := net.SplitHostPort(l.Addr)
				v.port, _ = strconv.Atoi(port)
			}
		}
	}
}

func (p *Proxy) idleLoop() {
	t := time.NewTicker(max(min(p.cfg.idleTime()/4, time.Second), 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-p.quit:
			return
		case now := <-t.C:
			p.idle(now)
		}
	}
}

// changedLocked publishes a new table and returns its number.
func (p *Proxy) changedLocked() uint64 {
	p.seq++
	p.wakeLocked()
	return p.seq
}

// wakeLocked wakes whoever waits for a change: of the table, a version's
// state or the acks.
func (p *Proxy) wakeLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

func (p *Proxy) tableLocked() table {
	t := table{Seq: p.seq, Default: p.def, Versions: map[string]string{}}
	for name, v := range p.vs {
		if v.routable() {
			t.Versions[name] = v.addr()
		}
	}
	return t
}

// serveTable answers a proxy worker's long poll: the table once it is
// newer than the one the worker has (after), or the same after a while.
func (p *Proxy) serveTable(w http.ResponseWriter, r *http.Request) {
	after, _ := strconv.ParseUint(r.FormValue("after"), 10, 64)
	pid, _ := r.Context().Value(peerKey{}).(int)
	wait := time.NewTimer(20 * time.Second)
	defer wait.Stop()
	for {
		p.mu.Lock()
		if got, ok := p.acks[pid]; pid > 0 && (!ok || got < after) {
			p.acks[pid] = after // it has table after, and is waited for from now on
			p.wakeLocked()
		}
		t, ch := p.tableLocked(), p.changed
		p.mu.Unlock()
		if t.Seq > after {
			writeJSON(w, t)
			return
		}
		select {
		case <-ch:
		case <-wait.C:
			writeJSON(w, t)
			return
		case <-r.Context().Done():
			return
		case <-p.quit:
			return
		}
	}
}

// serveWant starts a version for a request that asks for it, and answers
// its address once it is ready: 404 for an unknown version, 503 for one
// that does not start.
func (p *Proxy) serveWant(w http.ResponseWriter, r *http.Request) {
	name := r.FormValue("version")
	err := p.ensureRunning(r.Context(), name)
	switch {
	case errors.Is(err, ErrUnknownVersion):
		http.Error(w, err.Error(), http.StatusNotFound)
	case err != nil:
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
	default:
		p.mu.Lock()
		addr := p.vs[name].addr()
		p.mu.Unlock()
		writeJSON(w, map[string]string{"addr": addr})
	}
}

// ensureRunning starts version name if it does not run, with
// NonDefaultWorkerCount workers (DefaultWorkerCount for the default), and
// waits until one is ready.
func (p *Proxy) ensureRunning(ctx context.Context, name string) error {
	p.mu.Lock()
	v, n := p.vs[name], p.cfg.NonDefaultWorkerCount
	if name == p.def {
		n = p.cfg.DefaultWorkerCount
	}
	running := v != nil && (v.state == vRunning || v.state == vStarting)
	p.mu.Unlock()
	if !running {
		if err := p.ensure(name, n); err != nil {
			return err
		}
	}
	return p.waitReady(ctx, name, 1)
}

// waitAcks waits until every proxy worker that polls has table seq, or
// for at most d.
func (p *Proxy) waitAcks(seq uint64, d time.Duration) {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		p.mu.Lock()
		all, ch := true, p.changed
		for _, got := range p.acks {
			all = all && got >= seq
		}
		p.mu.Unlock()
		if all {
			return
		}
		select {
		case <-ch:
		case <-deadline.C:
			p.log.Warn("flock proxy: a proxy worker did not confirm the new routes in time; going on", "wait", d)
			return
		}
	}
}

// counts are a proxy worker's requests to one version: all it sent, and
// those in flight.
type counts struct {
	Requests uint64 `json:"requests"`
	Active   int64  `json:"active"`
}

// usage takes a proxy worker's report: a version whose requests grew, or
// that has some in flight or had until now, is in use: idle time counts
// from the end of the last request.
func (p *Proxy) usage(pid int, data []byte) {
	var got map[string]counts
	if json.Unmarshal(data, &got) != nil {
		return
	}
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	last := p.use[pid]
	for name, c := range got {
		if v := p.vs[name]; v != nil && (c.Active > 0 || last[name].Active > 0 || c.Requests != last[name].Requests) {
			v.used = now
		}
	}
	p.use[pid] = maps.Clone(got)
}

// activeLocked reports whether any proxy worker has a request to name in
// flight.
func (p *Proxy) activeLocked(name string) bool {
	for _, m := range p.use {
		if m[name].Active > 0 {
			return true
		}
	}
	return false
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

// childrenOnly accepts connections from the master's own workers only
// (its children in its process group; a foreign program's workers have
// groups of their own): the socket is abstract, so any local process
// could reach it.
type childrenOnly struct{ net.Listener }

// peerConn is a connection from a proxy worker, with its pid.
type peerConn struct {
	net.Conn
	pid int
}

type peerKey struct{}

func (l childrenOnly) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		pid := peerPID(c)
		if pgid, err := unix.Getpgid(pid); err == nil && pid > 0 && parentOf(pid) == os.Getpid() && pgid == unix.Getpgrp() {
			return peerConn{c, pid}, nil
		}
		c.Close()
	}
}

// peerPID is the pid of the process at the other end of a unix socket
// (SO_PEERCRED), or 0.
func peerPID(c net.Conn) int {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return 0
	}
	var cred *unix.Ucred
	rc, err := uc.SyscallConn()
	if err == nil {
		rc.Control(func(fd uintptr) { cred, err = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) })
	}
	if err != nil {
		return 0
	}
	return int(cred.Pid)
}

// parentOf is pid's parent, from /proc, or 0.
func parentOf(pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// pid (comm) state ppid …: comm may hold spaces and parentheses.
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] == ')' {
			var state string
			var ppid int
			fmt.Sscan(string(b[i+1:]), &state, &ppid)
			return ppid
		}
	}
	return 0
}
