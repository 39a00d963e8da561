package metrics

import (
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/flockhq/flock"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/proto"
)

// The supervisor's own metrics:
//
//	flock_forks_total{reason}          workers started, by why (start, scale, failure, restart, …)
//	flock_exits_total{reason}          workers exited, by why (crash, restart, recycle, scale-down, …)
//	flock_gave_up_total                slots given up (crashing past RestartsPerMinute)
//	flock_rolls_total{result}          rolling restarts done or failed
//	flock_roll_last_seconds            how long the last successful roll took
//	flock_workers{group,state}         workers by state (starting, ready, stopping)
//	flock_backoff_slots                slots waiting out a crash's back-off
//	flock_rolling                      1 while a rolling restart is under way
//	flock_ecv{state}                   1 for the monitor's state (AVAILABLE, DISABLED, WARNING)
//	flock_worker_rss_bytes{worker,group}        per live worker
//	flock_worker_uptime_seconds{worker,group}
//	flock_worker_cpu_seconds_total{worker,group} user and system CPU time (from /proc)
//	flock_worker_requests_total{worker,group}   what it served (flock's own workers)
//	flock_worker_connections_open{worker,group}
//	flock_listener_queued{listener}             connections accepted by the kernel, not yet by a worker
//	flock_listener_queue_max{listener}          the backlogs: more queued are dropped
//
// The counters count from this master's start.
type supervisor struct {
	forks, exits map[string]float64
	gaveUp       float64
	rolls        map[string]float64
	lastRoll     time.Duration
}

func newSupervisor() *supervisor {
	return &supervisor{forks: map[string]float64{}, exits: map[string]float64{}, rolls: map[string]float64{}}
}

func (s *supervisor) event(e flock.Event) {
	switch e.Kind {
	case flock.EventForked:
		s.forks[string(e.Start)]++
	case flock.EventExited:
		s.exits[string(e.Exit)]++
	case flock.EventGaveUp:
		s.gaveUp++
	case flock.EventRoll:
		switch e.Phase {
		case flock.PhaseDone:
			s.rolls["done"]++
			s.lastRoll = e.Took
		case flock.PhaseFailed:
			s.rolls["failed"]++
		}
	}
}

