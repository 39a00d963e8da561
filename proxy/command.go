package proxy

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/flockhq/flock"
	"github.com/flockhq/flock/command"
)

// Command is node-cluster-service's `proxy` command, for the command
// surface (command.Options.Commands). Local, as cluster-service's.
func (p *Proxy) Command() command.Command {
	return command.Command{
		Name: "proxy", Usage: "start configPath|stop|version v count|promote v [count]|info", Level: command.Local,
		Help: "Perform a proxy operation: run versions side by side, routed by " + p.cfg.VersionHeader + ".",
		Args: []command.Arg{
			{Name: "* start configPath", Help: "The proxy runs already (flock -proxy starts it): answers so, or an error for another file."},
			{Name: "* stop", Help: "Shut the proxy service down, gracefully (as shutdown all)."},
			{Name: "* version v count", Help: "Run version v with count workers: started if it does not run, workers added or stopped if it does; 0 stops it. Answers once they are ready."},
			{Name: "* promote v [count]", Help: "Make v the live version: started with count workers (default: defaultWorkerCount), and once they are ready, the default for new requests and in the config file. The old default keeps nonDefaultWorkerCount workers until idle."},
			{Name: "* info", Help: "The proxy's config, proxy workers and versions."},
		},
		Run: p.run,
	}
}

func (p *Proxy) run(ctx context.Context, c *flock.Controller, args []any) (any, error) {
	verb, _ := first(args)
	args = args[min(1, len(args)):]
	switch verb {
	case "start":
		path, ok := first(args)
		if len(args) != 1 || !ok {
			return nil, fmt.Errorf("%w: proxy start configPath", command.ErrUsage)
		}
		if abs, err := filepath.Abs(path); err != nil || abs != p.cfg.File {
			return nil, fmt.Errorf("proxy already running, with %s (one proxy per flock)", p.cfg.File)
		}
		return nil, errors.New("proxy already running")
	case "stop":
		if len(args) != 0 {
			return nil, fmt.Errorf("%w: proxy stop", command.ErrUsage)
		}
		if err := c.Shutdown(0); err != nil {
			return nil, err
		}
		return "Proxy stopping: shutting down gracefully", nil
	case "version", "promote":
		name, ok := first(args)
		n, nok := -1, true
		if len(args) == 2 {
			n, nok = whole(args[1])
		}
		if !ok || !nok || len(args) < 1 || len(args) > 2 || verb == "version" && len(args) != 2 || verb == "promote" && n == 0 {
			return nil, fmt.Errorf("%w: proxy version v count (0 to stop it), proxy promote v [count] (at least 1)", command.ErrUsage)
		}
		if verb == "promote" {
			return p.Promote(ctx, name, n)
		}
		return p.Version(ctx, name, n)
	case "info":
		return p.Info(), nil
	}
	//lint:ignore ST1005 node-cluster-service's message, word for word
	return nil, fmt.Errorf("Proxy command %v not recognized. Try 'help proxy' for more info.", verb)
}

func first(args []any) (string, bool) {
	if len(args) == 0 {
		return "", false
	}
	s, ok := args[0].(string)
	return s, ok
}

// whole is a count argument: a number, or a number in a string.
func whole(a any) (int, bool) {
	switch v := a.(type) {
	case float64:
		return int(v), v >= 0 && v <= 1024 && v == float64(int(v))
	case string:
		n, err := strconv.Atoi(v)
		return n, err == nil && n >= 0 && n <= 1024
	}
	return 0, false
}

// VersionInfo is one version, as info and the commands answer.
type VersionInfo struct {
	Version string `json:"version"`
	State   string `json:"state"`
	Port    int    `json:"port"`
	Workers int    `json:"workers"` // asked for
	Ready   int    `json:"ready"`
	Default bool   `json:"default,omitempty"`
	Error   string `json:"error,omitempty"` // why it failed
}

// Version has version name run n workers (0 stops it), and answers once
// they are ready.
func (p *Proxy) Version(ctx context.Context, name string, n int) (VersionInfo, error) {
	if n == 0 {
		if err := p.stop(name); err != nil {
			return VersionInfo{}, err
		}
		return p.versionInfo(name), nil
	}
	if err := p.ensure(name, n); err != nil {
		return VersionInfo{}, err
	}
	err := p.waitReady(ctx, name, n)
	return p.versionInfo(name), err
}

