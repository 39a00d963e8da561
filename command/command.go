// Package command adds a command surface to a flock master, compatible
// with node-cluster-service: a REST endpoint and the flockctl CLI, behind an
// access key.
//
//	flock.Serve(h, flock.Options{
//		AccessKey:  os.Getenv("FLOCK_ACCESS_KEY"),
//		Extensions: []flock.Extension{command.New(command.Options{})},
//	})
//
// then, on the same machine:
//
//	flockctl -key "$FLOCK_ACCESS_KEY" restart all
//
// # Endpoint
//
// The master binds Options.Addr (default localhost:11987) only when an
// access key is set, and answers POST /cli?cmd=<command line>&accessKey=<key>
// (the key may also come as "Authorization: Bearer <key>"; keys are compared
// in constant time and never logged):
//
//	200  the command's result as JSON (Content-Type: text/json; charset=UTF-8)
//	400  the command failed or its arguments are wrong: the message, with usage
//	     (errors are the bare message: no trailing newline, no Content-Type)
//	401  "Not authorized" (bad or missing key), or
//	     "Not authorized to execute '<cmd>' remotely" (access level too low)
//	404  "Page Not Found" (another path); "Not found. Try /help" (unknown command)
//	405  "Method Not Allowed" (not POST, unless Options.AllowGET)
//
// # Compatibility
//
// help, health, version, info and workers answer in node-cluster-service
// 2.1.4's shapes, with flock's fields beside its own, so that its cservice
// CLI and the scripts written for it work unchanged (info →
// .workers.active, workers → .workers[].pid); the package's tests drive
// the real cservice.
//
// # Levels
//
// A caller on loopback (127.0.0.0/8, ::1, v4-mapped) is Local, any other
// Remote; the console is Inproc. A command runs only for callers at or
// above its level: shutdown and exit need Local, the others Remote.
//
// # Long commands
//
// restart and upgrade answer when they are done: the server sets no write
// timeout and flockctl waits up to its -timeout (default 10 minutes), so
// restarting many workers does not hit an HTTP timeout (node-cluster-service
// #71). `workers` shows the progress meanwhile, from another flockctl.
package command

import (
	"bufio"
	"cmp"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/flockhq/flock"
	"golang.org/x/sys/unix"
)

// Level is who may run a command.
type Level int

// Access levels, lowest first.
const (
	Remote Level = iota // any caller with the access key
	Local               // callers on this machine (loopback)
	Inproc              // the master's own console
)

func (l Level) String() string {
	return [...]string{"remote", "local", "inproc"}[l]
}

// Command is one command of the surface.
type Command struct {
	Name  string
	Usage string // the arguments, as in "all|pid [{\"timeout\":ms}]"
	Help  string
	Args  []Arg // what `help <name>` says of each argument, in order
	Level Level
	// Run executes the command with the parsed arguments that follow its
	// name: strings, float64 numbers, and decoded JSON objects and arrays.
	// Its result is answered as JSON; an error is a 400 with its message.
	// A nil Run disables the command (see Options.Commands).
	Run func(ctx context.Context, c *flock.Controller, args []any) (any, error)
}

// Arg documents one argument of a command, as node-cluster-service's
// `help <command>` does: Name as it is typed, Help what it means.
type Arg struct {
	Name, Help string
}

// Options configure the surface. The zero value serves the built-in
// commands on localhost:11987 with flock.Options.AccessKey.
type Options struct {
	// Addr is where the endpoint listens. Default "localhost:11987".
	Addr string
	// AccessKey overrides flock.Options.AccessKey. Without a key the
	// endpoint is not bound (the console still works).
	AccessKey string
	// AllowGET accepts GET as well as POST.
	AllowGET bool
	// Commands are added to the built-in ones; one with a built-in's name
	// replaces it, and one with a nil Run disables it.
	Commands []Command
	// Levels overrides the level of commands by name.
	Levels map[string]Level
	// Console reads command lines from standard input, when it is a
	// terminal, and prints the results (node-cluster-service's cli option).
	Console bool
	// Version is the application's version, reported by `version`.
	Version string
	// OnWorker, when set, hears workerStart and workerExit, in order, on
	// the goroutine that delivers the master's events: it may call the
	// Controller, and should return quickly.
	OnWorker func(WorkerEvent)
}

// WorkerEvent is node-cluster-service's workerStart / workerExit.
type WorkerEvent struct {
	Kind   string // "workerStart" or "workerExit"
	PID    int
	Reason string // start, restart, failure, upgrade, recycle, scale, shutdown
	Time   time.Time
}

const (
	defaultAddr    = "localhost:11987"
	maxCommandLine = 16 << 10
	maxBody        = 64 << 10
)

// New returns the command surface as a flock extension.
func New(o Options) flock.Extension {
	s := &surface{o: o, cmds: map[string]*Command{}}
	for _, c := range builtins(s) {
		s.cmds[c.Name] = &c
	}
	for _, c := range o.Commands {
		if c.Run == nil {
			delete(s.cmds, c.Name)
			continue
		}
		s.cmds[c.Name] = &c
	}
	for name, l := range o.Levels {
		if c := s.cmds[name]; c != nil {
			c.Level = l
		}
	}
	return s
}

type surface struct {
	o      Options
	cmds   map[string]*Command
	ctl    *flock.Controller
	log    *slog.Logger
	key    string
	srv    *http.Server
	closed sync.Once
}

