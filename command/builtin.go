package command

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/flockhq/flock"
)

// builtins are node-cluster-service's commands, over flock's Controller.
func builtins(s *surface) []Command {
	return []Command{
		{Name: "help", Usage: "[cmd]", Help: "list the commands, or describe one", Run: s.help},
		{Name: "health", Help: `"OK" when at least one worker is ready`, Run: health},
		{Name: "version", Help: "versions of flock, the application and Go", Run: s.version},
		{Name: "info", Help: "the master: pid, start, uptime, state, ECV, workers, the binary new workers start from", Run: info},
		{Name: "workers", Help: "every worker: pid, slot, state, start, uptime, requests served, RSS, binary", Run: workers},
		{Name: "start", Usage: "[count]", Help: "start more workers (default 1)", Run: start},
		{Name: "restart", Usage: `all|pid [{"timeout":ms}]`, Help: "replace workers, each new one ready before its old one drains; stops at the first that is not ready within timeout, leaving the rest serving", Run: restart},
		{Name: "upgrade", Usage: `all|pid [path] [{"timeout":ms}]`, Help: "restart workers from the executable at path (default: the one on disk now)", Run: upgrade},
		{Name: "shutdown", Usage: `all|pid [{"timeout":ms}]`, Help: "drain and stop the whole service, or one worker; what runs after timeout is killed", Level: Local, Run: shutdown},
		{Name: "exit", Usage: "now", Help: "stop at once: kill every worker", Level: Local, Run: exit},
	}
}

func (s *surface) help(_ context.Context, _ *flock.Controller, args []any) (any, error) {
	if len(args) > 1 {
		return nil, errUsage
	}
	if len(args) == 1 {
		c := s.cmds[fmt.Sprint(args[0])]
		if c == nil {
			return nil, fmt.Errorf("no command %q; try help", fmt.Sprint(args[0]))
		}
		return fmt.Sprintf("%s %s\n%s (level: %s)", c.Name, c.Usage, c.Help, c.Level), nil
	}
	all := map[string]string{}
	for _, name := range s.names() {
		c := s.cmds[name]
		all[name] = strings.TrimSpace(c.Name+" "+c.Usage) + ": " + c.Help
	}
	return all, nil
}

func health(_ context.Context, c *flock.Controller, args []any) (any, error) {
	for _, w := range c.Status().Workers {
		if w.State == flock.WorkerReady {
			return "OK", nil
		}
	}
	return nil, errors.New("no worker is ready")
}

func (s *surface) version(_ context.Context, _ *flock.Controller, args []any) (any, error) {
	return map[string]string{"flock": flock.Version, "app": s.o.Version, "go": runtime.Version()}, nil
}

func info(_ context.Context, c *flock.Controller, args []any) (any, error) {
	st := c.Status()
	return map[string]any{
		"pid": st.PID, "started": st.Started, "uptime": time.Since(st.Started).Round(time.Second).String(),
		"state": st.State, "ecv": st.ECV, "addr": st.Addr, "workers": len(st.Workers),
		"executable": st.Binary.Path, "binary": st.Binary, "go": runtime.Version(),
	}, nil
}

// workerInfo is a worker as `workers` shows it.
type workerInfo struct {
	flock.WorkerStatus
	Uptime string `json:"uptime"`
}

func workers(_ context.Context, c *flock.Controller, args []any) (any, error) {
	out := []workerInfo{}
	for _, w := range c.Status().Workers {
		out = append(out, workerInfo{w, time.Since(w.Started).Round(time.Second).String()})
	}
	return out, nil
}

func start(_ context.Context, c *flock.Controller, args []any) (any, error) {
	n := 1
	if len(args) > 1 {
		return nil, errUsage
	}
	if len(args) == 1 {
		f, ok := args[0].(float64)
		if !ok || f < 1 || f != float64(int(f)) || f > 1024 {
			return nil, fmt.Errorf("%w (count: a whole number from 1 to 1024)", errUsage)
		}
		n = int(f)
	}
	if err := c.AddWorkers(n); err != nil {
		return nil, err
	}
	return count(n) + " starting", nil
}

