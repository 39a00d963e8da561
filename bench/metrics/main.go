// Command metrics measures what the metrics extension costs (issue 13):
//
//   - how long a scrape of /metrics takes with 16 workers that each
//     report 100 application series (and a histogram), merged;
//
//   - whether scraping every second changes the application's throughput:
//     wrk against 2 workers, in alternating rounds with and without a
//     scraper, the ratio of requests per second; and, steadier, the CPU
//     time of all the application's processes per request at a fixed rate.
//
//     go run ./bench/metrics [-rounds 7] [-d 5s]
//
// It runs itself as the application (FLOCK_BENCH_APP set) on loopback, and
// kills every process it started (by process group) when it ends. Needs
// wrk (Debian's package).
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/flockhq/flock"
	"github.com/flockhq/flock/metrics"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

const envApp = "FLOCK_BENCH_APP"

func main() {
	if n := os.Getenv(envApp); n != "" {
		app(n)
		return
	}
	rounds := flag.Int("rounds", 7, "alternating rounds of the throughput comparison")
	d := flag.Duration("d", 5*time.Second, "wrk's duration per round and side")
	flag.Parse()
	if _, err := exec.LookPath("wrk"); err != nil {
		log.Fatal("bench/metrics needs wrk (apt-get install wrk)")
	}
	fmt.Printf("machine: %d cores, %s\n\n", runtimeCPUs(), goVersion())
	scrapeTime()
	fmt.Println()
	throughput(*rounds, *d)
	fmt.Println()
	cpuPerRequest(*rounds, *d)
	fmt.Println()
	scrapeShare(*rounds, *d)
}

// scrapeShare measures what scraping takes from the machine directly: the
// master's CPU time (from /proc/PID/task/*/schedstat, in nanoseconds)
// while wrk saturates 2 workers, with a scrape every second and without,
// against the CPU time the whole application uses. A scrape runs in the
// master only (the workers report whether anyone scrapes or not), so the
// master's extra CPU bounds what scraping can take from the application.
func scrapeShare(rounds int, d time.Duration) {
	addr, monitor, stop := start(2)
	defer stop()
	pid := masterPID(monitor)
	fmt.Printf("CPU the master spends on scraping every second, wrk -t1 -c32 saturating 2 workers, %v per side:\n", d)
	var shares []float64
	for r := range rounds {
		var extra, app float64
		for _, scraping := range [][]bool{{false, true}, {true, false}}[r%2] {
			done := make(chan struct{})
			if scraping {
				go scrapeEverySecond(monitor, done)
			}
			m0, a0 := cpuNanos(pid), ticks(pid)
			if err := exec.Command("wrk", "-t1", "-c32", "-d"+d.String(), "http://"+addr+"/").Run(); err != nil {
				log.Fatal(err)
			}
			m1, a1 := cpuNanos(pid), ticks(pid)
			close(done)
			if scraping {
				extra += float64(m1 - m0)
				app = float64(a1-a0) * 1e7 // ticks of 10 ms → ns
			} else {
				extra -= float64(m1 - m0)
			}
		}
		shares = append(shares, extra/app)
		fmt.Printf("  round %d: master +%.2f ms with scraping, application %.0f ms: %.3f %%\n", r+1, extra/1e6, app/1e6, 100*extra/app)
	}
	slices.Sort(shares)
	fmt.Printf("  median %.3f %% of the application's CPU (range %.3f – %.3f %%)\n", 100*shares[len(shares)/2], 100*shares[0], 100*shares[len(shares)-1])
}

// cpuNanos is the CPU time of every thread of pid, in nanoseconds.
func cpuNanos(pid int) int64 {
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	var sum int64
	for _, t := range tasks {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/schedstat", pid, t.Name()))
		if f := strings.Fields(string(b)); len(f) > 0 {
			n, _ := strconv.ParseInt(f[0], 10, 64)
			sum += n
		}
	}
	return sum
}