func (s *surface) Start(c *flock.Controller) error {
	s.ctl, s.log = c, c.Logger()
	s.key = cmp.Or(s.o.AccessKey, c.AccessKey())
	if s.o.Console && isTerminal(os.Stdin) {
		go s.console()
	}
	if s.key == "" {
		s.log.Info("command: no access key, so no command endpoint")
		return nil
	}
	addr := cmp.Or(s.o.Addr, defaultAddr)
	ln, err := c.Listen("command", addr)
	if err != nil {
		return fmt.Errorf("command endpoint: %w", err)
	}
	// No WriteTimeout: restarting many workers can take minutes, and the
	// answer comes when it is done.
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute, ErrorLog: c.ServerErrorLog()}
	go s.srv.Serve(ln)
	s.log.Info("command: endpoint listening", "addr", ln.Addr().String())
	return nil
}

func (s *surface) Stop() {
	s.closed.Do(func() {
		if s.srv != nil {
			s.srv.Close()
		}
	})
}

// Event turns flock's events into workerStart / workerExit, and stops the
// endpoint once a new master has taken over (it serves the same socket).
func (s *surface) Event(e flock.Event) {
	switch e.Kind {
	case flock.EventUpgrade:
		if e.Phase == flock.PhaseHandedOver {
			s.Stop()
		}
	case flock.EventForked:
		s.worker("workerStart", string(e.Start), e)
	case flock.EventExited:
		reason := string(e.Exit)
		switch {
		case e.Exit.Failed():
			reason = "failure"
		case e.Exit == flock.ExitScaleDown:
			reason = "scale"
		case e.Exit == flock.ExitKilled:
			reason = "shutdown"
		}
		s.worker("workerExit", reason, e)
	}
}

func (s *surface) worker(kind, reason string, e flock.Event) {
	if s.o.OnWorker != nil {
		s.o.OnWorker(WorkerEvent{Kind: kind, PID: e.PID, Reason: reason, Time: e.Time})
	}
}

func (s *surface) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/cli" {
		reply(w, http.StatusNotFound, "Page Not Found")
		return
	}
	if r.Method != http.MethodPost && !(s.o.AllowGET && r.Method == http.MethodGet) {
		reply(w, http.StatusMethodNotAllowed, "Method Not Allowed")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	if err := r.ParseForm(); err != nil {
		reply(w, http.StatusBadRequest, "bad request: "+err.Error())
		return
	}
	key := r.Form.Get("accessKey")
	if bearer, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		key = bearer
	}
	if subtle.ConstantTimeCompare([]byte(key), []byte(s.key)) != 1 {
		reply(w, http.StatusUnauthorized, "Not authorized")
		return
	}
	level := Remote
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
			level = Local
		}
	}
	code, body := s.run(r.Context(), r.Form.Get("cmd"), level)
	if code != http.StatusOK {
		reply(w, code, body)
		return
	}
	w.Header().Set("Content-Type", "text/json; charset=UTF-8")
	w.Write([]byte(body))
}

// reply answers an error as node-cluster-service does: the bare message,
// no trailing newline, no Content-Type (cservice prints the body as is).
func reply(w http.ResponseWriter, code int, msg string) {
	w.Header()["Content-Type"] = nil // and no sniffing either
	w.WriteHeader(code)
	io.WriteString(w, msg)
}

// run executes a command line for a caller at level and returns the HTTP
// status and body.
func (s *surface) run(ctx context.Context, line string, level Level) (int, string) {
	if len(line) > maxCommandLine {
		return http.StatusBadRequest, fmt.Sprintf("command line too long: %d bytes (at most %d)", len(line), maxCommandLine)
	}
	args, err := parseArgs(line)
	if err != nil {
		return http.StatusBadRequest, err.Error()
	}
	name, _ := firstString(args)
	c := s.cmds[name]
	if c == nil {
		return http.StatusNotFound, "Not found. Try /help"
	}
	if level < c.Level {
		return http.StatusUnauthorized, fmt.Sprintf("Not authorized to execute '%s' remotely", name)
	}
	res, err := c.Run(ctx, s.ctl, args[1:])
	if errors.Is(err, ErrUsage) {
		return http.StatusBadRequest, strings.TrimSpace("usage: "+c.Name+" "+c.Usage) + strings.TrimPrefix(err.Error(), ErrUsage.Error())
	}
	if err != nil {
		return http.StatusBadRequest, err.Error()
	}
	b, err := json.Marshal(res)
	if err != nil {
		return http.StatusInternalServerError, "cannot encode the result: " + err.Error()
	}
	s.log.Info("command: done", "cmd", name, "level", level.String())
	return http.StatusOK, string(b)
}

func firstString(args []any) (string, bool) {
	if len(args) == 0 {
		return "", false
	}
	s, ok := args[0].(string)
	return s, ok
}

// console reads command lines from the terminal and runs them as Inproc.
func (s *surface) console() {
	sc := bufio.NewScanner(os.Stdin)
	fmt.Fprint(os.Stdout, "flock> ")
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); line != "" {
			code, body := s.run(context.Background(), line, Inproc)
			if code == http.StatusOK {
				body = Readable([]byte(body))
			}
			fmt.Fprintln(os.Stdout, body)
		}
		fmt.Fprint(os.Stdout, "flock> ")
	}
}

// Readable is how the console and flockctl show a result: a JSON string
// bare, anything else indented.
func Readable(result []byte) string {
	var v any
	if json.Unmarshal(result, &v) != nil {
		return string(result)
	}
	if str, ok := v.(string); ok {
		return str
	}
	b, _ := json.MarshalIndent(v, "", "  ")
	return string(b)
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// names lists the commands, sorted.
func (s *surface) names() []string {
	return slices.Sorted(maps.Keys(s.cmds))
}