// Promote runs version name with n workers (-1: DefaultWorkerCount) and,
// once they are all ready, makes it the default: in the config file
// first, then for the proxy workers; it returns once they all route new
// requests to it. Until then, and if it fails, the old default serves. The old default is brought down to
// NonDefaultWorkerCount workers, and stops when idle.
func (p *Proxy) Promote(ctx context.Context, name string, n int) (VersionInfo, error) {
	if n < 0 {
		n = p.cfg.DefaultWorkerCount
	}
	err := p.ensure(name, n)
	if err == nil {
		err = p.waitReady(ctx, name, n)
	}
	if err != nil {
		p.mu.Lock()
		old := p.def
		p.mu.Unlock()
		return p.versionInfo(name), fmt.Errorf("%w; not promoted: %q still serves", err, old)
	}
	p.ops.Lock()
	p.mu.Lock()
	old := p.def
	if v := p.vs[name]; v == nil || v.state != vRunning { // idle, or failed, since it was ready
		p.mu.Unlock()
		p.ops.Unlock()
		return p.versionInfo(name), fmt.Errorf("version %s stopped before it could be promoted; not promoted: %q still serves", name, old)
	}
	p.vs[name].used = time.Now()
	p.mu.Unlock()
	if err := p.cfg.saveDefault(name); err != nil { // under ops: no stop meanwhile
		p.ops.Unlock()
		return p.versionInfo(name), fmt.Errorf("not promoted: the config file: %w", err)
	}
	p.mu.Lock()
	now := time.Now()
	p.def = name
	if v := p.vs[old]; v != nil {
		v.used = now // idle from now on
	}
	seq := p.changedLocked()
	p.mu.Unlock()
	p.ops.Unlock()
	p.waitAcks(seq, 5*time.Second) // answered once new requests go to name
	p.log.Info("flock proxy: promoted", "version", name, "workers", n, "was", old)
	if old != "" && old != name {
		go func() {
			if err := p.demote(old); err != nil && !stopping(err) {
				p.log.Warn("flock proxy: cannot bring the old default down to nonDefaultWorkerCount", "version", old, "err", err)
			}
		}()
	}
	return p.versionInfo(name), nil
}

// demote brings a former default to NonDefaultWorkerCount workers, if it
// runs.
func (p *Proxy) demote(name string) error {
	p.mu.Lock()
	v := p.vs[name]
	run := v != nil && v.state == vRunning && v.want > p.cfg.NonDefaultWorkerCount
	p.mu.Unlock()
	if !run {
		return nil
	}
	return p.ensure(name, p.cfg.NonDefaultWorkerCount)
}

func (p *Proxy) versionInfo(name string) VersionInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.versionInfoLocked(name)
}

func (p *Proxy) versionInfoLocked(name string) VersionInfo {
	vi := VersionInfo{Version: name, State: vStopped.String(), Default: name == p.def}
	if v := p.vs[name]; v != nil {
		vi.State, vi.Port, vi.Workers, vi.Ready = v.state.String(), v.port, v.want, len(v.ready)
		if v.state == vFailed {
			vi.Error = v.err.Error()
		}
	}
	return vi
}

// Info is what `proxy info` answers: cluster-service's keys, and flock's
// versions.
type Info struct {
	VersionPath    string           `json:"versionPath"`
	WorkerFilename string           `json:"workerFilename"`
	PortRange      map[string]int   `json:"portRange"`
	Options        *Config          `json:"options"`
	ProxyWorkers   []map[string]any `json:"proxyWorkers"`
	VersionWorkers []map[string]any `json:"versionWorkers"`
	Default        string           `json:"defaultVersion"`
	Versions       []VersionInfo    `json:"versions"`
}

// Info describes the proxy: its config, its workers, its versions.
func (p *Proxy) Info() Info {
	st := p.ctl.Status()
	shown := *p.cfg
	shown.Env = map[string]string{}
	for k := range p.cfg.Env {
		shown.Env[k] = "(hidden)" // may hold secrets
	}
	in := Info{VersionPath: p.cfg.VersionPath, WorkerFilename: p.cfg.WorkerFilename, Options: &shown,
		PortRange: map[string]int{"min": p.cfg.lo, "max": p.cfg.hi}, ProxyWorkers: []map[string]any{}, VersionWorkers: []map[string]any{}}
	p.mu.Lock()
	in.Default = p.def
	for _, name := range slices.Sorted(maps.Keys(p.vs)) {
		in.Versions = append(in.Versions, p.versionInfoLocked(name))
	}
	p.mu.Unlock()
	for _, w := range st.Workers {
		if w.Group == st.Groups[0] {
			for _, b := range p.cfg.Bindings {
				in.ProxyWorkers = append(in.ProxyWorkers, map[string]any{"pid": w.PID, "port": b.Port, "ssl": b.TLSOptions != nil, "state": w.State})
			}
		} else {
			in.VersionWorkers = append(in.VersionWorkers, map[string]any{"pid": w.PID, "worker": w.Binary.Path, "version": w.Group, "state": w.State})
		}
	}
	return in
}
