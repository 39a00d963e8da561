// Command plain is the baseline for bench/run.sh: the example's "/" route
// served by one ordinary net/http process, no flock.
package main

import (
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"strconv"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:5100", "listen address")
	flag.Parse()
	pid := strconv.Itoa(os.Getpid())
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Worker-Pid", pid)
		fmt.Fprintf(w, "Hello from worker %s\n", pid)
	})
	log.Fatal(http.ListenAndServe(*addr, nil))
}
