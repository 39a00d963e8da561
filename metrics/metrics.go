// Package metrics gives a flock service one Prometheus endpoint, /metrics
// on the monitor port: the application's metrics gathered from every
// worker and merged in the master, and the supervisor's own.
//
//	flock.Serve(h, flock.Options{
//		Extensions: []flock.Extension{metrics.New(metrics.Options{})},
//	})
//
// The application registers its collectors as usual (promauto, the
// default registry). Each worker sends its registry to the master at most
// once a second while it serves, and once more after its drain, just
// before it exits (flock.Report). The master merges:
//
//   - counters, histograms and untyped metrics are summed across workers,
//     including the workers that have exited (their last report is kept),
//     so a merged counter never goes backwards across HUP, recycling,
//     TTOU, a crash or a USR2 upgrade (the new master takes the old one's
//     counts, its draining workers' included: upgrade.go); a worker
//     killed with SIGKILL loses what it counted since its last report (at
//     most a second's worth);
//   - summaries: their count and sum are summed, their quantiles cannot be
//     and are left out;
//   - gauges get a "worker" label (its pid), one series per live worker,
//     and go with it; those named in Options.SumGauges are summed over
//     the live workers instead.
//
// Options.PerWorker serves every series per worker instead, labelled.
// The supervisor's metrics are named flock_… (see supervisor.go).
//
// The package depends on github.com/prometheus/client_golang, the
// ecosystem's standard; flock's core package does not.
package metrics

import (
	"bytes"
	"maps"
	"net"
	"net/http"
	"slices"
	"sync"

	"github.com/flockhq/flock"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
)

// Options configure the metrics extension. The zero value is the default.
type Options struct {
	// Gatherer is what each worker reports; nil means
	// prometheus.DefaultGatherer.
	Gatherer prometheus.Gatherer
	// Path is where the monitor serves the metrics; "" means /metrics.
	Path string
	// SumGauges are gauges summed over the live workers instead of one
	// series per worker.
	SumGauges []string
	// PerWorker serves every application series per worker (a "worker"
	// label), live workers only, instead of merged.
	PerWorker bool
}

const topic = "metrics"

// New returns the extension. Call it where the program builds its
// flock.Options: in the master it serves the metrics, in each worker it
// has the worker report its registry.
func New(o Options) flock.Extension {
	if o.Gatherer == nil {
		o.Gatherer = prometheus.DefaultGatherer
	}
	if o.Path == "" {
		o.Path = "/metrics"
	}
	x := &extension{o: o, live: map[int][]*dto.MetricFamily{}, gone: newMerger(nil), sup: newSupervisor(), orphan: true}
	if flock.IsWorker() {
		flock.Report(topic, x.report)
	}
	return x
}

type extension struct {
	o   Options
	ctl *flock.Controller

	mu   sync.Mutex
	live map[int][]*dto.MetricFamily // each live worker's last report, by pid
	gone *merger                     // what exited workers counted
	sup  *supervisor

	// USR2 (upgrade.go): what the predecessor's workers counted, and the
	// hand-down to a successor.
	inherited []*dto.MetricFamily
	fetching  sync.Mutex
	pred      int  // the predecessor's pid
	orphan    bool // no predecessor, or it has sent its final counts
	ln        net.Listener
	told      chan struct{}
	stopping  bool
	heirAsked bool
}

// report is a worker's registry, encoded.
func (x *extension) report() []byte {
	fams, err := x.o.Gatherer.Gather()
	if err != nil && len(fams) == 0 {
		return nil
	}
	var b bytes.Buffer
	enc := expfmt.NewEncoder(&b, expfmt.NewFormat(expfmt.TypeProtoDelim))
	for _, f := range fams {
		enc.Encode(f)
	}
	return b.Bytes()
}

func (x *extension) Start(c *flock.Controller) error {
	x.ctl = c
	x.tell()
	pred := c.Predecessor()
	x.mu.Lock()
	x.pred, x.orphan = pred, pred == 0
	x.mu.Unlock()
	if pred != 0 {
		go x.follow()
	}
	return c.Handle(x.o.Path, http.HandlerFunc(x.serve))
}

func (x *extension) Stop() { x.handDown() }

func (x *extension) Event(e flock.Event) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.sup.event(e)
	switch e.Kind {
	case flock.EventReport:
		if e.Topic != topic {
			return
		}
		if fams, err := decode(e.Data); err == nil {
			x.live[e.PID] = fams
		}
	case flock.EventExited:
		// Its last report came before this event: keep what it counted.
		x.gone.add(x.live[e.PID], "", true)
		delete(x.live, e.PID)
	}
}

func decode(data []byte) ([]*dto.MetricFamily, error) {
	dec := expfmt.NewDecoder(bytes.NewReader(data), expfmt.NewFormat(expfmt.TypeProtoDelim))
	var fams []*dto.MetricFamily
	for {
		f := &dto.MetricFamily{}
		if err := dec.Decode(f); err != nil {
			if len(fams) > 0 || len(data) == 0 {
				return fams, nil
			}
			return nil, err
		}
		fams = append(fams, f)
	}
}

// serve answers a scrape: the merged families, then the supervisor's.
func (x *extension) serve(w http.ResponseWriter, r *http.Request) {
	st := x.ctl.Status()
	x.inherit() // at least what the predecessor served last
	x.mu.Lock()
	m := newMerger(x.o.SumGauges)
	if !x.o.PerWorker {
		m.add(x.inherited, "", true)
		m.add(x.gone.families(), "", false)
	}
	for _, pid := range slices.Sorted(maps.Keys(x.live)) {
		worker := ""
		if x.o.PerWorker {
			worker = itoa(pid)
		}
		m.add(x.live[pid], worker, false)
		if !x.o.PerWorker {
			m.addGauges(x.live[pid], itoa(pid))
		}
	}
	fams := append(m.families(), x.sup.families(st)...)
	x.mu.Unlock()
	slices.SortFunc(fams, func(a, b *dto.MetricFamily) int { return cmpString(a.GetName(), b.GetName()) })
	format := expfmt.NegotiateIncludingOpenMetrics(r.Header)
	w.Header().Set("Content-Type", string(format))
	enc := expfmt.NewEncoder(w, format)
	for _, f := range fams {
		if err := enc.Encode(f); err != nil {
			return
		}
	}
	if c, ok := enc.(expfmt.Closer); ok {
		c.Close()
	}
}
