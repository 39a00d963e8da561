// Command grpc is a gRPC service under flock: the standard health service
// (grpc.health.v1) on the main listener, served by every worker, with zero
// failed calls across HUP, TTOU, recycling and USR2 (see main_test.go). An
// HTTP port beside it (-http) shows several listeners with different
// servers in the same workers.
//
//	cd example/grpc && go run . -workers 2 -http :9091 &
//	grpcurl -plaintext localhost:9090 grpc.health.v1.Health/Check   # {"status": "SERVING"}
//	curl localhost:9091/                                            # ok
//	kill -HUP <master pid>
//
// It is a module of its own so that google.golang.org/grpc stays out of
// flock's requirements.
package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"

	"github.com/flockhq/flock"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func main() {
	var o flock.Options
	flag.StringVar(&o.Addr, "addr", ":9090", "gRPC listen address")
	httpAddr := flag.String("http", "", "also serve HTTP here (a second listener)")
	flag.IntVar(&o.Workers, "workers", 0, "worker processes (default $WEB_CONCURRENCY, else the number of CPUs)")
	flag.DurationVar(&o.ShutdownTimeout, "shutdown-timeout", 0, "graceful stop bound (default 30s)")
	flag.DurationVar(&o.MaxUptime, "max-uptime", 0, "recycle a worker after this long (0: never)")
	flag.StringVar(&o.MonitorAddr, "monitor", "", `ECV monitor address (default: port + 1; "off" turns it off)`)
	jsonLogs := flag.Bool("log-json", false, "logs as JSON lines")
	flag.Parse()
	if *jsonLogs {
		o.Logger = slog.New(slog.NewJSONHandler(os.Stderr, nil))
	}
	if *httpAddr != "" {
		o.Listeners = []flock.Listener{{Name: "http", Addr: *httpAddr}}
	}
	err := flock.Run(o, func(w *flock.Worker) error {
		s := grpc.NewServer()
		hs := health.NewServer() // answers SERVING for "" until told otherwise
		healthpb.RegisterHealthServer(s, hs)
		if *httpAddr != "" {
			mux := http.NewServeMux()
			mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
			if err := w.Serve("http", &http.Server{Handler: mux}); err != nil {
				return err
			}
		}
		return w.Serve(flock.MainListener, flock.GracefulStopper(s))
	})
	switch {
	case err == nil:
	case errors.Is(err, flock.ErrInterrupted):
		os.Exit(130)
	default:
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