func restart(_ context.Context, c *flock.Controller, args []any) (any, error) {
	pids, timeout, rest, err := target(args)
	if err != nil {
		return nil, err
	}
	if len(rest) > 0 {
		return nil, errUsage
	}
	return replaced(c.Restart(flock.RestartOptions{PIDs: pids, Timeout: timeout}))("restarted")
}

func upgrade(_ context.Context, c *flock.Controller, args []any) (any, error) {
	pids, timeout, rest, err := target(args)
	if err != nil {
		return nil, err
	}
	path := ""
	switch {
	case len(rest) > 1:
		return nil, errUsage
	case len(rest) == 1:
		p, ok := rest[0].(string)
		if !ok {
			return nil, errUsage
		}
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("upgrade: %v", err)
		}
		path = p
	}
	return replaced(c.Upgrade(flock.RestartOptions{PIDs: pids, Executable: path, Timeout: timeout}))("upgraded")
}

// replaced words the outcome of a restart or upgrade.
func replaced(n int, err error) func(verb string) (any, error) {
	return func(verb string) (any, error) {
		switch {
		case err != nil && !errors.Is(err, flock.ErrNotReady):
			return nil, err // nothing was done
		case errors.Is(err, flock.ErrBootTimeout):
			return nil, fmt.Errorf("timed out: %s %s before: %v", count(n), verb, err)
		case err != nil:
			return nil, fmt.Errorf("%s %s, then: %v", count(n), verb, err)
		}
		return fmt.Sprintf("%s %s successfully", count(n), verb), nil
	}
}

func shutdown(_ context.Context, c *flock.Controller, args []any) (any, error) {
	pids, timeout, rest, err := target(args)
	if err != nil {
		return nil, err
	}
	if len(rest) > 0 {
		return nil, errUsage
	}
	if pids == nil {
		if err := c.Shutdown(timeout); err != nil {
			return nil, err
		}
		return "shutting down", nil
	}
	if err := c.StopWorkers(pids, timeout); err != nil {
		return nil, err
	}
	return count(len(pids)) + " shut down", nil
}

func exit(_ context.Context, c *flock.Controller, args []any) (any, error) {
	if len(args) != 1 || args[0] != "now" {
		return nil, errUsage
	}
	if err := c.Exit(); err != nil {
		return nil, err
	}
	return "exiting", nil
}

// errUsage: the arguments are wrong; the answer shows the command's usage
// (with what follows "usage" in the error, if anything).
var errUsage = errors.New("usage")

// target reads "all|pid" and an optional {"timeout":ms} (last), and returns
// the pids (nil for all), the timeout and the arguments in between.
func target(args []any) (pids []int, timeout time.Duration, rest []any, err error) {
	if len(args) == 0 {
		return nil, 0, nil, errUsage
	}
	switch v := args[0].(type) {
	case string:
		if v != "all" {
			return nil, 0, nil, errUsage
		}
	case float64:
		if v < 1 || v != float64(int(v)) {
			return nil, 0, nil, errUsage
		}
		pids = []int{int(v)}
	default:
		return nil, 0, nil, errUsage
	}
	rest = args[1:]
	if n := len(rest); n > 0 {
		if opts, ok := rest[n-1].(map[string]any); ok {
			rest = rest[:n-1]
			for k, v := range opts {
				ms, ok := v.(float64)
				if k != "timeout" || !ok || ms < 0 {
					return nil, 0, nil, fmt.Errorf("%w (the options are {\"timeout\": milliseconds})", errUsage)
				}
				timeout = time.Duration(ms * float64(time.Millisecond))
			}
		}
	}
	return pids, timeout, rest, nil
}

// count is "1 worker", "3 workers".
func count(n int) string {
	if n == 1 {
		return "1 worker"
	}
	return fmt.Sprintf("%d workers", n)
}
