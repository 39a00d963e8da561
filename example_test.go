package flock_test

import (
	"context"
	"database/sql"
	"fmt"
	"log"
	"log/slog"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	"github.com/flockhq/flock"
	"github.com/flockhq/flock/command"
)

// The whole program: the same main runs as the master and, re-executed, as
// every worker.
func Example() {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "hello")
	})
	if err := flock.Serve(h, flock.Options{}); err != nil {
		log.Fatal(err)
	}
}

// Options for a production service behind a load balancer: drain slowly on
// TERM so the balancer sees the ECV turn DISABLED first, recycle workers
// that grow, and open the database pool only in workers.
func Example_production() {
	var db *sql.DB
	var failures atomic.Int64 // read it from your metrics
	o := flock.Options{
		Addr:            ":8080",
		Workers:         8,
		DrainDelay:      5 * time.Second,
		ShutdownTimeout: 20 * time.Second,
		MaxMemory:       512 << 20,
		MaxRequests:     100_000,
		PIDFile:         "/run/myapp.pid",
		Logger:          slog.New(slog.NewJSONHandler(os.Stderr, nil)),
		Init: func() (err error) {
			db, err = sql.Open("postgres", os.Getenv("DATABASE_URL"))
			if err == nil {
				err = db.Ping()
			}
			return err
		},
		OnEvent: func(e flock.Event) {
			if e.Kind == flock.EventExited && e.Exit.Failed() {
				failures.Add(1) // a crash, a hang or a boot timeout
			}
		},
	}
	if err := flock.Serve(http.DefaultServeMux, o); err != nil {
		log.Fatal(err)
	}
}

// The command surface, with a command of the application's own and the
// built-in exit disabled.
func Example_commands() {
	cmds := command.New(command.Options{
		Commands: []command.Command{
			{Name: "flush-cache", Help: "drop every worker's cache", Level: command.Local,
				Run: func(ctx context.Context, c *flock.Controller, args []any) (any, error) {
					n, err := c.Restart(flock.RestartOptions{})
					return fmt.Sprintf("%d workers restarted with empty caches", n), err
				}},
			{Name: "exit"}, // no Run: disabled
		},
	})
	o := flock.Options{AccessKey: os.Getenv("FLOCK_ACCESS_KEY"), Extensions: []flock.Extension{cmds}}
	if err := flock.Serve(http.DefaultServeMux, o); err != nil {
		log.Fatal(err)
	}
}

// Any server, on several listeners: the application's own *http.Server on
// Addr, and a server of another kind (here a second HTTP server standing
// in for gRPC, which would be flock.GracefulStopper(grpcServer)) on a
// listener of its own.
func ExampleRun() {
	api := &http.Server{Handler: http.DefaultServeMux, ReadTimeout: 5 * time.Second}
	admin := &http.Server{Handler: http.NotFoundHandler()}
	o := flock.Options{Addr: ":8080", Listeners: []flock.Listener{{Name: "admin", Addr: "127.0.0.1:8081"}}}
	err := flock.Run(o, func(w *flock.Worker) error {
		if err := w.Serve(flock.MainListener, api); err != nil {
			return err
		}
		return w.Serve("admin", admin)
	})
	if err != nil {
		log.Fatal(err)
	}
}

// Code before Serve runs in every process; IsWorker tells which one this
// is. (This example runs in the test process, which is neither.)
func ExampleIsWorker() {
	fmt.Println(flock.IsWorker(), flock.WorkerSlot())
	// Output: false -1
}
