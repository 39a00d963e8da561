package command

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/flockhq/flock"
)

// builtins are node-cluster-service's commands, over flock's Controller.
func builtins(s *surface) []Command {
	timeout := Arg{"* timeout", "Milliseconds: how long a new worker may take to become ready (restart, upgrade) or a worker to drain (shutdown) before it is killed. Default: BootTimeout, ShutdownTimeout."}
	target := func(verb string) Arg {
		return Arg{"all|pid", "Required. 'all' for every worker, otherwise the pid of the worker to " + verb + "."}
	}
	options := Arg{"options", "An object of options."}
	return []Command{
		{Name: "help", Usage: "[command_name]", Help: "List the commands, or describe one.",
			Args: []Arg{{"command_name", "Optional if you want extended help"}}, Run: s.help},
		{Name: "health", Help: `Returns "OK" when at least one worker is ready.`, Run: health},
		{Name: "version", Usage: "[details]", Help: "The application's version (flock's when it sets none).",
			Args: []Arg{{"details", "Also flock's and Go's versions, and what the program was built from."}}, Run: s.version},
		{Name: "info", Help: "Returns summary of process & workers.", Run: info},
		{Name: "workers", Usage: "[simple|details]", Help: "Returns list of active worker processes.",
			Args: []Arg{{"simple|details", "Defaults to 'simple'."}, {"* simple", "Simple overview of running workers."},
				{"* details", "Full details of every worker, draining ones included."}}, Run: workers},
		{Name: "start", Usage: `[group] [count|{"count":n}]`, Help: "Start more workers, one more slot each: of the first worker group, or of the one named.",
			Args: []Arg{{"group", "The worker group; the first (TTIN's) if not given."}, {"count", "The number of workers to start, 1 if not given."}}, Run: start},
		{Name: "restart", Usage: `all|pid|group [{"timeout":ms}]`, Help: "Gracefully restart workers, each new one ready before its old one drains; stops at the first that is not ready within timeout, leaving the rest serving.",
			Args: []Arg{target("restart"), options, timeout}, Run: restart},
		{Name: "upgrade", Usage: `all|pid [path] [{"timeout":ms}]`, Help: "Gracefully restart workers from the executable at path (default: the one on disk now).",
			Args: []Arg{target("upgrade"), {"path", "The executable of the new workers; default: the file now at the program's path."}, options, timeout}, Run: upgrade},
		{Name: "shutdown", Usage: `all|pid [{"timeout":ms}]`, Help: "Gracefully shutdown service, or one worker; what still runs after timeout is killed.",
			Args: []Arg{target("shutdown"), options, timeout}, Level: Local, Run: shutdown},
		{Name: "exit", Usage: "now", Help: "Forcefully exits the service: kills every worker.",
			Args: []Arg{{"now", "Required. 'now' to force exit."}}, Level: Local, Run: exit},
	}
}

func health(_ context.Context, c *flock.Controller, args []any) (any, error) {
	st := c.Status()
	for _, w := range st.Workers {
		if w.State == flock.WorkerReady && w.Group == st.Groups[0] { // the service's port's
			return "OK", nil
		}
	}
	return nil, errors.New("no worker is ready")
}

func start(_ context.Context, c *flock.Controller, args []any) (any, error) {
	group, n := "", 1.0
	if len(args) > 0 {
		if g, ok := args[0].(string); ok {
			group, args = g, args[1:]
		}
	}
	if len(args) > 1 {
		return nil, ErrUsage
	}
	if len(args) == 1 {
		switch v := args[0].(type) {
		case float64:
			n = v
		case map[string]any: // node-cluster-service's {"count": n}
			for k, x := range v {
				f, ok := x.(float64)
				if k != "count" || !ok {
					return nil, fmt.Errorf("%w (the options are {\"count\": n})", ErrUsage)
				}
				n = f
			}
		default:
			return nil, ErrUsage
		}
	}
	if n < 1 || n != float64(int(n)) || n > 1024 {
		return nil, fmt.Errorf("%w (count: a whole number from 1 to 1024)", ErrUsage)
	}
	if err := c.AddGroupWorkers(group, int(n)); err != nil {
		return nil, err
	}
	return count(int(n)) + " starting", nil
}

func restart(_ context.Context, c *flock.Controller, args []any) (any, error) {
	group := ""
	if g, ok := first(args).(string); ok && g != "all" {
		group, args[0] = g, "all"
	}
	pids, timeout, rest, err := target(args)
	if err != nil {
		return nil, err
	}
	if len(rest) > 0 {
		return nil, ErrUsage
	}
	return replaced(c.Restart(flock.RestartOptions{PIDs: pids, Group: group, Timeout: timeout}))("restarted")
}

func first(args []any) any {
	if len(args) == 0 {
		return nil
	}
	return args[0]
}

func upgrade(_ context.Context, c *flock.Controller, args []any) (any, error) {
	pids, timeout, rest, err := target(args)
	if err != nil {
		return nil, err
	}
	path := ""
	switch {
	case len(rest) > 1:
		return nil, ErrUsage
	case len(rest) == 1:
		p, ok := rest[0].(string)
		if !ok {
			return nil, ErrUsage
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
		return nil, ErrUsage
	}
	if pids == nil {
		if err := c.Shutdown(timeout); err != nil {
			return nil, err
		}
		return "Shutting down...", nil
	}
	if err := c.StopWorkers(pids, timeout); err != nil {
		return nil, err
	}
	return "Worker shutdown", nil
}

func exit(_ context.Context, c *flock.Controller, args []any) (any, error) {
	if len(args) != 1 || args[0] != "now" {
		return nil, ErrUsage
	}
	if err := c.Exit(); err != nil {
		return nil, err
	}
	return "Exiting now.", nil
}

// ErrUsage is for a Command's Run to wrap when the arguments are wrong:
// the answer shows the command's usage (with what follows "usage" in the
// error, if anything).
var ErrUsage = errors.New("usage")

// target reads "all|pid" and an optional {"timeout":ms} (last), and returns
// the pids (nil for all), the timeout and the arguments in between.
func target(args []any) (pids []int, timeout time.Duration, rest []any, err error) {
	if len(args) == 0 {
		return nil, 0, nil, ErrUsage
	}
	switch v := args[0].(type) {
	case string:
		if v != "all" {
			return nil, 0, nil, ErrUsage
		}
	case float64:
		if v < 1 || v != float64(int(v)) {
			return nil, 0, nil, ErrUsage
		}
		pids = []int{int(v)}
	default:
		return nil, 0, nil, ErrUsage
	}
	rest = args[1:]
	if n := len(rest); n > 0 {
		if opts, ok := rest[n-1].(map[string]any); ok {
			rest = rest[:n-1]
			for k, v := range opts {
				ms, ok := v.(float64)
				if k != "timeout" || !ok || ms < 0 {
					return nil, 0, nil, fmt.Errorf("%w (the options are {\"timeout\": milliseconds})", ErrUsage)
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
