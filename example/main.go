// Command example is the flock demo: a hello-world service on the defaults
// (port 5000, one worker per CPU). Every flock option is a flag.
//
//	go run ./example -workers 2
//	kill -TTIN <master pid>   # one more worker
//	curl -i localhost:5000/sleep?d=5s & kill -TERM <master pid>   # graceful
//	curl localhost:5001/ecv                  # what a load balancer sees
//	go run ./example -access-key s3cret &   then   go run ./cmd/flockctl -key s3cret workers
//
// Exit status: 0 after a graceful shutdown, 130 after SIGINT, 1 when it
// could not start (bad flag, busy port) or every worker kept crashing.
package main

import (
	"flag"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/flockhq/flock"
	"github.com/flockhq/flock/internal/cli"
)

func main() {
	var f cli.Flags
	f.Register(flag.CommandLine, true)
	flag.Parse()
	f.Setup("example")
	cli.Exit(flock.Serve(handler(), f.Options))
}

func handler() http.Handler {
	pid := strconv.Itoa(os.Getpid())
	hello := func(w http.ResponseWriter) {
		w.Header().Set("X-Worker-Pid", pid)
		fmt.Fprintf(w, "Hello from worker %s\n", pid)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { hello(w) })
	mux.HandleFunc("/sleep", func(w http.ResponseWriter, r *http.Request) {
		d, err := time.ParseDuration(r.URL.Query().Get("d"))
		if err != nil {
			http.Error(w, "d: "+err.Error(), http.StatusBadRequest)
			return
		}
		select {
		case <-time.After(d):
		case <-r.Context().Done():
			return
		}
		hello(w)
	})
	return mux
}