// app is the application: n workers, 100 counters and a histogram each,
// all touched by every request.
func app(n string) {
	workers, _ := strconv.Atoi(n)
	vec := promauto.NewCounterVec(prometheus.CounterOpts{Name: "bench_events_total", Help: "100 series."}, []string{"kind"})
	hist := promauto.NewHistogram(prometheus.HistogramOpts{Name: "bench_seconds", Help: "A histogram."})
	var kinds []prometheus.Counter
	for i := range 99 {
		kinds = append(kinds, vec.WithLabelValues("k"+strconv.Itoa(i)))
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		kinds[int(start.UnixNano())%len(kinds)].Inc()
		w.Write([]byte("hello\n"))
		hist.Observe(time.Since(start).Seconds())
	})
	err := flock.Serve(h, flock.Options{Addr: "127.0.0.1:0", MonitorAddr: "127.0.0.1:0", Workers: workers,
		Logger:     slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn + 1})),
		Extensions: []flock.Extension{metrics.New(metrics.Options{})}})
	if err != nil {
		log.Fatal(err)
	}
}

// start runs the application with n workers and returns its addresses once
// every worker is ready, and a stop function.
func start(n int) (addr, monitor string, stop func()) {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), envApp+"="+strconv.Itoa(n))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	var logs bytes.Buffer
	cmd.Stderr = &logs
	r, w, _ := os.Pipe()
	cmd.Stdout = w
	if err := cmd.Start(); err != nil {
		log.Fatal(err)
	}
	w.Close()
	stop = func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); cmd.Wait(); r.Close() }
	// The listening line is at INFO; find the addresses from the status
	// instead: the monitor's port is unknown, so read /proc.
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if m := listening(cmd.Process.Pid); len(m) >= 2 {
			for _, a := range m {
				st, err := status(a)
				if err == nil && ready(st) == n {
					monitor = a
					addr = st.Addr
					return addr, monitor, stop
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	stop()
	log.Fatalf("the application did not start: %s", logs.String())
	return
}

// listening are the TCP addresses the process listens on (from ss).
func listening(pid int) []string {
	out, _ := exec.Command("ss", "-Hltnp").Output()
	re := regexp.MustCompile(`(127\.0\.0\.1:\d+).*pid=` + strconv.Itoa(pid) + `,`)
	var addrs []string
	for _, m := range re.FindAllStringSubmatch(string(out), -1) {
		addrs = append(addrs, m[1])
	}
	return addrs
}

func status(monitor string) (flock.Status, error) {
	var st flock.Status
	resp, err := http.Get("http://" + monitor + "/")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

func ready(st flock.Status) int {
	n := 0
	for _, w := range st.Workers {
		if w.State == flock.WorkerReady {
			n++
		}
	}
	return n
}

// scrapeTime: 16 workers, every series reported, then 200 scrapes.
func scrapeTime() {
	addr, monitor, stop := start(16)
	defer stop()
	for range 200 { // every worker touches its series
		if resp, err := http.Get("http://" + addr + "/"); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}
	time.Sleep(2 * time.Second) // the reports of the last second
	var took []time.Duration
	var size int
	series := 0
	for range 200 {
		t0 := time.Now()
		resp, err := http.Get("http://" + monitor + "/metrics")
		if err != nil {
			log.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		took = append(took, time.Since(t0))
		size = len(b)
		series = strings.Count(string(b), "\nbench_events_total{")
	}
	slices.Sort(took)
	fmt.Printf("scrape of 16 workers × 100 application series (merged: %d bench_events_total series, %d bytes):\n", series, size)
	fmt.Printf("  median %v, p90 %v, max %v over %d scrapes\n", took[len(took)/2].Round(10*time.Microsecond),
		took[len(took)*9/10].Round(10*time.Microsecond), took[len(took)-1].Round(10*time.Microsecond), len(took))
}

// throughput: wrk against 2 workers, with and without a scraper every
// second, alternating.
func throughput(rounds int, d time.Duration) {
	addr, monitor, stop := start(2)
	defer stop()
	wrk := func() float64 {
		out, err := exec.Command("wrk", "-t1", "-c32", "-d"+d.String(), "http://"+addr+"/").Output()
		if err != nil {
			log.Fatal(err)
		}
		m := regexp.MustCompile(`Requests/sec:\s+([\d.]+)`).FindStringSubmatch(string(out))
		v, _ := strconv.ParseFloat(m[1], 64)
		return v
	}
	var ratios []float64
	fmt.Printf("throughput, 2 workers, wrk -t1 -c32 -d%v, with a scrape every second / without:\n", d)
	for r := range rounds {
		var with, without float64
		for _, scraping := range [][]bool{{false, true}, {true, false}}[r%2] {
			done := make(chan struct{})
			if scraping {
				go scrapeEverySecond(monitor, done)
			}
			v := wrk()
			close(done)
			if scraping {
				with = v
			} else {
				without = v
			}
		}
		ratios = append(ratios, with/without)
		fmt.Printf("  round %d: with %.0f req/s, without %.0f req/s, ratio %.3f\n", r+1, with, without, with/without)
	}
	slices.Sort(ratios)
	fmt.Printf("  median ratio %.3f (range %.3f – %.3f)\n", ratios[len(ratios)/2], ratios[0], ratios[len(ratios)-1])
}

func runtimeCPUs() int {
	b, _ := os.ReadFile("/proc/cpuinfo")
	return strings.Count(string(b), "\nprocessor") + 1
}

func goVersion() string {
	out, _ := exec.Command("go", "version").Output()
	return strings.TrimSpace(string(out))
}

// cpuPerRequest: at a fixed offered rate (bench/echoload -proto http,
// keep-alive), the CPU time of every process of the application (master
// and workers, utime+stime from /proc) per request, with a scrape every
// second and without, in alternating rounds. Steadier than throughput on
// this VM.
func cpuPerRequest(rounds int, d time.Duration) {
	load := filepath.Join(os.TempDir(), "flock-bench-echoload")
	if out, err := exec.Command("go", "build", "-o", load, "./bench/echoload").CombinedOutput(); err != nil {
		log.Fatalf("go build ./bench/echoload: %v: %s", err, out)
	}
	defer os.Remove(load)
	addr, monitor, stop := start(2)
	defer stop()
	pid := masterPID(monitor)
	const rate = 15000
	run := func(scraping bool) float64 {
		done := make(chan struct{})
		if scraping {
			go scrapeEverySecond(monitor, done)
		}
		t0 := ticks(pid)
		out, err := exec.Command(load, "-proto", "http", "-mode", "keepalive", "-addr", addr, "-c", "32", "-d", d.String(), "-rate", strconv.Itoa(rate)).Output()
		t1 := ticks(pid)
		close(done)
		if err != nil {
			log.Fatal(err)
		}
		f := strings.Fields(string(out)) // "messages N failed F …"
		n, _ := strconv.ParseFloat(f[1], 64)
		return float64(t1-t0) * 1e4 / n // ticks of 1/100 s → µs per request
	}
	var ratios []float64
	fmt.Printf("CPU per request, 2 workers, %d req/s offered (keep-alive), %v per side, with a scrape every second / without:\n", rate, d)
	for r := range rounds {
		var with, without float64
		for _, scraping := range [][]bool{{false, true}, {true, false}}[r%2] {
			if v := run(scraping); scraping {
				with = v
			} else {
				without = v
			}
		}
		ratios = append(ratios, with/without)
		fmt.Printf("  round %d: with %.2f µs, without %.2f µs, ratio %.3f\n", r+1, with, without, with/without)
	}
	slices.Sort(ratios)
	fmt.Printf("  median ratio %.3f (range %.3f – %.3f)\n", ratios[len(ratios)/2], ratios[0], ratios[len(ratios)-1])
}

func scrapeEverySecond(monitor string, done <-chan struct{}) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
			if resp, err := http.Get("http://" + monitor + "/metrics"); err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}
	}
}

func masterPID(monitor string) int {
	st, err := status(monitor)
	if err != nil {
		log.Fatal(err)
	}
	return st.PID
}

// ticks is utime+stime of pid and all its descendants, in clock ticks.
func ticks(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	u, _ := strconv.ParseInt(f[11], 10, 64)
	k, _ := strconv.ParseInt(f[12], 10, 64)
	sum := u + k
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	for _, t := range tasks {
		c, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, t.Name()))
		for _, child := range strings.Fields(string(c)) {
			n, _ := strconv.Atoi(child)
			sum += ticks(n)
		}
	}
	return sum
}
