package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/flockhq/flock/internal/flocktest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// load is clients sending numbered lines to the echo server and checking
// each answer, until stopped.
type load struct {
	ok, failed atomic.Int64
	byes       atomic.Int64
	stop       context.CancelFunc
	wg         sync.WaitGroup
	mu         sync.Mutex
	errs       []string
}

// startLoad runs clients: longLived ones keep a connection until the
// server says BYE; the others open one per message.
func startLoad(t *testing.T, addr string, clients int, longLived bool) *load {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	l := &load{stop: cancel}
	for i := range clients {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			var c net.Conn
			var r *bufio.Reader
			defer func() {
				if c != nil {
					c.Close()
				}
			}()
			for n := 0; ctx.Err() == nil; n++ {
				msg := fmt.Sprintf("client %d message %d", i, n)
				if c == nil {
					var err error
					if c, err = net.DialTimeout("tcp", addr, 5*time.Second); err != nil {
						l.fail(err)
						continue
					}
					r = bufio.NewReader(c)
				}
				bye, err := exchange(c, r, msg)
				if err != nil {
					l.fail(fmt.Errorf("%s: %w", msg, err))
				} else {
					l.ok.Add(1)
				}
				if bye {
					l.byes.Add(1)
				}
				if err != nil || bye || !longLived {
					c.Close()
					c = nil
				}
			}
		}()
	}
	t.Cleanup(func() { l.end() })
	return l
}

// exchange sends msg and reads its answer, past a BYE, which it reports.
func exchange(c net.Conn, r *bufio.Reader, msg string) (bye bool, err error) {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintln(c, msg); err != nil {
		return false, err
	}
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return bye, err
		}
		switch line = strings.TrimSuffix(line, "\n"); line {
		case Bye:
			bye = true
		case msg:
			return bye, nil
		default:
			return bye, fmt.Errorf("answer %q", line)
		}
	}
}

func (l *load) fail(err error) {
	l.failed.Add(1)
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.errs) < 5 {
		l.errs = append(l.errs, err.Error())
	}
}

// wait waits until n more messages have been answered or failed.
func (l *load) wait(t *testing.T, n int64) {
	want := l.ok.Load() + l.failed.Load() + n
	require.True(t, flocktest.Poll(20*time.Second, func() bool { return l.ok.Load()+l.failed.Load() >= want }), "traffic: %s", l)
}

func (l *load) end() *load {
	l.stop()
	l.wg.Wait()
	return l
}

func (l *load) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return fmt.Sprintf("%d ok, %d failed %v, %d BYEs", l.ok.Load(), l.failed.Load(), l.errs, l.byes.Load())
}

// The echo server under flock, with clients on long-lived connections and
// clients that connect per message: HUP, TTOU, recycling and USR2 lose no
// message. Each operation waits for the old worker (or master) to exit,
// which it does only once its long-lived clients have heard BYE and left.
func TestEchoLifecycleUnderLoad(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "echo")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	require.NoError(t, err, "%s", out)
	exited := func(reason string) func(r flocktest.Rec) bool {
		return func(r flocktest.Rec) bool { return r.Str("event") == "exited" && r.Str("reason") == reason }
	}
	for _, op := range []struct {
		name string
		args []string
		all  bool // every worker is replaced before do returns: some long-lived clients must hear BYE
		do   func(a *flocktest.App)
	}{
		{"HUP", nil, true, func(a *flocktest.App) {
			a.Signal(syscall.SIGHUP)
			a.WaitFor("the roll", 20*time.Second, func(r flocktest.Rec) bool { return r.Str("event") == "roll" && r.Str("reason") != "began" })
			a.WaitFor("an old worker gone", 20*time.Second, exited("restart"))
		}},
		// One worker of three goes: SO_REUSEPORT may have handed it none
		// of the 8 long-lived clients ((2/3)^8, about 4 % of runs).
		{"TTOU", nil, false, func(a *flocktest.App) {
			a.Signal(syscall.SIGTTOU)
			a.WaitFor("a worker gone", 20*time.Second, exited("scale-down"))
		}},
		{"recycle", []string{"-max-uptime", "500ms"}, false, func(a *flocktest.App) {
			a.WaitFor("a recycled worker gone", 20*time.Second, exited("recycle"))
		}},
		{"USR2", nil, true, func(a *flocktest.App) {
			a.Signal(syscall.SIGUSR2)
			assert.Equal(t, 0, a.ExitCode(20*time.Second), "the old master drains and exits")
		}},
	} {
		for _, longLived := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/long-lived=%v", op.name, longLived), func(t *testing.T) {
				args := append([]string{"-addr", "127.0.0.1:0", "-monitor", "127.0.0.1:0", "-workers", "3", "-log-json"}, op.args...)
				a := flocktest.Start(t, exec.Command(bin, args...))
				a.Started(3)
				l := startLoad(t, a.Addr, 8, longLived)
				l.wait(t, 200)
				op.do(a)
				l.wait(t, 200)
				l.end()
				t.Log(l)
				assert.Zero(t, l.failed.Load(), l.String())
				if longLived && op.all {
					assert.Positive(t, l.byes.Load(), "the clients were told to go")
				}
			})
		}
	}
}
