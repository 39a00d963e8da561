package metrics_test

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/flockhq/flock"
	"github.com/flockhq/flock/internal/flocktest"
	"github.com/flockhq/flock/metrics"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The test binary is an application instrumented with client_golang
// under flock when FLOCK_METRICS_APP is set: every "/" counts in
// app_requests_total and app_request_seconds, and app_busy is a gauge.
const envApp = "FLOCK_METRICS_APP"

func TestMain(m *testing.M) {
	if os.Getenv(envApp) != "" {
		os.Exit(runApp())
	}
	os.Exit(m.Run())
}

func runApp() int {
	requests := promauto.NewCounterVec(prometheus.CounterOpts{Name: "app_requests_total", Help: "Requests answered."}, []string{"code"})
	seconds := promauto.NewHistogram(prometheus.HistogramOpts{Name: "app_request_seconds", Help: "Time to answer.", Buckets: []float64{0.001, 0.01, 1}})
	promauto.NewGauge(prometheus.GaugeOpts{Name: "app_busy", Help: "A gauge."}).Set(1)
	pid := strconv.Itoa(os.Getpid())
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		defer func() { requests.WithLabelValues("200").Inc(); seconds.Observe(time.Since(start).Seconds()) }()
		w.Header().Set("X-Worker-Pid", pid)
		fmt.Fprintln(w, "hello")
	})
	maxRequests, _ := strconv.Atoi(os.Getenv("FLOCK_METRICS_MAX_REQUESTS"))
	err := flock.Serve(h, flock.Options{
		Addr: "127.0.0.1:0", MonitorAddr: "127.0.0.1:0", Workers: 3, Logger: slog.New(slog.NewJSONHandler(os.Stderr, nil)),
		MaxRequests: maxRequests,
		Extensions:  []flock.Extension{metrics.New(metrics.Options{})},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func start(t *testing.T, env ...string) *flocktest.App {
	return flocktest.Start(t, exec.Command(os.Args[0]), append(env, envApp+"=1")...)
}

// scrape returns the families /metrics serves, parsed from the text
// format.
func scrape(t *testing.T, a *flocktest.App) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + a.Monitor + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, 200, resp.StatusCode, string(b))
	var p expfmt.TextParser
	fams, err := p.TextToMetricFamilies(bytes.NewReader(b))
	require.NoError(t, err, string(b))
	return fams
}

// watchCounter scrapes a's /metrics over and over, each scrape as soon as
// the last one has returned, until the function it returns is called; that
// stops it and says each time the counter name went backwards. A scrape
// that fails (the monitor changing masters) is skipped.
func watchCounter(a *flocktest.App, name string) (stop func() []string) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan []string, 1)
	go func() {
		var backwards []string
		last := 0.0
		for ctx.Err() == nil {
			resp, err := http.Get("http://" + a.Monitor + "/metrics")
			if err != nil {
				continue
			}
			var p expfmt.TextParser
			fams, err := p.TextToMetricFamilies(resp.Body)
			resp.Body.Close()
			if err != nil {
				continue
			}
			v := counter(fams, name)
			if v < last {
				backwards = append(backwards, fmt.Sprintf("%v after %v", v, last))
			}
			last = v
		}
		done <- backwards
	}()
	a.T().Cleanup(cancel)
	return func() []string { cancel(); return <-done }
}

