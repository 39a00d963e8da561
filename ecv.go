package flock

import (
	"crypto/subtle"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The monitor is the master's ECV port: load balancers ask it
// whether to send this node traffic, operators take the node out of
// rotation through it. It reads the master's published snapshot and sends
// changes to the master's loop, so the disabled state lives in the master
// and no worker can undo it.
type monitor struct {
	m        *master
	ln       net.Listener
	f        *os.File // a copy of ln's socket, for a USR2 upgrade to inherit
	srv      *http.Server
	serving  bool
	probe    *prober
	ip, host string
	port     string

	mu       sync.RWMutex
	handlers map[string]http.Handler // the extensions' paths (Controller.Handle)
}

// ECV states and their HTTP status.
const (
	ecvAvailable = "AVAILABLE"
	ecvDisabled  = "DISABLED"
	ecvWarning   = "WARNING"
)

// startMonitor binds the monitor, or takes the listener an old master
// handed down; in that case it serves only from the handover on, so that
// load balancers keep hearing the old master until the new one is ready.
func startMonitor(m *master, inh *inherited) (*monitor, error) {
	c := m.c
	var ln net.Listener
	var err error
	switch {
	case inh != nil && inh.monitor != nil:
		ln, err = net.FileListener(inh.monitor)
		inh.monitor.Close()
		if err != nil {
			return nil, fmt.Errorf("flock: monitor: inherited listener: %v", err)
		}
	case inh != nil || c.MonitorAddr == monitorOff:
		return &monitor{}, nil
	default:
		if ln, err = net.Listen("tcp", c.MonitorAddr); err != nil {
			return nil, fmt.Errorf("flock: monitor: listen %s: %w", c.MonitorAddr, unwrapOpError(err))
		}
	}
	f, err := dupFile(ln.(*net.TCPListener), "flock-monitor")
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("flock: monitor: %v", err)
	}
	mon := &monitor{m: m, ln: ln, f: f, ip: nodeIP(), port: strconv.Itoa(m.addrs[0].port)}
	mon.host, _ = os.Hostname()
	if c.MonitorProbe != "" {
		mon.probe = newProber(c, m.addrs[0].port)
	}
	mon.srv = &http.Server{Handler: mon, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 30 * time.Second,
		ErrorLog: newLimitedLog(m.log, slog.LevelWarn, time.Second)}
	if inh == nil {
		mon.serve()
	}
	return mon, nil
}

func (mon *monitor) serve() {
	if mon.srv != nil && !mon.serving {
		mon.serving = true
		go mon.srv.Serve(mon.ln)
	}
}

// file is the listener's socket for a new master to inherit, or nil.
func (mon *monitor) file() *os.File { return mon.f }

func (mon *monitor) addr() string {
	if mon.ln == nil {
		return ""
	}
	return mon.ln.Addr().String()
}

func (mon *monitor) close() {
	if mon.srv != nil {
		mon.srv.Close()
		mon.ln.Close() // Close does not when Serve never ran
		mon.f.Close()
	}
}

func (mon *monitor) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := mon.m.c.MonitorPath
	switch r.URL.Path {
	case path:
		if !allowMethods(w, r, http.MethodGet, http.MethodHead) {
			return
		}
		mon.ecv(w, r)
	case path + "/disable", path + "/enable":
		if mon.m.c.MonitorReadOnly {
			http.Error(w, "monitor control is turned off (MonitorReadOnly)", http.StatusNotFound)
			return
		}
		if !allowMethods(w, r, http.MethodPost) {
			return
		}
		if !mon.authorized(r) {
			http.Error(w, "Forbidden: only loopback callers, or callers with the access key, may do this", http.StatusForbidden)
			return
		}
		disable := strings.HasSuffix(r.URL.Path, "/disable")
		if err := mon.m.call(func() { mon.m.setDisabled(disable) }); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	case "/":
		if !allowMethods(w, r, http.MethodGet, http.MethodHead) {
			return
		}
		if wantsHTML(r) {
			servePage(w, path)
			return
		}
		mon.status(w)
	default:
		mon.mu.RLock()
		h := mon.handlers[r.URL.Path]
		mon.mu.RUnlock()
		if h == nil {
			http.NotFound(w, r)
			return
		}
		h.ServeHTTP(w, r)
	}
}

func allowMethods(w http.ResponseWriter, r *http.Request, methods ...string) bool {
	for _, m := range methods {
		if r.Method == m {
			return true
		}
	}
	w.Header().Set("Allow", strings.Join(methods, ", "))
	http.Error(w, "Method Not Allowed", http.StatusMethodNotAllowed)
	return false
}

