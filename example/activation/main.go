// Command activation is a Go server that knows nothing of flock: it takes
// its listeners by systemd's socket activation (go-systemd's activation
// package) and says when it is ready, what it is doing and that it is
// alive by sd_notify (go-systemd's daemon package), so it runs unchanged
// under systemd or under the flock command:
//
//	go build -o /tmp/activation . && go run github.com/flockhq/flock/cmd/flock \
//		-addr :8080 -workers 2 -ready notify -watchdog -- /tmp/activation
//
// "/" says hello; "/?sleep=MS" sends its headers and "Hello" at once and
// the rest MS milliseconds later. TERM drains: it stops accepting and
// finishes what is in flight, without net/http's Shutdown alone, which
// drops a request that arrives on an accepted connection as it begins.
package main

import (
	"context"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"
)

func main() {
	// Before saying READY=1: a stop may come right after it (a roll
	// replacing a worker that has just started), and TERM's default action
	// would end the process with connections accepted and unanswered.
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM)
	lns, err := activation.Listeners()
	if err != nil || len(lns) == 0 {
		log.Fatalf("activation: no sockets were passed (LISTEN_FDS): run it under flock or systemd-socket-activate (%v)", err)
	}
	var open atomic.Int64 // connections, for the drain
	srv := &http.Server{Handler: handler(), ReadHeaderTimeout: 10 * time.Second, ConnState: func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			open.Add(1)
		case http.StateClosed, http.StateHijacked:
			open.Add(-1)
		}
	}}
	var serving sync.WaitGroup
	for _, ln := range lns {
		serving.Go(func() { srv.Serve(ln) })
	}
	daemon.SdNotify(false, daemon.SdNotifyReady+"\nSTATUS=serving "+strconv.Itoa(len(lns))+" listener(s)")
	if every, err := daemon.SdWatchdogEnabled(false); err == nil && every > 0 {
		go func() {
			for range time.Tick(every / 2) {
				daemon.SdNotify(false, daemon.SdNotifyWatchdog)
			}
		}()
	}
	<-stop
	daemon.SdNotify(false, daemon.SdNotifyStopping)
	// Close the listeners and wait for every Serve to return before
	// Shutdown: a connection Serve has accepted but not yet tracked would
	// otherwise be missed by Shutdown, and closed unanswered at exit.
	for _, ln := range lns {
		ln.Close()
	}
	serving.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Shutdown alone would drop a request it reads after it began
	// (net/http's conn.serve checks for that after reading), so drain
	// first: keep-alives off, which closes idle connections and ends the
	// others after their request, then wait until none is left. Again and
	// again: a connection silent for 5 s only counts as idle from then on.
	for srv.SetKeepAlivesEnabled(false); open.Load() > 0 && ctx.Err() == nil; srv.SetKeepAlivesEnabled(false) {
		time.Sleep(10 * time.Millisecond)
	}
	if err := srv.Shutdown(ctx); err != nil {
		log.Fatalf("activation: %v", err)
	}
}

func handler() http.Handler {
	pid := strconv.Itoa(os.Getpid())
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Worker-Pid", pid)
		rest := fmt.Sprintf("from worker %s\n", pid)
		ms, _ := strconv.Atoi(r.URL.Query().Get("sleep"))
		if ms <= 0 {
			fmt.Fprint(w, "Hello "+rest)
			return
		}
		fmt.Fprint(w, "Hello ")
		w.(http.Flusher).Flush()
		select {
		case <-time.After(time.Duration(ms) * time.Millisecond):
			fmt.Fprint(w, rest)
		case <-r.Context().Done():
		}
	})
}
