package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/flockhq/flock"
)

// top shows the workers (the command surface's `workers details`) every
// -every, as top does: on a terminal it redraws the screen, otherwise it
// prints one frame after another. -n stops after that many frames.
func top(args []string, addr, key string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("flockctl top", flag.ContinueOnError)
	fs.SetOutput(stderr)
	n := fs.Int("n", 0, "frames to show, then exit (0: until interrupted)")
	every := fs.Duration("every", time.Second, "time between frames")
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 || *every <= 0 {
		fmt.Fprintln(stderr, "usage: flockctl top [-n frames] [-every duration]")
		return 2
	}
	redraw := false
	if f, ok := stdout.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			redraw = true
		}
	}
	for frame := 1; ; frame++ {
		body, resp, code := call(addr, key, "workers details", 10*time.Second, stderr)
		if code != 0 {
			return code
		}
		if resp.StatusCode != 200 {
			fmt.Fprintf(stderr, "flockctl: workers details: %s (HTTP %d)\n", strings.TrimSpace(string(body)), resp.StatusCode)
			return map[bool]int{true: 3, false: 1}[resp.StatusCode == 401]
		}
		var ws struct {
			Workers []struct {
				Details flock.WorkerStatus `json:"details"`
			} `json:"workers"`
		}
		if err := json.Unmarshal(body, &ws); err != nil {
			fmt.Fprintf(stderr, "flockctl: workers details: %v\n", err)
			return 1
		}
		if redraw {
			fmt.Fprint(stdout, "\x1b[H\x1b[2J")
		} else if frame > 1 {
			fmt.Fprintln(stdout)
		}
		fmt.Fprintf(stdout, "flock at %s  %s  %d workers\n", addr, time.Now().Format("15:04:05"), len(ws.Workers))
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "PID\tGROUP\tSTATE\tUPTIME\tRSS MiB\tREQ/S\tREQUESTS\tOPEN\t")
		var rate float64
		for _, w := range ws.Workers {
			d := w.Details
			rate += d.AvgRequests
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%.1f\t%.1f\t%d\t%d\t\n", d.PID, d.Group, d.State,
				time.Since(d.Started).Round(time.Second), float64(d.RSS)/(1<<20), d.AvgRequests, d.Requests, d.ConnectionsOpen)
		}
		tw.Flush()
		fmt.Fprintf(stdout, "total %.1f requests/s\n", rate)
		if *n > 0 && frame >= *n {
			return 0
		}
		time.Sleep(*every)
	}
}
