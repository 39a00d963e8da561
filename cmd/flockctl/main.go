// Command flockctl sends a command line to a flock service's command
// surface (package command) and prints the result.
//
//	flockctl [-addr host:port] [-key K] [-json] [-timeout D] <command line>
//	flockctl -key s3cret workers
//	flockctl restart all '{"timeout":10000}'
//	flockctl top [-n N] [-every D]     the workers, refreshed, as top does
//
// The key comes from -key or $FLOCK_ACCESS_KEY. Exit status: 0 when the
// command succeeded, 1 when it failed (the service answered with an error),
// 2 for a usage error, 3 when the service could not be reached or refused
// the key.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/flockhq/flock/command"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(argv []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("flockctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "localhost:11987", "the command surface's address")
	key := fs.String("key", os.Getenv("FLOCK_ACCESS_KEY"), "access key (default $FLOCK_ACCESS_KEY)")
	asJSON := fs.Bool("json", false, "print only the JSON result")
	timeout := fs.Duration("timeout", 10*time.Minute, "how long to wait for the answer (restarts of many workers take time)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: flockctl [-addr host:port] [-key K] [-json] [-timeout D] <command line>")
		fmt.Fprintln(stderr, "       flockctl help    lists the commands")
		fs.PrintDefaults()
	}
	if err := fs.Parse(argv); err != nil {
		return 2
	}
	line := strings.Join(fs.Args(), " ")
	if line == "" {
		fs.Usage()
		return 2
	}
	if *key == "" {
		fmt.Fprintln(stderr, "flockctl: no access key: give -key or set FLOCK_ACCESS_KEY")
		return 2
	}
	if fs.Arg(0) == "top" {
		return top(fs.Args()[1:], *addr, *key, stdout, stderr)
	}
	body, resp, code := call(*addr, *key, line, *timeout, stderr)
	if code != 0 {
		return code
	}
	text := strings.TrimSpace(string(body))
	switch {
	case resp.StatusCode == http.StatusUnauthorized && text == "Not authorized":
		fmt.Fprintf(stderr, "flockctl: not authorized: wrong access key for %s\n", *addr)
		return 3
	case resp.StatusCode != http.StatusOK:
		fmt.Fprintf(stderr, "flockctl: %s: %s (HTTP %d)\n", line, text, resp.StatusCode)
		return 1
	case *asJSON:
		fmt.Fprintln(stdout, text)
	default:
		fmt.Fprintln(stdout, command.Readable(body))
	}
	return 0
}

// call sends line to the command surface at addr; code is non-zero (the
// exit status) when it could not, having said why on stderr.
func call(addr, key, line string, timeout time.Duration, stderr io.Writer) ([]byte, *http.Response, int) {
	req, err := http.NewRequest(http.MethodPost, "http://"+addr+"/cli?cmd="+url.QueryEscape(line), nil)
	if err != nil {
		fmt.Fprintf(stderr, "flockctl: -addr %q: %v\n", addr, err)
		return nil, nil, 2
	}
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := (&http.Client{Timeout: timeout}).Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			fmt.Fprintf(stderr, "flockctl: nothing answers on %s (is the service running, with an access key?): %v\n", addr, op.Err)
		} else {
			fmt.Fprintf(stderr, "flockctl: %v\n", err)
		}
		return nil, nil, 3
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		fmt.Fprintf(stderr, "flockctl: reading the answer: %v\n", err)
		return nil, nil, 3
	}
	return body, resp, 0
}
