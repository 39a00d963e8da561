// Command flock runs an existing server, in any language, as a flock of
// worker processes: the master binds the sockets and hands them to each
// worker the way systemd's socket activation does (fd 3 onwards, with
// LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES), and hears sd_notify's
// READY=1 on the worker's own NOTIFY_SOCKET. Everything else is flock's:
// the signals, the zero-loss HUP roll, recycling, USR2, the ECV monitor
// and the command surface.
//
//	flock -addr :8080 -workers 4 -- node server.js
//	flock -addr :8000 -ready notify -- gunicorn app:app
//	flock -config flock.json
//
// A config file is a JSON object whose keys are the flags' names, plus
// "program" (the command line, a list) and "env" (an object of variables
// for the program); flags given on the command line win over it, an
// unknown key is an error naming it, and the program's working directory
// is the file's folder unless "dir" says otherwise (as node-cluster-service
// resolves a worker's path). Its "workers" may instead be an object of
// worker groups, several programs under one master, as
// node-cluster-service's (groups.go).
//
// Exit status: 0 after a graceful shutdown, 130 after SIGINT, 1 when it
// could not start (busy port, program not found) or every worker kept
// crashing, 2 for a bad command line or config file.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/flockhq/flock"
	"github.com/flockhq/flock/internal/cli"
	"github.com/flockhq/flock/proxy"
	"golang.org/x/sys/unix"
)

func main() {
	p, f, err := parse(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(cli.ExitOK)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "flock: %v\n", err)
		os.Exit(cli.ExitUsage)
	}
	version := "(devel)"
	if bi, ok := debug.ReadBuildInfo(); ok {
		version = bi.Main.Version
	}
	if proxyFile != "" {
		px, err := proxy.Load(proxyFile)
		if err != nil {
			fmt.Fprintf(os.Stderr, "flock: -proxy: %v\n", err)
			os.Exit(cli.ExitUsage)
		}
		p := proxy.New(px)
		f.Command.Commands = append(f.Command.Commands, p.Command())
		f.Setup(version)
		cli.Exit(p.Run(f.Options))
	}
	f.Setup(version)
	cli.Exit(flock.Supervise(f.Options, p))
}

// proxyFile is -proxy: node-cluster-service's proxy mode (package proxy).
var proxyFile string

func parse(args []string) (flock.Program, *cli.Flags, error) {
	proxyFile = ""
	fs := flag.NewFlagSet("flock", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: flock [flags] -- PROGRAM [ARGS…]\n       flock -config FILE [flags]")
		fs.PrintDefaults()
	}
	var f cli.Flags
	var p flock.Program
	f.Register(fs, false)
	fs.StringVar(&proxyFile, "proxy", "", "run the proxy mode with this JSON config file (node-cluster-service's): versions side by side, routed by a header; the bindings replace -addr, -listen and -workers")
	config := fs.String("config", "", "read flags from this JSON file (keys: the flags' names, \"program\", \"env\", and \"workers\" as an object of worker groups)")
	fs.StringVar(&p.Dir, "dir", "", "the program's working directory (default: the master's, or the config file's folder)")
	fs.StringVar(&p.Name, "name", "", "label of the program's output lines (default: the program's file name)")
	fs.Var(readyFlag(&p.Ready), "ready",
		"when a new worker counts as ready: notify (at READY=1), now, or a duration (then, or at READY=1 if sooner; default 1s)")
	fs.BoolVar(&p.Watchdog, "watchdog", false, "kill and replace a worker silent (no WATCHDOG=1) for -timeout; it gets WATCHDOG_USEC")
	fs.Var(signal{&p.StopSignal}, "stop-signal", "signal asking a worker to drain and exit (default TERM)")
	fs.Var(output{&p.Output}, "output", "the program's output: inherit (default), prefix (each line with its name and pid) or silent")
	fs.Var(env{&p.Env}, "env", "NAME=VALUE added to the program's environment (repeatable)")
	if err := fs.Parse(args); err != nil {
		return p, nil, err
	}
	cmd := fs.Args()
	if *config != "" {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		rest, err := cli.LoadConfig(fs, *config, "program", "env", "workers", "signals")
		if err != nil {
			return p, nil, err
		}
		if raw, ok := rest["workers"]; (!ok || !bytes.HasPrefix(bytes.TrimSpace(raw), []byte("{"))) && rest["signals"] != nil {
			return p, nil, fmt.Errorf("%s: \"signals\" names a worker group, and there are none (\"workers\" is not an object)", *config)
		}
		if raw, ok := rest["workers"]; ok && !bytes.HasPrefix(bytes.TrimSpace(raw), []byte("{")) {
			if !set["workers"] { // a number, as the flag
				if err := fs.Set("workers", string(bytes.TrimSpace(raw))); err != nil {
					return p, nil, fmt.Errorf("%s: key \"workers\": %w", *config, err)
				}
			}
		} else if ok {
			var given []string
			fs.Visit(func(f *flag.Flag) {
				if slices.Contains(programFlags, f.Name) {
					given = append(given, f.Name)
				}
			})
			if len(given) > 0 {
				return p, nil, fmt.Errorf("%s: with worker groups, %q belong in each group", *config, given)
			}
			if rest["env"] != nil {
				return p, nil, fmt.Errorf("%s: with worker groups, \"env\" belongs in each group", *config)
			}
			if len(cmd) > 0 || rest["program"] != nil {
				return p, nil, fmt.Errorf("%s: worker groups (\"workers\") and a program (the command line's, or \"program\"): give one", *config)
			}
			groups, err := readGroups(raw)
			if err != nil {
				return p, nil, fmt.Errorf("%s: key \"workers\": %w", *config, err)
			}
			var signals string
			if raw, ok := rest["signals"]; ok && json.Unmarshal(raw, &signals) != nil {
				return p, nil, fmt.Errorf("%s: key \"signals\": want the name of a worker group", *config)
			}
			p, err = applyGroups(*config, groups, signals, &f, set)
			return p, &f, err
		}
		if err := fromConfig(*config, rest, &p, &cmd, set); err != nil {
			return p, nil, err
		}
	}
	if proxyFile != "" {
		var given []string
		fs.Visit(func(f *flag.Flag) {
			if slices.Contains([]string{"addr", "listen", "workers"}, f.Name) || slices.Contains(programFlags, f.Name) {
				given = append(given, f.Name)
			}
		})
		if len(given) > 0 || len(cmd) > 0 {
			return p, nil, fmt.Errorf("-proxy: the proxy config gives the addresses, workers and programs; not %q %q", given, cmd)
		}
		return p, &f, nil
	}
	if len(cmd) == 0 {
		fs.Usage()
		return p, nil, errors.New("no program to run")
	}
	p.Path, p.Args = cmd[0], cmd[1:]
	return p, &f, nil
}

