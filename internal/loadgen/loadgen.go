// Package loadgen is the bounded HTTP load driver of the tests and of
// bench/lifecycle: concurrent clients sending GET requests to one URL,
// every failed request counted.
package loadgen

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Result counts what a run saw.
type Result struct {
	OK, Failed atomic.Int64
	mu         sync.Mutex
	firstErrs  []string
}

func (r *Result) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return fmt.Sprintf("%d ok, %d failed %v", r.OK.Load(), r.Failed.Load(), r.firstErrs)
}

// Completed is the number of requests that have completed so far,
// answered or failed. It may be read while the run goes on.
func (r *Result) Completed() int64 { return r.OK.Load() + r.Failed.Load() }

// Run has clients goroutines send GET requests to url until ctx ends or
// maxRequests have been sent, and counts them; a request fails on any
// transport error or a status other than 200. keepAlive chooses between
// reusing connections and opening a new one per request. Requests under
// way when ctx ends complete and are counted.
func Run(ctx context.Context, url string, clients, maxRequests int, keepAlive bool) *Result {
	res, done := StartWith(ctx, url, nil, clients, maxRequests, keepAlive)
	<-done
	return res
}

// Start does what Run does in the background, so that a caller can watch
// the counts grow (a test waits for traffic rather than for time to pass):
// it returns the Result at once, and a channel closed when the run is over
// and the Result final.
func Start(ctx context.Context, url string, clients, maxRequests int, keepAlive bool) (*Result, <-chan struct{}) {
	return StartWith(ctx, url, nil, clients, maxRequests, keepAlive)
}

// StartWith is Start with header added to every request.
func StartWith(ctx context.Context, url string, header http.Header, clients, maxRequests int, keepAlive bool) (*Result, <-chan struct{}) {
	res := &Result{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		res.run(ctx, url, header, clients, maxRequests, keepAlive)
	}()
	return res, done
}

func (r *Result) run(ctx context.Context, url string, header http.Header, clients, maxRequests int, keepAlive bool) {
	tr := &http.Transport{DisableKeepAlives: !keepAlive, MaxIdleConnsPerHost: clients}
	defer tr.CloseIdleConnections()
	c := &http.Client{Timeout: 10 * time.Second, Transport: tr}
	var sent atomic.Int64
	var wg sync.WaitGroup
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil && sent.Add(1) <= int64(maxRequests) {
				req, err := http.NewRequest(http.MethodGet, url, nil)
				if err != nil {
					panic(err) // a bad url: the caller's bug
				}
				for k, vs := range header {
					req.Header[k] = vs
				}
				resp, err := c.Do(req)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if err == nil && resp.StatusCode != http.StatusOK {
						err = fmt.Errorf("status %d", resp.StatusCode)
					}
				}
				if err != nil {
					r.Failed.Add(1)
					r.mu.Lock()
					if len(r.firstErrs) < 5 {
						r.firstErrs = append(r.firstErrs, err.Error())
					}
					r.mu.Unlock()
					continue
				}
				r.OK.Add(1)
			}
		}()
	}
	wg.Wait()
}
