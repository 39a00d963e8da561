package flock

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"slices"
)

// Listener is one more address the service listens on, beside Addr
// (Options.Listeners). Every worker slot holds one socket per listener, so
// everything flock does for Addr (replacements on the same socket, spares,
// USR2 handing sockets down) it does for each.
type Listener struct {
	// Name is how a worker finds it (Worker.Serve). Addr's listener is
	// named "main".
	Name string `json:"name"`
	// Addr is "host:port"; port 0 picks one free port once, shared by every
	// worker.
	Addr string `json:"addr"`
}

// MainListener is the name of the listener on Options.Addr.
const MainListener = "main"

// Worker is what Run's setup gets in each worker process: the listeners,
// by name, to give servers to.
type Worker struct {
	names   []string
	servers []Server
}

// Serve has s serve the listener called name (MainListener for Addr). One
// Server may serve several listeners.
func (w *Worker) Serve(name string, s Server) error {
	i := slices.Index(w.names, name)
	switch {
	case i < 0:
		return fmt.Errorf("flock: no listener %q (the listeners are %q)", name, w.names)
	case w.servers[i] != nil:
		return fmt.Errorf("flock: listener %q already has a server", name)
	case s == nil:
		return fmt.Errorf("flock: listener %q: nil Server", name)
	}
	w.servers[i] = s
	return nil
}

// Listeners are the names of the listeners, MainListener first.
func (w *Worker) Listeners() []string { return slices.Clone(w.names) }

// Slot is the worker's slot number (WorkerSlot).
func (w *Worker) Slot() int { return WorkerSlot() }

// missing is the first listener without a server, or "".
func (w *Worker) missing() string {
	if i := slices.Index(w.servers, nil); i >= 0 {
		return w.names[i]
	}
	return ""
}

// ErrNoServer is in the error of a worker whose setup left a listener
// without a server.
var ErrNoServer = errors.New("no server for the listener")

// Run is Serve for any server: in each worker (or the single process), it
// calls setup, which gives each listener its Server with Worker.Serve:
// *http.Server, a gRPC server through GracefulStopper, a raw TCP server.
// setup runs after Options.Init and before the worker accepts anything;
// an error from it fails the worker's start like Init's. In the master,
// Run binds every listener and supervises the workers as Serve does, and
// never calls setup.
//
//	flock.Run(flock.Options{Addr: ":8080", Listeners: []flock.Listener{{Name: "grpc", Addr: ":9090"}}},
//		func(w *flock.Worker) error {
//			w.Serve(flock.MainListener, &http.Server{Handler: mux})
//			return w.Serve("grpc", flock.GracefulStopper(grpcServer))
//		})
func Run(o Options, setup func(*Worker) error) error {
	return start(o, func(*config) func(*Worker) error { return setup })
}

// start is Serve and Run: the master, a worker, or the single process.
// setupFor makes the worker's setup once the options are resolved.
func start(o Options, setupFor func(*config) func(*Worker) error) error {
	if runtime.GOOS != "linux" {
		return fmt.Errorf("flock: %s is not supported (flock needs Linux: SO_REUSEPORT balancing, /proc/self/exe, PR_SET_PDEATHSIG)", runtime.GOOS)
	}
	c, err := o.resolve(os.Getenv)
	if err == nil {
		err = c.resolveGroups(nil)
	}
	if err != nil {
		return err
	}
	switch {
	case IsWorker():
		return runWorker(setupFor(c), c)
	case c.Single:
		return runSingle(setupFor(c), c)
	}
	return runMaster(c)
}

// handlerSetup is Serve's setup: h, with flock's timeouts and TLS, on
// every listener.
func handlerSetup(h http.Handler) func(*config) func(*Worker) error {
	return func(c *config) func(*Worker) error {
		return func(w *Worker) error {
			srv, err := httpServer(h, c, c.Logger)
			if err != nil {
				return err
			}
			for _, name := range w.names {
				w.Serve(name, srv)
			}
			return nil
		}
	}
}