// programFlags are the flags about the program, which worker groups set
// each for itself.
var programFlags = []string{"dir", "name", "ready", "watchdog", "stop-signal", "output", "env"}

// fromConfig takes the config file's keys that are not flags. set are the
// flags given on the command line.
func fromConfig(path string, rest map[string]json.RawMessage, p *flock.Program, cmd *[]string, set map[string]bool) error {
	if raw, ok := rest["program"]; ok && len(*cmd) == 0 {
		if err := json.Unmarshal(raw, cmd); err != nil {
			return fmt.Errorf("%s: key \"program\": want a list of strings: %w", path, err)
		}
	}
	if raw, ok := rest["env"]; ok {
		var vars map[string]string
		if err := json.Unmarshal(raw, &vars); err != nil {
			return fmt.Errorf("%s: key \"env\": want an object of strings: %w", path, err)
		}
		for _, k := range slices.Sorted(maps.Keys(vars)) {
			if !slices.ContainsFunc(p.Env, func(kv string) bool { return strings.HasPrefix(kv, k+"=") }) { // -env wins
				p.Env = append(p.Env, k+"="+vars[k])
			}
		}
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	switch { // relative to the file's folder, unless the command line said
	case p.Dir == "":
		p.Dir = filepath.Dir(abs)
	case !set["dir"] && !filepath.IsAbs(p.Dir):
		p.Dir = filepath.Join(filepath.Dir(abs), p.Dir)
	}
	return nil
}

// readyFlag is -ready: a duration, notify or now.
func readyFlag(d *time.Duration) cli.Duration {
	return cli.Duration{D: d, Names: map[string]time.Duration{"notify": flock.ReadyNotify, "now": flock.ReadyAtOnce}}
}

type signal struct{ s *syscall.Signal }

func (v signal) String() string {
	if v.s == nil || *v.s == 0 {
		return ""
	}
	return unix.SignalName(*v.s)
}

func (v signal) Set(s string) error {
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if n := unix.SignalNum(name); n != 0 {
		*v.s = n
		return nil
	}
	return fmt.Errorf("%q: not a signal name (TERM, QUIT, INT, …)", s)
}

type output struct{ o *flock.Output }

func (v output) String() string {
	if v.o == nil || *v.o == flock.OutputInherit {
		return "inherit"
	}
	return string(*v.o)
}

func (v output) Set(s string) error {
	switch s {
	case "inherit":
		*v.o = flock.OutputInherit
	case string(flock.OutputPrefix), string(flock.OutputSilent):
		*v.o = flock.Output(s)
	default:
		return fmt.Errorf("%q: want inherit, prefix or silent", s)
	}
	return nil
}

type env struct{ e *[]string }

func (v env) String() string {
	if v.e == nil {
		return ""
	}
	return strings.Join(*v.e, " ")
}

func (v env) Set(s string) error {
	if name, _, ok := strings.Cut(s, "="); !ok || name == "" {
		return fmt.Errorf("%q: want NAME=VALUE", s)
	}
	*v.e = append(*v.e, s)
	return nil
}
