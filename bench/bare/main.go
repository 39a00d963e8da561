// Command bare is the performance limit bench/limit.sh measures flock
// against: a server with no master at all, on its own SO_REUSEPORT
// listener. Two of them on one port, each with GOMAXPROCS=1, are what a
// 2-worker prefork would be if its machinery cost nothing.
//
//	GOMAXPROCS=1 bare -mode http -addr 127.0.0.1:5300 &
//	GOMAXPROCS=1 bare -mode http -addr 127.0.0.1:5300 &
//
// -mode http serves the example's "/" route (X-Worker-Pid, "Hello from
// worker PID") with flock's default ReadHeaderTimeout and IdleTimeout;
// -mode echo answers every line with the same line, as example/echo does.
// TERM or INT stops it (at once: it is a benchmark target, not a service).
package main

import (
	"bufio"
	"context"
	"flag"
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

	"golang.org/x/sys/unix"
)

func main() {
	mode := flag.String("mode", "http", "http or echo")
	addr := flag.String("addr", "127.0.0.1:5300", "listen address (shared with the other bare processes by SO_REUSEPORT)")
	flag.Parse()
	if *mode != "http" && *mode != "echo" {
		log.Fatalf("bare: -mode %q: want http or echo", *mode)
	}

	lc := net.ListenConfig{Control: func(network, address string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		}); err != nil {
			return err
		}
		return serr
	}}
	ln, err := lc.Listen(context.Background(), "tcp", *addr)
	if err != nil {
		log.Fatalf("bare: %v", err)
	}

	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		<-sig
		os.Exit(0)
	}()

	if *mode == "echo" {
		serveEcho(ln)
		return
	}
	srv := &http.Server{
		Handler:           handler(),
		ReadHeaderTimeout: 10 * time.Second, // flock's defaults
		IdleTimeout:       30 * time.Second,
	}
	log.Fatal(srv.Serve(ln))
}

// handler is example/main.go's "/" route.
func handler() http.Handler {
	pid := strconv.Itoa(os.Getpid())
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Worker-Pid", pid)
		fmt.Fprintf(w, "Hello from worker %s\n", pid)
	})
	return mux
}

// serveEcho serves lines with example/echo's server code, so that the
// application's own work (a map of connections for its BYE, a lock per
// answer) is the same on both sides and only flock's machinery differs.
func serveEcho(ln net.Listener) {
	s := &server{conns: map[*conn]struct{}{}}
	for {
		nc, err := ln.Accept()
		if err != nil {
			log.Fatalf("bare: %v", err)
		}
		c := &conn{Conn: nc}
		s.mu.Lock()
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Add(1)
		go s.handle(c)
	}
}

// server, conn and handle are example/echo's.
type server struct {
	wg sync.WaitGroup

	mu    sync.Mutex
	conns map[*conn]struct{}
}

type conn struct {
	net.Conn
	mu sync.Mutex
}

func (c *conn) writeLine(b []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, err := c.Write(b)
	return err
}

func (s *server) handle(c *conn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			return
		}
		if c.writeLine(line) != nil {
			return
		}
	}
}
