package proxy

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flockhq/flock"
)

// router is a proxy worker: it routes each request to its version's
// port, by the table the master publishes.
type router struct {
	cfg    *Config
	link   *http.Client
	master int
	log    *slog.Logger
	table  atomic.Pointer[table]
	rp     *httputil.ReverseProxy

	mu  sync.Mutex
	use map[string]*usage

	lastErr atomic.Int64 // unix nanoseconds of the last error logged: one a second
}

type usage struct{ requests, active atomic.Int64 }

type targetKey struct{}

type target struct{ version, addr string }

func newRouter(cfg *Config) *router {
	master := os.Getppid()
	rt := &router{cfg: cfg, master: master, use: map[string]*usage{}, log: slog.Default()}
	rt.link = &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, "unix", linkAddr(master))
			if err == nil && peerPID(c) != master { // an abstract name anyone could have taken
				c.Close()
				return nil, fmt.Errorf("%s is not the master's (pid %d)", linkAddr(master), master)
			}
			return c, err
		},
	}}
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConns:        4096,
		MaxIdleConnsPerHost: 1024,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	rt.rp = &httputil.ReverseProxy{
		Transport:  tr,
		BufferPool: &bufferPool{},
		Rewrite: func(r *httputil.ProxyRequest) {
			t := r.In.Context().Value(targetKey{}).(target)
			r.Out.URL.Scheme, r.Out.URL.Host = "http", t.addr
			r.Out.Host = r.In.Host
			r.SetXForwarded()
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			t := r.Context().Value(targetKey{}).(target)
			if errors.Is(err, context.Canceled) {
				return // the client went away
			}
			rt.warn("flock proxy: the version did not answer", "version", t.version, "addr", t.addr, "err", err)
			http.Error(w, fmt.Sprintf("flock proxy: version %s (%s): %v", t.version, t.addr, err), http.StatusBadGateway)
		},
	}
	return rt
}

// bufferPool reuses the buffers ReverseProxy copies bodies with: without
// it each response allocates 32 KiB, and the allocation and the GC it
// brings were a fifth of a proxy worker's CPU in a profile under load.
type bufferPool struct{ p sync.Pool }

func (b *bufferPool) Get() []byte {
	if buf, ok := b.p.Get().(*[]byte); ok {
		return *buf
	}
	return make([]byte, 32<<10)
}

func (b *bufferPool) Put(buf []byte) { b.p.Put(&buf) }

// warn logs at most one line a second: errors come in bursts.
func (rt *router) warn(msg string, args ...any) {
	now, last := time.Now().UnixNano(), rt.lastErr.Load()
	if now-last >= int64(time.Second) && rt.lastErr.CompareAndSwap(last, now) {
		rt.log.Warn(msg, args...)
	}
}

func (rt *router) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	name := r.Header.Get(rt.cfg.VersionHeader)
	t := rt.table.Load()
	if name == "" {
		if name = t.Default; name == "" {
			http.Error(w, fmt.Sprintf("flock proxy: no live version (no defaultVersion: promote one), and the request names none in %s", rt.cfg.VersionHeader), http.StatusNotFound)
			return
		}
	}
	addr, ok := t.Versions[name]
	if !ok {
		var code int
		var err error
		if addr, code, err = rt.want(r.Context(), name); err != nil {
			if code != 0 {
				http.Error(w, "flock proxy: "+err.Error(), code)
			}
			return
		}
	}
	u := rt.usage(name)
	u.requests.Add(1)
	u.active.Add(1)
	defer u.active.Add(-1)
	rt.rp.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), targetKey{}, target{name, addr})))
}

func (rt *router) usage(name string) *usage {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	u := rt.use[name]
	if u == nil {
		u = &usage{}
		rt.use[name] = u
	}
	return u
}

// report is the usage sent to the master (flock.Report).
func (rt *router) report() []byte {
	rt.mu.Lock()
	out := make(map[string]counts, len(rt.use))
	for name, u := range rt.use {
		out[name] = counts{Requests: uint64(u.requests.Load()), Active: u.active.Load()}
	}
	rt.mu.Unlock()
	b, _ := json.Marshal(out)
	return b
}

// want asks the master for version name, started if need be, and waits
// for its address. code is the answer to give on error (0: the client has
// gone).
func (rt *router) want(ctx context.Context, name string) (addr string, code int, err error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://master/want?version="+url.QueryEscape(name), nil)
	resp, err := rt.link.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return "", 0, ctx.Err()
		}
		return "", http.StatusServiceUnavailable, fmt.Errorf("version %s: the master does not answer: %v", name, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return "", resp.StatusCode, errors.New(string(body))
	}
	var got struct{ Addr string }
	if err := json.Unmarshal(body, &got); err != nil || got.Addr == "" {
		return "", http.StatusBadGateway, fmt.Errorf("version %s: a bad answer from the master: %q", name, body)
	}
	return got.Addr, 0, nil
}

// poll fetches the table newer than after, or the same after a while.
func (rt *router) poll(ctx context.Context, after uint64) (*table, error) {
	q := "http://master/table?after=" + strconv.FormatUint(after, 10)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, q, nil)
	resp, err := rt.link.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("table: %s", resp.Status)
	}
	var t table
	if err := json.NewDecoder(resp.Body).Decode(&t); err != nil {
		return nil, err
	}
	return &t, nil
}

// follow keeps the table up to date, until ctx ends. A failing link is
// retried with back-off: the worker keeps routing by the table it has.
func (rt *router) follow(ctx context.Context) {
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		t, err := rt.poll(ctx, rt.table.Load().Seq)
		if err == nil {
			rt.table.Store(t)
			backoff = 50 * time.Millisecond
			continue
		}
		if ctx.Err() != nil {
			return
		}
		rt.warn("flock proxy: cannot reach the master for the routes; retrying", "err", err, "in", backoff)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// setup is the proxy worker's flock.Run setup: the first table, then
// every binding served.
func (rt *router) setup(w *flock.Worker) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t, err := rt.poll(ctx, 0)
	cancel()
	if err != nil {
		return fmt.Errorf("proxy: the routes from the master: %w", err)
	}
	rt.table.Store(t)
	go rt.follow(context.Background()) // the worker's life: it exits with the process
	flock.Report(reportTopic, rt.report)
	for i, b := range rt.cfg.Bindings {
		srv := &http.Server{Handler: rt, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
		if b.TLSOptions != nil {
			cert, err := b.TLSOptions.load() // checked by Load: changed on disk since
			if err != nil {
				return fmt.Errorf("proxy: bindings[%d]: %w", i, err)
			}
			srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
		}
		if err := w.Serve(listenerName(i), srv); err != nil {
			return err
		}
	}
	return nil
}

func (t *TLSOptions) load() (tls.Certificate, error) {
	if t.Pem != "" {
		return tls.LoadX509KeyPair(t.Pem, t.Pem)
	}
	return tls.LoadX509KeyPair(t.Cert, t.Key)
}

// listenerName names binding i's listener: the first is flock's main one.
func listenerName(i int) string {
	if i == 0 {
		return flock.MainListener
	}
	return "binding" + strconv.Itoa(i)
}
