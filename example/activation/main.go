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
// finishes what is in flight.
package main

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"
)

func main() {
	lns, err := activation.Listeners()
	if err != nil || len(lns) == 0 {
		log.Fatalf("activation: no sockets were passed (LISTEN_FDS): run it under flock or systemd-socket-activate (%v)", err)
	}
	srv := &http.Server{Handler: handler(), ReadHeaderTimeout: 10 * time.Second}
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
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM)
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