func (s *supervisor) families(st flock.Status) []*dto.MetricFamily {
	counter := func(name, help, label string, by map[string]float64) *dto.MetricFamily {
		f := family(name, help, dto.MetricType_COUNTER)
		for _, k := range slices.Sorted(maps.Keys(by)) {
			f.Metric = append(f.Metric, &dto.Metric{Label: labels(label, k), Counter: &dto.Counter{Value: proto.Float64(by[k])}})
		}
		return f
	}
	out := []*dto.MetricFamily{
		counter("flock_forks_total", "Worker processes started, by reason.", "reason", s.forks),
		counter("flock_exits_total", "Worker processes exited, by reason.", "reason", s.exits),
		counter("flock_rolls_total", "Rolling restarts, by result.", "result", s.rolls),
		gauge("flock_roll_last_seconds", "How long the last successful rolling restart took.", s.lastRoll.Seconds()),
		gauge("flock_backoff_slots", "Worker slots waiting out a crash's back-off before their next worker.", float64(st.Backoff)),
		gauge("flock_rolling", "1 while a rolling restart is under way.", map[bool]float64{true: 1}[st.Rolling]),
	}
	gaveUp := family("flock_gave_up_total", "Worker slots given up after crashing past RestartsPerMinute.", dto.MetricType_COUNTER)
	gaveUp.Metric = []*dto.Metric{{Counter: &dto.Counter{Value: proto.Float64(s.gaveUp)}}}
	out = append(out, gaveUp)

	ecv := family("flock_ecv", "The monitor's state: 1 for the current one.", dto.MetricType_GAUGE)
	for _, state := range []string{"AVAILABLE", "DISABLED", "WARNING"} {
		v := 0.0
		if st.ECV == state {
			v = 1
		}
		ecv.Metric = append(ecv.Metric, &dto.Metric{Label: labels("state", state), Gauge: &dto.Gauge{Value: proto.Float64(v)}})
	}
	out = append(out, ecv)

	byState := map[[2]string]float64{}
	per := map[string]*dto.MetricFamily{}
	perWorker := func(name, help string, t dto.MetricType, w flock.WorkerStatus, v float64) {
		f := per[name]
		if f == nil {
			f = family(name, help, t)
			per[name] = f
			out = append(out, f)
		}
		m := &dto.Metric{Label: labels("group", w.Group, "worker", itoa(w.PID))}
		if t == dto.MetricType_COUNTER {
			m.Counter = &dto.Counter{Value: proto.Float64(v)}
		} else {
			m.Gauge = &dto.Gauge{Value: proto.Float64(v)}
		}
		f.Metric = append(f.Metric, m)
	}
	for _, w := range st.Workers {
		byState[[2]string{w.Group, string(w.State)}]++
		perWorker("flock_worker_rss_bytes", "Resident memory of each worker.", dto.MetricType_GAUGE, w, float64(w.RSS))
		perWorker("flock_worker_uptime_seconds", "Time since each worker started.", dto.MetricType_GAUGE, w, time.Since(w.Started).Seconds())
		perWorker("flock_worker_cpu_seconds_total", "User and system CPU time of each worker's process.", dto.MetricType_COUNTER, w, cpuSeconds(w.PID))
		perWorker("flock_worker_requests_total", "Requests each worker served (flock's own workers).", dto.MetricType_COUNTER, w, float64(w.Requests))
		perWorker("flock_worker_connections_open", "Connections each worker has open (flock's own workers).", dto.MetricType_GAUGE, w, float64(w.ConnectionsOpen))
	}
	queued := family("flock_listener_queued", "Connections in each listener's accept queues, not yet taken by a worker.", dto.MetricType_GAUGE)
	backlog := family("flock_listener_queue_max", "Each listener's accept backlogs, summed over its sockets.", dto.MetricType_GAUGE)
	for _, q := range st.Queues {
		queued.Metric = append(queued.Metric, &dto.Metric{Label: labels("listener", q.Listener), Gauge: &dto.Gauge{Value: proto.Float64(float64(q.Queued))}})
		backlog.Metric = append(backlog.Metric, &dto.Metric{Label: labels("listener", q.Listener), Gauge: &dto.Gauge{Value: proto.Float64(float64(q.Max))}})
	}
	out = append(out, queued, backlog)
	workers := family("flock_workers", "Workers by group and state.", dto.MetricType_GAUGE)
	for _, g := range st.Groups {
		for _, state := range []flock.WorkerState{flock.WorkerStarting, flock.WorkerReady, flock.WorkerStopping} {
			workers.Metric = append(workers.Metric, &dto.Metric{Label: labels("group", g, "state", string(state)),
				Gauge: &dto.Gauge{Value: proto.Float64(byState[[2]string{g, string(state)}])}})
		}
	}
	return append(out, workers)
}

func family(name, help string, t dto.MetricType) *dto.MetricFamily {
	return &dto.MetricFamily{Name: proto.String(name), Help: proto.String(help), Type: t.Enum()}
}

func gauge(name, help string, v float64) *dto.MetricFamily {
	f := family(name, help, dto.MetricType_GAUGE)
	f.Metric = []*dto.Metric{{Gauge: &dto.Gauge{Value: proto.Float64(v)}}}
	return f
}

// labels makes label pairs of name, value, name, value…, in that order
// (sorted by name, as the exposition wants).
func labels(kv ...string) []*dto.LabelPair {
	var out []*dto.LabelPair
	for i := 0; i+1 < len(kv); i += 2 {
		out = append(out, &dto.LabelPair{Name: proto.String(kv[i]), Value: proto.String(kv[i+1])})
	}
	return out
}

// cpuSeconds is pid's user and system CPU time (/proc/PID/stat fields 14
// and 15, in clock ticks of 1/100 s on Linux), 0 if unknown.
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile("/proc/" + itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:]) // the name may hold spaces
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseFloat(f[11], 64)
	k, _ := strconv.ParseFloat(f[12], 64)
	return (u + k) / 100
}
