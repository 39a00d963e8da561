// Command backend is the version program of bench/proxy/run.sh: a minimal
// HTTP server, standard library only, run by `flock -proxy` as version v1's
// workers. It serves the sockets it is handed by socket activation (fd 3
// onwards, LISTEN_FDS; every one, as flock asks) and answers every request
// with "hello\n". TERM (flock's stop) drains it with http.Server.Shutdown.
//
// The benchmark loads it both directly, on the version's port, and through
// the proxy workers, so that the difference is the proxy hop alone.
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"
)

var body = []byte("hello\n")

func main() {
	n, err := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	if err != nil || n < 1 {
		log.Fatalf("backend: LISTEN_FDS=%q: want the sockets of socket activation, from fd 3", os.Getenv("LISTEN_FDS"))
	}
	if pid := os.Getenv("LISTEN_PID"); pid != "" && pid != strconv.Itoa(os.Getpid()) {
		log.Fatalf("backend: LISTEN_PID=%s is not this process (%d)", pid, os.Getpid())
	}
	var lns []net.Listener
	for fd := 3; fd < 3+n; fd++ {
		ln, err := net.FileListener(os.NewFile(uintptr(fd), "listen-fd-"+strconv.Itoa(fd)))
		if err != nil {
			log.Fatalf("backend: fd %d: %v", fd, err)
		}
		lns = append(lns, ln)
	}

	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			h := w.Header()
			h.Set("Content-Type", "text/plain; charset=utf-8")
			h.Set("Content-Length", strconv.Itoa(len(body)))
			w.Write(body)
		}),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}

	var wg sync.WaitGroup
	for _, ln := range lns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Fatalf("backend: %v", err)
			}
		}()
	}

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "backend %d: shutdown: %v\n", os.Getpid(), err)
		srv.Close()
	}
	wg.Wait()
}
