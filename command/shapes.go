package command

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"time"

	"github.com/flockhq/flock"
)

// The answers of help, version, info and workers, in node-cluster-service
// 2.1.4's shapes (so that its cservice CLI and the scripts written for it
// work unchanged), with flock's own fields beside theirs, never instead.

// object is a JSON object that keeps its keys in the order given, as
// node-cluster-service writes them.
type object []field

type field struct {
	key   string
	value any
}

func (o object) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, f := range o {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(f.key)
		v, err := json.Marshal(f.value)
		if err != nil {
			return nil, err
		}
		b.Write(k)
		b.WriteByte(':')
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// help: {"more": …, "commands": [names]}; help <cmd>: {"command": usage,
// "info": …, one key per argument, "level": …}; an unknown command is
// {"command": name, "err": "Command not found"}, as node-cluster-service
// answers it (200).
func (s *surface) help(_ context.Context, _ *flock.Controller, args []any) (any, error) {
	switch {
	case len(args) > 1:
		return nil, ErrUsage
	case len(args) == 0:
		return object{{"more", "Commands (Use 'help [command_name]' for more details)"}, {"commands", s.names()}}, nil
	}
	name := fmt.Sprint(args[0])
	c := s.cmds[name]
	if c == nil {
		return object{{"command", name}, {"err", "Command not found"}}, nil
	}
	o := object{{"command", c.Name + " " + c.Usage}, {"info", c.Help}}
	if c.Usage == "" {
		o[0].value = c.Name
	}
	for _, a := range c.Args {
		o = append(o, field{a.Name, a.Help})
	}
	return append(o, field{"level", c.Level.String()}), nil
}

// version: the application's version string (flock's when it has none);
// version details: every version, and what the program was built from.
func (s *surface) version(_ context.Context, c *flock.Controller, args []any) (any, error) {
	switch {
	case len(args) == 0:
		if s.o.Version == "" {
			return flock.Version, nil
		}
		return s.o.Version, nil
	case len(args) == 1 && args[0] == "details":
		return object{{"app", s.o.Version}, {"flock", flock.Version}, {"go", runtime.Version()}, {"build", c.Status().Build}}, nil
	}
	return nil, ErrUsage
}

// info: {"workers": {"active": n}, "memory": {…}, "net": {…}}, the sums
// over the workers, then the master's own fields.
func info(_ context.Context, c *flock.Controller, args []any) (any, error) {
	if len(args) > 0 {
		return nil, ErrUsage
	}
	st := c.Status()
	var live []flock.WorkerStatus
	for _, w := range st.Workers {
		if w.State != flock.WorkerStopping {
			live = append(live, w)
		}
	}
	sum := workerStats(live...)
	return object{
		{"workers", object{{"active", len(live)}}},
		{"memory", sum.memory},
		{"net", object{{"connections", sum.connections}, {"connectionsOpen", sum.connectionsOpen},
			{"requests", sum.requests}, {"avgRequests", sum.avgRequests}, {"avgConnections", sum.avgConnections}}},
		{"pid", st.PID}, {"started", st.Started}, {"uptime", time.Since(st.Started).Round(time.Second).String()},
		{"state", st.State}, {"ecv", st.ECV}, {"addr", st.Addr}, {"executable", st.Binary.Path},
		{"binary", st.Binary}, {"build", st.Build}, {"go", runtime.Version()},
	}, nil
}

// stats are node-cluster-service's memory and net figures of one worker,
// or their sums.
type stats struct {
	memory                                 object
	requests, connections, connectionsOpen int64
	avgRequests, avgConnections            float64
	rss, heapTotal, heapUsed               int64
}

func workerStats(ws ...flock.WorkerStatus) stats {
	var s stats
	for _, w := range ws {
		s.rss += w.RSS
		s.heapTotal += w.HeapTotal
		s.heapUsed += w.HeapUsed
		s.requests += w.Requests
		s.connections += w.Connections
		s.connectionsOpen += w.ConnectionsOpen
		s.avgRequests += w.AvgRequests
		s.avgConnections += w.AvgConnections
	}
	s.memory = object{{"rss", s.rss}, {"heapTotal", s.heapTotal}, {"heapUsed", s.heapUsed}}
	return s
}

// nodeState is the Node cluster worker state node-cluster-service shows.
var nodeState = map[flock.WorkerState]string{
	flock.WorkerStarting: "online",
	flock.WorkerReady:    "listening",
	flock.WorkerStopping: "disconnected",
}

// workers [simple|details]: {"workers": [{"id", "pid", "state", "worker",
// "cwd", "process": {"memory", "uptime", "net"}}, …]}, plus flock's slot,
// start time, binary and state. simple lists the workers that serve or
// boot; details adds those draining, and every figure flock has.
func workers(_ context.Context, c *flock.Controller, args []any) (any, error) {
	details := false
	switch {
	case len(args) > 1:
		return nil, ErrUsage
	case len(args) == 1 && args[0] == "details":
		details = true
	case len(args) == 1 && args[0] != "simple":
		return nil, ErrUsage
	}
	cwd, _ := os.Getwd()
	out := []any{}
	for _, w := range c.Status().Workers {
		if w.State == flock.WorkerStopping && !details {
			continue
		}
		st := workerStats(w)
		entry := object{
			{"id", w.ID}, {"pid", w.PID}, {"state", nodeState[w.State]}, {"worker", w.Binary.Path}, {"cwd", cwd},
			{"process", object{
				{"memory", st.memory},
				{"uptime", time.Since(w.Started).Seconds()},
				{"net", object{{"requests", st.requests}, {"connections", st.connections},
					{"connectionsOpen", st.connectionsOpen}, {"avgRequests", st.avgRequests}, {"avgConnections", st.avgConnections}}},
			}},
			{"slot", w.Slot}, {"group", w.Group}, {"started", w.Started}, {"binary", w.Binary}, {"flockState", w.State},
		}
		if details {
			entry = append(entry, field{"details", w})
		}
		out = append(out, entry)
	}
	return object{{"workers", out}}, nil
}
