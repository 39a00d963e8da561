package metrics

import (
	"slices"
	"strconv"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/proto"
)

// merger sums metric families: series of the same family and label set
// add up, as the package documentation says per type.
type merger struct {
	sumGauges []string
	fams      map[string]*dto.MetricFamily
	series    map[string]*dto.Metric // by family name and label set
}

func newMerger(sumGauges []string) *merger {
	return &merger{sumGauges: sumGauges, fams: map[string]*dto.MetricFamily{}, series: map[string]*dto.Metric{}}
}

// add sums fams into m: the cumulative types, and the gauges named in
// sumGauges unless cumulativeOnly. With worker set, every series is
// labelled worker=<it> instead, and none is summed with another worker's.
func (m *merger) add(fams []*dto.MetricFamily, worker string, cumulativeOnly bool) {
	for _, f := range fams {
		gauge := f.GetType() == dto.MetricType_GAUGE
		if gauge && worker == "" && (cumulativeOnly || !slices.Contains(m.sumGauges, f.GetName())) {
			continue // per worker: addGauges
		}
		for _, s := range f.GetMetric() {
			m.put(f, s, worker)
		}
	}
}

// addGauges adds fams' gauges that are not summed, labelled worker.
func (m *merger) addGauges(fams []*dto.MetricFamily, worker string) {
	for _, f := range fams {
		if f.GetType() == dto.MetricType_GAUGE && !slices.Contains(m.sumGauges, f.GetName()) {
			for _, s := range f.GetMetric() {
				m.put(f, s, worker)
			}
		}
	}
}

// put adds one series of family f, labelled worker if set.
func (m *merger) put(f *dto.MetricFamily, s *dto.Metric, worker string) {
	into := m.fams[f.GetName()]
	if into == nil {
		into = &dto.MetricFamily{Name: f.Name, Help: f.Help, Type: f.Type}
		m.fams[f.GetName()] = into
	} else if into.GetType() != f.GetType() {
		return // a worker of another version disagrees on the type: the first one seen wins
	}
	s = proto.Clone(s).(*dto.Metric)
	s.TimestampMs = nil
	if worker != "" {
		s.Label = append(s.Label, &dto.LabelPair{Name: proto.String("worker"), Value: proto.String(worker)})
		slices.SortFunc(s.Label, func(a, b *dto.LabelPair) int { return cmpString(a.GetName(), b.GetName()) })
	}
	key := f.GetName() + "\xff" + labelKey(s.Label)
	have := m.series[key]
	if have == nil {
		if sum := s.GetSummary(); sum != nil {
			sum.Quantile = nil // quantiles do not add up
		}
		m.series[key] = s
		into.Metric = append(into.Metric, s)
		return
	}
	switch f.GetType() {
	case dto.MetricType_COUNTER:
		have.Counter.Value = proto.Float64(have.Counter.GetValue() + s.Counter.GetValue())
	case dto.MetricType_GAUGE:
		have.Gauge.Value = proto.Float64(have.Gauge.GetValue() + s.Gauge.GetValue())
	case dto.MetricType_UNTYPED:
		have.Untyped.Value = proto.Float64(have.Untyped.GetValue() + s.Untyped.GetValue())
	case dto.MetricType_SUMMARY:
		have.Summary.SampleCount = proto.Uint64(have.Summary.GetSampleCount() + s.Summary.GetSampleCount())
		have.Summary.SampleSum = proto.Float64(have.Summary.GetSampleSum() + s.Summary.GetSampleSum())
	case dto.MetricType_HISTOGRAM:
		h, o := have.Histogram, s.Histogram
		h.SampleCount = proto.Uint64(h.GetSampleCount() + o.GetSampleCount())
		h.SampleSum = proto.Float64(h.GetSampleSum() + o.GetSampleSum())
		for _, b := range o.GetBucket() {
			i := slices.IndexFunc(h.Bucket, func(x *dto.Bucket) bool { return x.GetUpperBound() == b.GetUpperBound() })
			if i < 0 {
				continue // buckets that differ between versions cannot be added
			}
			h.Bucket[i].CumulativeCount = proto.Uint64(h.Bucket[i].GetCumulativeCount() + b.GetCumulativeCount())
		}
	}
}

// families are the merged families.
func (m *merger) families() []*dto.MetricFamily {
	out := make([]*dto.MetricFamily, 0, len(m.fams))
	for _, f := range m.fams {
		out = append(out, f)
	}
	return out
}

func labelKey(ls []*dto.LabelPair) string {
	var b strings.Builder
	for _, l := range ls {
		b.WriteString(l.GetName())
		b.WriteByte(0)
		b.WriteString(l.GetValue())
		b.WriteByte(0xff)
	}
	return b.String()
}

func cmpString(a, b string) int { return strings.Compare(a, b) }

func itoa(n int) string { return strconv.Itoa(n) }