func counter(fams map[string]*dto.MetricFamily, name string) float64 {
	sum := 0.0
	if f := fams[name]; f != nil {
		for _, m := range f.Metric {
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

// The merged request counter is exactly what the clients got answered,
// through a HUP and a TTOU under load (every exited worker's last report
// kept), and it never goes backwards while they run. The histogram's
// count agrees; the gauge is per worker.
func TestMergedCountersThroughRestarts(t *testing.T) {
	a := start(t)
	a.Started(3)
	watch := watchCounter(a, "app_requests_total")
	fresh := flocktest.StartLoad(t, a.URL("/"), 4, false)
	kept := flocktest.StartLoad(t, a.URL("/"), 4, true)
	fresh.WaitRequests(300)
	a.Signal(syscall.SIGHUP)
	a.WaitFor("the roll", 20*time.Second, func(r flocktest.Rec) bool { return r.Str("event") == "roll" && r.Str("reason") != "began" })
	a.SignalUntil(syscall.SIGTTOU, "a worker fewer", func(r flocktest.Rec) bool { return r.Str("reason") == string(flock.ExitScaleDown) })
	fresh.WaitRequests(300)
	rf, rk := fresh.Stop(), kept.Stop()
	t.Logf("load: new connection per request %s; keep-alive %s", rf, rk)
	assert.Zero(t, rf.Failed.Load()+rk.Failed.Load(), "failed requests")
	answered := float64(rf.OK.Load() + rk.OK.Load())
	a.WaitUntil(fmt.Sprintf("%v requests in /metrics", answered), 10*time.Second, func() bool {
		return counter(scrape(t, a), "app_requests_total") >= answered
	})
	fams := scrape(t, a)
	assert.Equal(t, answered, counter(fams, "app_requests_total"), "merged = answered")
	assert.Empty(t, watch(), "the merged counter went backwards")
	h := fams["app_request_seconds"].Metric[0].GetHistogram()
	assert.Equal(t, uint64(answered), h.GetSampleCount(), "the histogram merges too")
	assert.Equal(t, uint64(answered), h.Bucket[len(h.Bucket)-1].GetCumulativeCount())
	assert.Len(t, fams["app_busy"].Metric, 2, "a gauge per live worker (2 after the TTOU)")
	assert.Equal(t, 3.0, counterWith(fams, "flock_forks_total", "reason", "restart"), "the supervisor's own")
	assert.Equal(t, 2.0, gaugeWith(fams, "flock_workers", "state", "ready"))
	assert.Equal(t, 1.0, gaugeWith(fams, "flock_ecv", "state", "AVAILABLE"))
	assert.Equal(t, 0.0, gaugeWith(fams, "flock_listener_queued", "listener", "main"), "nothing waits once the load is over")
	assert.Positive(t, gaugeWith(fams, "flock_listener_queue_max", "listener", "main"))
	assert.Len(t, fams["flock_worker_cpu_seconds_total"].GetMetric(), 2)
	assert.Equal(t, 0.0, fams["flock_rolling"].Metric[0].GetGauge().GetValue())
	assert.Equal(t, 0.0, fams["flock_backoff_slots"].Metric[0].GetGauge().GetValue())

	req, err := http.NewRequest("GET", "http://"+a.Monitor+"/metrics", nil)
	require.NoError(t, err)
	req.Header.Set("Accept", "application/openmetrics-text;version=1.0.0")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Contains(t, resp.Header.Get("Content-Type"), "application/openmetrics-text", "OpenMetrics when the scraper asks")

	if promtool, err := exec.LookPath("promtool"); err == nil {
		resp, err := http.Get("http://" + a.Monitor + "/metrics")
		require.NoError(t, err)
		cmd := exec.Command(promtool, "check", "metrics")
		cmd.Stdin = resp.Body
		out, err := cmd.CombinedOutput()
		resp.Body.Close()
		assert.NoError(t, err, "promtool check metrics: %s", out)
	} else {
		t.Log("promtool is not installed (Debian's prometheus has it): the exposition was not checked with it")
	}
}

func counterWith(fams map[string]*dto.MetricFamily, name, label, value string) float64 {
	for _, m := range fams[name].GetMetric() {
		for _, l := range m.Label {
			if l.GetName() == label && l.GetValue() == value {
				return m.GetCounter().GetValue()
			}
		}
	}
	return -1
}

func gaugeWith(fams map[string]*dto.MetricFamily, name, label, value string) float64 {
	sum, found := 0.0, false
	for _, m := range fams[name].GetMetric() {
		for _, l := range m.Label {
			if l.GetName() == label && l.GetValue() == value {
				sum, found = sum+m.GetGauge().GetValue(), true
			}
		}
	}
	if !found {
		return -1
	}
	return sum
}

// A real Prometheus (Debian's) scrapes /metrics every 100 ms while the
// load runs through a HUP roll and MaxRequests recycling, then a TTOU, then
// a USR2 upgrade (the new master scraped on the same socket), and a worker
// is killed with SIGKILL between two loads (a killed worker loses what it
// counted since its last report, so the kill comes once everything is
// reported): its HTTP API then answers that the merged request counter is
// exactly the number of requests answered, and that it never reset.
func TestPrometheusSeesExactCounts(t *testing.T) {
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Skip("prometheus is not installed (.ci/run installs Debian's): ", err)
	}
	a := start(t, "FLOCK_METRICS_MAX_REQUESTS=1500")
	a.Started(3)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	promAddr := ln.Addr().String()
	ln.Close()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "prometheus.yml")
	require.NoError(t, os.WriteFile(cfg, []byte(fmt.Sprintf(`global:
  scrape_interval: 100ms
scrape_configs:
  - job_name: flock
    static_configs:
      - targets: ["%s"]
`, a.Monitor)), 0o644))
	flocktest.Start(t, exec.Command(bin, "--config.file="+cfg, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+promAddr))
	query := func(q string) (float64, bool) {
		resp, err := http.Get("http://" + promAddr + "/api/v1/query?query=" + url.QueryEscape(q))
		if err != nil {
			return 0, false
		}
		defer resp.Body.Close()
		var r struct {
			Data struct {
				Result []struct {
					Value [2]any `json:"value"`
				} `json:"result"`
			} `json:"data"`
		}
		if json.NewDecoder(resp.Body).Decode(&r) != nil || len(r.Data.Result) != 1 {
			return 0, false
		}
		s, _ := r.Data.Result[0].Value[1].(string)
		v, err := strconv.ParseFloat(s, 64)
		return v, err == nil
	}
	a.WaitUntil("Prometheus scraping flock", 30*time.Second, func() bool { _, ok := query(`up{job="flock"} == 1`); return ok })

	load := func(during func()) float64 {
		fresh := flocktest.StartLoad(t, a.URL("/"), 4, false)
		kept := flocktest.StartLoad(t, a.URL("/"), 4, true)
		fresh.WaitRequests(500)
		during()
		fresh.WaitRequests(500)
		return float64(fresh.Stop().OK.Load() + kept.Stop().OK.Load())
	}
	answered := load(func() {
		a.Signal(syscall.SIGHUP)
		a.WaitFor("the roll", 20*time.Second, func(r flocktest.Rec) bool { return r.Str("event") == "roll" && r.Str("reason") != "began" })
		a.WaitFor("a worker recycled", 30*time.Second, func(r flocktest.Rec) bool { return r.Str("reason") == string(flock.ExitRecycle) })
	})
	a.WaitUntil("every request reported", 10*time.Second, func() bool { return counter(scrape(t, a), "app_requests_total") >= answered })
	// The victim: a ready worker far from MaxRequests, every request it
	// served already reported. (A worker picked by the one that answers a
	// request could be recycled by that request, and gone by the kill.)
	code, body, _ := a.Mon("GET", "/")
	require.Equal(t, http.StatusOK, code, body)
	var st flock.Status
	require.NoError(t, json.Unmarshal([]byte(body), &st))
	victim := slices.MinFunc(slices.DeleteFunc(st.Workers, func(w flock.WorkerStatus) bool { return w.State != flock.WorkerReady }),
		func(a, b flock.WorkerStatus) int { return cmp.Compare(a.Requests, b.Requests) })
	require.Less(t, victim.Requests, int64(1000), "far from MaxRequests (1500)")
	require.NoError(t, syscall.Kill(victim.PID, syscall.SIGKILL))
	a.WaitFor("the killed worker re-forked", 20*time.Second, func(r flocktest.Rec) bool { return r.Str("event") == "forked" && r.Str("reason") == "failure" })
	answered += load(func() {
		a.SignalUntil(syscall.SIGTTOU, "a worker fewer", func(r flocktest.Rec) bool { return r.Str("reason") == string(flock.ExitScaleDown) })
	})
	answered += load(func() {
		a.Signal(syscall.SIGUSR2)
		a.WaitFor("the handover to a new master", 30*time.Second, func(r flocktest.Rec) bool {
			return r.Str("event") == "upgrade" && r.Str("reason") == "handed over"
		})
	})

	total := `sum(app_requests_total{job="flock"})`
	resets := `sum(resets(app_requests_total{job="flock"}[5m]))`
	a.WaitUntil(fmt.Sprintf("Prometheus: %s = %v", total, answered), 20*time.Second, func() bool { v, ok := query(total); return ok && v == answered })
	got, _ := query(total)
	r, ok := query(resets)
	require.True(t, ok, resets)
	t.Logf("Prometheus: %s = %v (requests answered: %v); %s = %v", total, got, answered, resets, r)
	assert.Equal(t, answered, got)
	assert.Zero(t, r, "the merged counter reset")
	forks, _ := query(`sum(flock_forks_total{job="flock"})`)
	t.Logf("Prometheus: sum(flock_forks_total) = %v", forks)
	assert.Equal(t, 2.0, forks, "the supervisor's counters count from each master's start: the new master forked 2")
}

// Across a USR2 upgrade the new master takes the old one's counts, those
// of its draining workers included: the merged counter, scraped all along
// on the same monitor socket, never decreases and ends equal to the
// requests answered.
func TestMergedCountersThroughUSR2(t *testing.T) {
	a := start(t)
	a.Started(3)
	watch := watchCounter(a, "app_requests_total") // the monitor's socket goes to the new master
	fresh := flocktest.StartLoad(t, a.URL("/"), 4, false)
	kept := flocktest.StartLoad(t, a.URL("/"), 4, true)
	fresh.WaitRequests(300)
	a.Signal(syscall.SIGUSR2)
	assert.Equal(t, 0, a.ExitCode(30*time.Second), "the old master exits once its workers drained")
	fresh.WaitRequests(300)
	rf, rk := fresh.Stop(), kept.Stop()
	answered := float64(rf.OK.Load() + rk.OK.Load())
	a.WaitUntil(fmt.Sprintf("%v requests in the new master's /metrics", answered), 10*time.Second, func() bool {
		return counter(scrape(t, a), "app_requests_total") >= answered
	})
	assert.Equal(t, answered, counter(scrape(t, a), "app_requests_total"), "merged = answered, across the upgrade")
	assert.Empty(t, watch(), "the merged counter went backwards")
}
