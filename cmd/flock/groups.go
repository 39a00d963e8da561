package main

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"

	"github.com/flockhq/flock"
	"github.com/flockhq/flock/internal/cli"
)

// Worker groups in a config file, as node-cluster-service's:
//
//	"workers": {
//	  "web":  {"program": ["node", "server.js"], "count": 2, "addr": ":8080"},
//	  "jobs": {"worker": "./consumer", "count": 1, "cwd": "jobs"}
//	}
//
// The group the signals act on (TTIN, TTOU) is the one "signals" names, or
// else the first with an address; it takes the place of the command line's
// program, its "addr", "listen" and "count" those of -addr, -listen and
// -workers (a flag given on the command line wins). The others run beside
// it (flock.Options.WorkerGroups).

// groupSpec is one group: node-cluster-service's worker, count, cwd and
// restart, and the flock command's flags that concern a program.
type groupSpec struct {
	Program    []string          `json:"program"`
	Worker     string            `json:"worker"` // node-cluster-service's: the program, alone
	Count      int               `json:"count"`
	Dir        string            `json:"dir"`
	Cwd        string            `json:"cwd"` // node-cluster-service's dir
	Env        map[string]string `json:"env"`
	Addr       string            `json:"addr"`
	Listen     []string          `json:"listen"`
	Ready      string            `json:"ready"`
	Watchdog   bool              `json:"watchdog"`
	StopSignal string            `json:"stop-signal"`
	Output     string            `json:"output"`
	Restart    *bool             `json:"restart"` // node-cluster-service's; flock always re-forks
}

type namedGroup struct {
	name string
	groupSpec
}

// readGroups reads the "workers" object, in the file's order.
func readGroups(raw json.RawMessage) ([]namedGroup, error) {
	d := json.NewDecoder(bytes.NewReader(raw))
	if t, err := d.Token(); err != nil || t != json.Delim('{') {
		return nil, errors.New("want a number of workers, or an object of worker groups")
	}
	var out []namedGroup
	for d.More() {
		t, err := d.Token()
		if err != nil {
			return nil, err
		}
		name := t.(string)
		var body json.RawMessage
		if err := d.Decode(&body); err != nil {
			return nil, fmt.Errorf("group %q: %w", name, err)
		}
		g := namedGroup{name: name}
		strict := json.NewDecoder(bytes.NewReader(body))
		strict.DisallowUnknownFields()
		if err := strict.Decode(&g.groupSpec); err != nil {
			return nil, fmt.Errorf("group %q: %w", name, err)
		}
		out = append(out, g)
	}
	if len(out) == 0 {
		return nil, errors.New("no worker group")
	}
	return out, nil
}

// program is the group as a flock.Program, its paths relative to dir (the
// config file's folder).
func (g namedGroup) program(dir string) (flock.Program, error) {
	p := flock.Program{Name: g.name, Watchdog: g.Watchdog}
	cmd := g.Program
	switch {
	case g.Restart != nil && !*g.Restart:
		return p, errors.New(`"restart": false: not supported (a worker that exits unasked is always re-forked, with back-off)`)
	case len(cmd) > 0 && g.Worker != "":
		return p, errors.New(`"program" and "worker": give one`)
	case g.Worker != "":
		cmd = []string{g.Worker}
	case len(cmd) == 0:
		return p, errors.New(`no "program"`)
	}
	p.Path, p.Args = cmd[0], cmd[1:]
	p.Dir = dir
	if d := cmp.Or(g.Dir, g.Cwd); d != "" {
		p.Dir = filepath.Join(dir, d)
		if filepath.IsAbs(d) {
			p.Dir = d
		}
	}
	for _, k := range slices.Sorted(maps.Keys(g.Env)) {
		p.Env = append(p.Env, k+"="+g.Env[k])
	}
	for _, o := range []struct {
		key, v string
		flag   flag.Value
	}{{"ready", g.Ready, readyFlag(&p.Ready)}, {"stop-signal", g.StopSignal, signal{&p.StopSignal}}, {"output", g.Output, output{&p.Output}}} {
		if o.v == "" {
			continue
		}
		if err := o.flag.Set(o.v); err != nil {
			return p, fmt.Errorf("%q: %w", o.key, err)
		}
	}
	return p, nil
}

func (g namedGroup) listeners() ([]flock.Listener, error) {
	var out []flock.Listener
	for _, l := range g.Listen {
		name, addr, ok := strings.Cut(l, "=")
		if !ok || name == "" || addr == "" {
			return nil, fmt.Errorf(`"listen": %q: want NAME=HOST:PORT`, l)
		}
		out = append(out, flock.Listener{Name: name, Addr: addr})
	}
	return out, nil
}

// applyGroups makes the groups read from the config file at path the
// service: the signals' group in place of the command line's program, the
// others as worker groups. set are the flags given on the command line.
func applyGroups(path string, groups []namedGroup, signals string, f *cli.Flags, set map[string]bool) (flock.Program, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return flock.Program{}, err
	}
	dir := filepath.Dir(abs)
	first := slices.IndexFunc(groups, func(g namedGroup) bool { return g.Addr != "" })
	if signals != "" {
		if first = slices.IndexFunc(groups, func(g namedGroup) bool { return g.name == signals }); first < 0 {
			return flock.Program{}, fmt.Errorf("%s: \"signals\": no worker group %q", path, signals)
		}
	}
	if first < 0 || groups[first].Addr == "" {
		return flock.Program{}, fmt.Errorf("%s: the worker group the signals act on needs an \"addr\" (the service's port, and the monitor's)", path)
	}
	var p flock.Program
	for i, g := range groups {
		prog, err := g.program(dir)
		if err == nil {
			var lns []flock.Listener
			if lns, err = g.listeners(); err == nil && i == first {
				p = prog
				if !set["addr"] {
					f.Options.Addr = g.Addr
				}
				if !set["listen"] {
					f.Options.Listeners = lns
				}
				if !set["workers"] {
					f.Options.Workers = max(g.Count, 1)
				}
			} else if err == nil {
				f.Options.WorkerGroups = append(f.Options.WorkerGroups, flock.WorkerGroup{
					Name: g.name, Program: prog, Workers: g.Count, Addr: g.Addr, Listeners: lns})
			}
		}
		if err != nil {
			return flock.Program{}, fmt.Errorf("%s: worker group %q: %w", path, g.name, err)
		}
	}
	return p, nil
}
