// Command echoload is the load generator of bench/limit.sh: -c clients
// for -d, each sending a message and waiting for its answer, in a loop,
// either on one long-lived connection (-mode keepalive) or on a new
// connection per message (-mode newconn); as fast as they can, or at
// -rate messages per second in total.
//
//	echoload -addr 127.0.0.1:7000 -c 32 -d 5s                    # echo, saturating
//	echoload -addr 127.0.0.1:7000 -c 32 -d 10s -rate 20000       # echo, at a fixed rate
//	echoload -proto http -addr 127.0.0.1:5000 -mode newconn -rate 8000
//
// -proto echo speaks example/echo's protocol: "text\n" is answered by
// "text\n". A "BYE" line means the server is going: the next line is the
// answer to the message in flight, then the client reconnects. -proto http
// sends "GET / HTTP/1.1" (with "Connection: close" in newconn mode, as wrk
// -H "Connection: close" does) and reads the answer by its Content-Length:
// a minimal client, so that the load itself costs as little CPU as wrk's
// and leaves the servers the same share of the machine. wrk has no rate
// option, which is why this tool exists for HTTP too.
//
// It prints one line: messages answered, failures (a dial, write or read
// error, a wrong answer, a non-200 status), the time taken and
// messages per second. Messages begun before the end of -d are finished;
// every connection has a deadline of -d plus 10 s, so a run is bounded.
package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Bye is the line by which example/echo tells a client to reconnect.
const Bye = "BYE\n"

type config struct {
	addr      string
	proto     string
	keepalive bool
	msg       []byte // the echo message, newline included
	req       []byte // the HTTP request
	deadline  time.Time
}

type counts struct{ done, failed int64 }

func main() {
	addr := flag.String("addr", "127.0.0.1:7000", "server address")
	conns := flag.Int("c", 32, "clients (concurrent connections)")
	dur := flag.Duration("d", 5*time.Second, "duration")
	mode := flag.String("mode", "keepalive", "keepalive (one connection per client) or newconn (a new connection per message)")
	proto := flag.String("proto", "echo", "echo (example/echo's line protocol) or http (GET /)")
	rate := flag.Float64("rate", 0, "messages per second in total (0: as fast as possible)")
	text := flag.String("msg", "hello", "the echo message (one line)")
	flag.Parse()
	if *mode != "keepalive" && *mode != "newconn" || *proto != "echo" && *proto != "http" ||
		*conns < 1 || *dur <= 0 || *rate < 0 || *text+"\n" == Bye || bytes.ContainsRune([]byte(*text), '\n') {
		flag.Usage()
		os.Exit(2)
	}

	start := time.Now()
	end := start.Add(*dur)
	cfg := &config{
		addr:      *addr,
		proto:     *proto,
		keepalive: *mode == "keepalive",
		msg:       []byte(*text + "\n"),
		deadline:  end.Add(10 * time.Second),
	}
	req := "GET / HTTP/1.1\r\nHost: " + *addr + "\r\n"
	if !cfg.keepalive {
		req += "Connection: close\r\n"
	}
	cfg.req = []byte(req + "\r\n")

	var stop atomic.Bool
	time.AfterFunc(*dur, func() { stop.Store(true) })
	results := make([]counts, *conns)
	var wg sync.WaitGroup
	for i := range *conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Pacing: client i sends at start + i·gap/c + k·gap, where gap is
			// its share of the rate; a client that falls behind catches up
			// without sleeping.
			var gap time.Duration
			var next time.Time
			if *rate > 0 {
				gap = time.Duration(float64(*conns) / *rate * float64(time.Second))
				next = start.Add(gap * time.Duration(i) / time.Duration(*conns))
			}
			c := &client{cfg: cfg}
			defer c.close()
			r := &results[i]
			for !stop.Load() {
				if gap > 0 {
					if d := time.Until(next); d > 0 {
						if next.After(end) {
							return
						}
						time.Sleep(d)
					}
					next = next.Add(gap)
				}
				if err := c.do(); err != nil {
					r.failed++
					c.close()
					if errors.Is(err, errDial) {
						time.Sleep(10 * time.Millisecond) // no busy loop against a port that refuses
					}
					continue
				}
				r.done++
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	var t counts
	for _, r := range results {
		t.done += r.done
		t.failed += r.failed
	}
	fmt.Printf("messages %d failures %d elapsed %.3fs messages/s %.1f\n",
		t.done, t.failed, elapsed.Seconds(), float64(t.done)/elapsed.Seconds())
}

var errDial = errors.New("dial")

// client is one connection at a time.
type client struct {
	cfg *config
	c   net.Conn
	r   *bufio.Reader
}

func (c *client) close() {
	if c.c != nil {
		c.c.Close()
		c.c, c.r = nil, nil
	}
}

// do sends one message and reads its answer.
func (c *client) do() error {
	if c.c == nil {
		nc, err := net.DialTimeout("tcp", c.cfg.addr, 5*time.Second)
		if err != nil {
			return fmt.Errorf("%w: %v", errDial, err)
		}
		nc.SetDeadline(c.cfg.deadline)
		c.c, c.r = nc, bufio.NewReader(nc)
	}
	var closing bool
	var err error
	if c.cfg.proto == "echo" {
		closing, err = c.echo()
	} else {
		closing, err = c.http()
	}
	if err != nil {
		return err
	}
	if closing || !c.cfg.keepalive {
		c.close()
	}
	return nil
}

// echo sends the line and reads its echo; a "BYE" first means: read the
// answer, then reconnect.
func (c *client) echo() (closing bool, err error) {
	if _, err := c.c.Write(c.cfg.msg); err != nil {
		return false, err
	}
	line, err := c.r.ReadSlice('\n')
	if err != nil {
		return false, err
	}
	if string(line) == Bye {
		closing = true
		if line, err = c.r.ReadSlice('\n'); err != nil {
			return false, err
		}
	}
	if !bytes.Equal(line, c.cfg.msg) {
		return false, fmt.Errorf("answer %q, want %q", line, c.cfg.msg)
	}
	return closing, nil
}

// http sends the request and reads a 200 answer by its Content-Length
// (to EOF when the server closes and gives none).
func (c *client) http() (closing bool, err error) {
	if _, err := c.c.Write(c.cfg.req); err != nil {
		return false, err
	}
	line, err := c.r.ReadSlice('\n')
	if err != nil {
		return false, err
	}
	if !bytes.HasPrefix(line, []byte("HTTP/1.1 200 ")) {
		return false, fmt.Errorf("status %q", bytes.TrimSpace(line))
	}
	length := -1
	for {
		line, err = c.r.ReadSlice('\n')
		if err != nil {
			return false, err
		}
		if len(line) <= 2 { // "\r\n": end of the header
			break
		}
		k, v, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		v = bytes.TrimSpace(v)
		switch {
		case bytes.EqualFold(k, []byte("Content-Length")):
			if length, err = strconv.Atoi(string(v)); err != nil {
				return false, fmt.Errorf("Content-Length %q", v)
			}
		case bytes.EqualFold(k, []byte("Connection")) && bytes.EqualFold(v, []byte("close")):
			closing = true
		}
	}
	switch {
	case length >= 0:
		_, err = c.r.Discard(length)
	case closing:
		_, err = io.Copy(io.Discard, c.r)
	default:
		err = errors.New("no Content-Length on a kept-alive connection")
	}
	return closing, err
}
