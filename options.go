package flock

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/user"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// config is Options with every default filled in and every value checked.
type config struct {
	Options
	host      string // Addr's
	port      int
	listeners []Listener // Addr's as MainListener, then Options.Listeners
	uid       *uint32    // workers' identity, when Options.User is set
	gid       *uint32
	groups    []*group // the first is Addr's and Workers' (group.go)
}

const (
	defaultPort              = 5000
	defaultShutdownTimeout   = 30 * time.Second
	defaultRestartDelay      = 100 * time.Millisecond
	maxRestartDelay          = 15 * time.Second
	defaultRestartsPerMinute = 10
	defaultIdleTimeout       = 30 * time.Second
	defaultReadHeaderTimeout = 10 * time.Second
	defaultProbeTimeout      = time.Second
	defaultBootTimeout       = 60 * time.Second
	defaultTimeout           = 30 * time.Second
	defaultConcurrencyRatio  = 0.33
	defaultMonitorPath       = "/ecv"
	monitorOff               = "off"
)

// resolve fills in defaults (explicit option, then environment, then
// built-in) and validates. getenv is a parameter so tests need not touch the
// process environment.
func (o Options) resolve(getenv func(string) string) (*config, error) {
	c := &config{Options: o}
	addr := o.Addr
	if addr == "" {
		if p := getenv("PORT"); p != "" {
			if _, err := parsePort(p); err != nil {
				return nil, fmt.Errorf("flock: PORT=%q: %v", p, err)
			}
			addr = ":" + p
		} else {
			addr = ":" + strconv.Itoa(defaultPort)
		}
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("flock: Addr %q: %v", addr, err)
	}
	if c.port, err = parsePort(port); err != nil {
		return nil, fmt.Errorf("flock: Addr %q: %v", addr, err)
	}
	c.host, c.Addr = host, addr
	if err := c.resolveListeners(); err != nil {
		return nil, err
	}

	switch {
	case o.Workers < 0:
		return nil, fmt.Errorf("flock: Workers %d: must be at least 1 (0 means the default)", o.Workers)
	case o.Workers == 0:
		c.Workers = runtime.NumCPU()
		if s := getenv("WEB_CONCURRENCY"); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < 1 {
				return nil, fmt.Errorf("flock: WEB_CONCURRENCY=%q: not a positive integer", s)
			}
			c.Workers = n
		}
	}
	if o.WorkerGOMAXPROCS < 0 {
		return nil, fmt.Errorf("flock: WorkerGOMAXPROCS %d: must not be negative", o.WorkerGOMAXPROCS)
	}
	if o.MaxRequests < 0 {
		return nil, fmt.Errorf("flock: MaxRequests %d: must not be negative (0 means never)", o.MaxRequests)
	}
	if o.MaxConnections < 0 {
		return nil, fmt.Errorf("flock: MaxConnections %d: must not be negative (0 means never)", o.MaxConnections)
	}
	if o.MaxMemory < 0 {
		return nil, fmt.Errorf("flock: MaxMemory %d: must not be negative (0 means never)", o.MaxMemory)
	}
	if r := o.RestartConcurrencyRatio; r < 0 || r > 1 || r != r {
		return nil, fmt.Errorf("flock: RestartConcurrencyRatio %v: must be from 0 to 1 (0 means 0.33)", r)
	}
	if c.RestartConcurrencyRatio == 0 {
		c.RestartConcurrencyRatio = defaultConcurrencyRatio
	}
	if o.RestartsPerMinute < 0 {
		return nil, fmt.Errorf("flock: RestartsPerMinute %d: must not be negative", o.RestartsPerMinute)
	}
	if c.RestartsPerMinute == 0 {
		c.RestartsPerMinute = defaultRestartsPerMinute
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"ShutdownTimeout", &c.ShutdownTimeout, defaultShutdownTimeout},
		{"DrainDelay", &c.DrainDelay, 0},
		{"RestartDelay", &c.RestartDelay, defaultRestartDelay},
		{"IdleTimeout", &c.IdleTimeout, defaultIdleTimeout},
		{"ReadHeaderTimeout", &c.ReadHeaderTimeout, defaultReadHeaderTimeout},
		{"MonitorProbeTimeout", &c.MonitorProbeTimeout, defaultProbeTimeout},
		{"BootTimeout", &c.BootTimeout, defaultBootTimeout},
		{"Timeout", &c.Timeout, defaultTimeout},
		{"MaxUptime", &c.MaxUptime, 0},
		{"UpgradeTimeout", &c.UpgradeTimeout, 0}, // default below: 2 × BootTimeout
	} {
		if *d.v < 0 {
			return nil, fmt.Errorf("flock: %s %v: must not be negative", d.name, *d.v)
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if c.UpgradeTimeout == 0 {
		c.UpgradeTimeout = 2 * c.BootTimeout
	}
	if err := c.resolveMonitor(); err != nil {
		return nil, err
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if (o.TLSCertFile == "") != (o.TLSKeyFile == "") {
		return nil, fmt.Errorf("flock: TLSCertFile %q and TLSKeyFile %q: set both or neither", o.TLSCertFile, o.TLSKeyFile)
	}
	if o.TLSCertFile != "" {
		if _, err := tls.LoadX509KeyPair(o.TLSCertFile, o.TLSKeyFile); err != nil {
			return nil, fmt.Errorf("flock: TLSCertFile %q, TLSKeyFile %q: %v", o.TLSCertFile, o.TLSKeyFile, err)
		}
	}
	if err := c.resolveIdentity(); err != nil {
		return nil, err
	}
	switch v := getenv(envSingle); v {
	case "", "0", "false":
	case "1", "true":
		c.Single = true
	default:
		return nil, fmt.Errorf("flock: %s=%q: must be 1 or 0", envSingle, v)
	}
	return c, nil
}

// resolveListeners checks Options.Listeners: named, each name once, each
// address with a port.
func (c *config) resolveListeners() error {
	c.listeners = []Listener{{Name: MainListener, Addr: c.Addr}}
	for i, l := range c.Options.Listeners {
		if err := c.addListener(l); err != nil {
			return fmt.Errorf("flock: Listeners[%d]: %w", i, err)
		}
	}
	return nil
}

// addListener checks l and adds it to the listeners.
func (c *config) addListener(l Listener) error {
	switch {
	case l.Name == "":
		return fmt.Errorf("no Name (Addr %q)", l.Addr)
	case strings.Contains(l.Name, ":"):
		return fmt.Errorf("no colons in a name (%q): LISTEN_FDNAMES separates names with them", l.Name)
	case slices.ContainsFunc(c.listeners, func(x Listener) bool { return x.Name == l.Name }):
		return fmt.Errorf("the name %q is taken (Addr's is %q; a worker group's address is named as the group)", l.Name, MainListener)
	}
	_, port, err := net.SplitHostPort(l.Addr)
	if err == nil {
		_, err = parsePort(port)
	}
	if err != nil {
		return fmt.Errorf("%q: Addr %q: %v", l.Name, l.Addr, err)
	}
	c.listeners = append(c.listeners, l)
	return nil
}

func (c *config) resolveMonitor() error {
	if c.MonitorPath == "" {
		c.MonitorPath = defaultMonitorPath
	}
	if !strings.HasPrefix(c.MonitorPath, "/") || c.MonitorPath == "/" {
		return fmt.Errorf("flock: MonitorPath %q: must start with / and not be / (the status page)", c.MonitorPath)
	}
	if p := c.MonitorProbe; p != "" && !strings.HasPrefix(p, "/") && !strings.HasPrefix(p, "http://") && !strings.HasPrefix(p, "https://") {
		return fmt.Errorf("flock: MonitorProbe %q: must be a path starting with / or an http(s):// URL", p)
	}
	switch c.MonitorAddr {
	case monitorOff:
		return nil
	case "":
		port := 0
		if c.port != 0 {
			port = c.port + 1
		}
		if port > 65535 {
			return fmt.Errorf("flock: MonitorAddr: the default (application port + 1) is %d; set MonitorAddr", port)
		}
		c.MonitorAddr = net.JoinHostPort(c.host, strconv.Itoa(port))
		return nil
	}
	_, port, err := net.SplitHostPort(c.MonitorAddr)
	if err == nil {
		_, err = parsePort(port)
	}
	if err != nil {
		return fmt.Errorf("flock: MonitorAddr %q: %v (or %q to turn the monitor off)", c.MonitorAddr, err, monitorOff)
	}
	return nil
}

func parsePort(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > 65535 {
		return 0, fmt.Errorf("port %q is not a number from 0 to 65535", s)
	}
	return n, nil
}

// resolveIdentity turns User and Group into numeric ids.
func (c *config) resolveIdentity() error {
	if c.User == "" && c.Group == "" {
		return nil
	}
	var gid string
	if c.User != "" {
		u, err := user.Lookup(c.User)
		if err != nil {
			if u, err = user.LookupId(c.User); err != nil {
				return fmt.Errorf("flock: User %q: no such user", c.User)
			}
		}
		uid, _ := strconv.ParseUint(u.Uid, 10, 32)
		v := uint32(uid)
		c.uid, gid = &v, u.Gid
	}
	if c.Group != "" {
		g, err := user.LookupGroup(c.Group)
		if err != nil {
			if g, err = user.LookupGroupId(c.Group); err != nil {
				return fmt.Errorf("flock: Group %q: no such group", c.Group)
			}
		}
		gid = g.Gid
	}
	if gid == "" { // Group alone: keep the master's user
		gid = strconv.Itoa(os.Getgid())
	}
	n, _ := strconv.ParseUint(gid, 10, 32)
	v := uint32(n)
	c.gid = &v
	if c.uid == nil {
		u := uint32(os.Getuid())
		c.uid = &u
	}
	if os.Geteuid() != 0 && (int(*c.uid) != os.Geteuid() || int(*c.gid) != os.Getegid()) {
		return fmt.Errorf("flock: User %q, Group %q: running workers as another user needs root", c.User, c.Group)
	}
	return nil
}

// credential is the workers' identity, nil to keep the master's.
func (c *config) credential() *syscall.Credential {
	if c.uid == nil {
		return nil
	}
	return &syscall.Credential{Uid: *c.uid, Gid: *c.gid}
}