// evaluate decides what the ECV says: DISABLED wins over WARNING.
func (mon *monitor) evaluate(s *snapshot) (int, string) {
	switch {
	case s.disabled || s.state != running:
		return http.StatusBadRequest, ecvDisabled
	case s.ready == 0:
		return http.StatusInternalServerError, ecvWarning
	case mon.probe != nil && !mon.probe.healthy():
		return http.StatusInternalServerError, ecvWarning
	}
	return http.StatusOK, ecvAvailable
}

func (mon *monitor) ecv(w http.ResponseWriter, r *http.Request) {
	code, state := mon.evaluate(mon.m.snap.Load())
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Cache-Control", "no-cache")
	h.Set("Since", mon.m.started.UTC().Format(http.TimeFormat))
	w.WriteHeader(code)
	if r.Method == http.MethodHead {
		return
	}
	fmt.Fprintf(w, "status=%s&ServeTraffic=%t&ip=%s&hostname=%s&port=%s&time=%s",
		state, code == http.StatusOK, mon.ip, mon.host, mon.port, time.Now().UTC().Format(time.RFC3339))
}

// state is the ECV state for snapshot s, also when the monitor is off.
func (mon *monitor) state(s *snapshot) string {
	_, st := mon.evaluate(s)
	return st
}

func (mon *monitor) status(w http.ResponseWriter) {
	st := mon.m.status(mon)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-cache")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(st)
}

// authorized: loopback callers (IPv4, IPv6, v4-mapped) always; others only
// with the access key, compared in constant time.
func (mon *monitor) authorized(r *http.Request) bool {
	return fromLoopback(r) || keyMatches(r, mon.m.c.AccessKey)
}

func fromLoopback(r *http.Request) bool {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	ip := net.ParseIP(host)
	return err == nil && ip != nil && ip.IsLoopback()
}

// keyMatches reports whether r carries key as ?accessKey= or as a bearer
// token. An empty key matches nothing.
func keyMatches(r *http.Request, key string) bool {
	if key == "" {
		return false
	}
	got := r.URL.Query().Get("accessKey")
	if bearer, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		got = bearer
	}
	return subtle.ConstantTimeCompare([]byte(got), []byte(key)) == 1
}

// nodeIP is the address load balancers know this node by: the first
// non-loopback IPv4 address, else 127.0.0.1.
func nodeIP() string {
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && n.IP.To4() != nil {
			return n.IP.String()
		}
	}
	return "127.0.0.1"
}

// prober GETs MonitorProbe on the application port, at most once per
// probeCacheTTL however often the ECV is asked; concurrent askers share
// one probe. Every probe is bounded by MonitorProbeTimeout, so the ECV
// never hangs on it.
type prober struct {
	url    string
	client *http.Client

	mu      sync.Mutex
	at      time.Time
	ok      bool
	running chan struct{} // closed when the probe under way ends
}

const probeCacheTTL = time.Second

func newProber(c *config, port int) *prober {
	host := c.host
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	scheme, tr := "http", &http.Transport{DisableKeepAlives: true}
	if c.TLSCertFile != "" || c.TLSConfig != nil {
		scheme, tr.TLSClientConfig = "https", &tls.Config{InsecureSkipVerify: true} // our own workers, on our own port
	}
	url := scheme + "://" + net.JoinHostPort(host, strconv.Itoa(port)) + c.MonitorProbe
	if !strings.HasPrefix(c.MonitorProbe, "/") {
		url = c.MonitorProbe
	}
	return &prober{
		url:    url,
		client: &http.Client{Timeout: c.MonitorProbeTimeout, Transport: tr},
	}
}

func (p *prober) healthy() bool {
	p.mu.Lock()
	if time.Since(p.at) < probeCacheTTL {
		defer p.mu.Unlock()
		return p.ok
	}
	if wait := p.running; wait != nil {
		p.mu.Unlock()
		<-wait
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.ok
	}
	done := make(chan struct{})
	p.running = done
	p.mu.Unlock()

	ok := p.get()
	p.mu.Lock()
	p.ok, p.at, p.running = ok, time.Now(), nil
	p.mu.Unlock()
	close(done)
	return ok
}

func (p *prober) get() bool {
	resp, err := p.client.Get(p.url)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode < 300
}

// unwrapOpError turns "listen tcp X: bind: address already in use" into
// "address already in use": the caller names the address itself.
func unwrapOpError(err error) error {
	var se *os.SyscallError
	if errors.As(err, &se) {
		return se.Err
	}
	return err
}
