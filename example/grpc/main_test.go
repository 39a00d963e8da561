package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/flockhq/flock/internal/flocktest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// calls is clients making unary Check calls until stopped, counting them.
type calls struct {
	ok, failed atomic.Int64
	stop       context.CancelFunc
	wg         sync.WaitGroup
	mu         sync.Mutex
	errs       []string
}

// startCalls runs clients through one long-lived connection each, or a
// new connection per call.
func startCalls(t *testing.T, addr string, clients int, longLived bool) *calls {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	l := &calls{stop: cancel}
	dial := func() *grpc.ClientConn {
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		require.NoError(t, err)
		return cc
	}
	for range clients {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			var cc *grpc.ClientConn
			for ctx.Err() == nil {
				if cc == nil {
					cc = dial()
				}
				callCtx, done := context.WithTimeout(context.Background(), 10*time.Second)
				resp, err := healthpb.NewHealthClient(cc).Check(callCtx, &healthpb.HealthCheckRequest{})
				done()
				switch {
				case err != nil:
					l.fail(err)
				case resp.Status != healthpb.HealthCheckResponse_SERVING:
					l.fail(fmt.Errorf("status %v", resp.Status))
				default:
					l.ok.Add(1)
				}
				if !longLived {
					cc.Close()
					cc = nil
				}
			}
			if cc != nil {
				cc.Close()
			}
		}()
	}
	t.Cleanup(func() { l.end() })
	return l
}

func (l *calls) fail(err error) {
	l.failed.Add(1)
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.errs) < 5 {
		l.errs = append(l.errs, err.Error())
	}
}

func (l *calls) wait(t *testing.T, n int64) {
	want := l.ok.Load() + l.failed.Load() + n
	require.True(t, flocktest.Poll(20*time.Second, func() bool { return l.ok.Load()+l.failed.Load() >= want }), "traffic: %s", l)
}

func (l *calls) end() {
	l.stop()
	l.wg.Wait()
}

func (l *calls) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return fmt.Sprintf("%d ok, %d failed %v", l.ok.Load(), l.failed.Load(), l.errs)
}

// gRPC unary calls through grpc-go clients, on long-lived connections and
// on one connection per call: HUP, TTOU, recycling and USR2 fail none. The
// HTTP listener beside it survives the same.
func TestGRPCLifecycleUnderLoad(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "grpc-example")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	require.NoError(t, err, "%s", out)
	exited := func(reason string) func(r flocktest.Rec) bool {
		return func(r flocktest.Rec) bool { return r.Str("event") == "exited" && r.Str("reason") == reason }
	}
	for _, op := range []struct {
		name string
		args []string
		do   func(a *flocktest.App)
	}{
		{"HUP", nil, func(a *flocktest.App) {
			a.Signal(syscall.SIGHUP)
			a.WaitFor("an old worker gone", 20*time.Second, exited("restart"))
		}},
		{"TTOU", nil, func(a *flocktest.App) {
			a.Signal(syscall.SIGTTOU)
			a.WaitFor("a worker gone", 20*time.Second, exited("scale-down"))
		}},
		{"recycle", []string{"-max-uptime", "500ms"}, func(a *flocktest.App) {
			a.WaitFor("a recycled worker gone", 20*time.Second, exited("recycle"))
		}},
		{"USR2", nil, func(a *flocktest.App) {
			a.Signal(syscall.SIGUSR2)
			assert.Equal(t, 0, a.ExitCode(20*time.Second), "the old master drains and exits")
		}},
	} {
		for _, longLived := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/long-lived=%v", op.name, longLived), func(t *testing.T) {
				args := append([]string{"-addr", "127.0.0.1:0", "-http", "127.0.0.1:0", "-monitor", "127.0.0.1:0",
					"-workers", "3", "-log-json"}, op.args...)
				a := flocktest.Start(t, exec.Command(bin, args...))
				a.Started(3)
				var st struct{ Listeners []struct{ Name, Addr string } }
				_, body, _ := a.Mon("GET", "/")
				require.NoError(t, json.Unmarshal([]byte(body), &st))
				require.Len(t, st.Listeners, 2)
				web := flocktest.StartLoad(t, "http://"+st.Listeners[1].Addr+"/", 2, longLived)
				l := startCalls(t, a.Addr, 8, longLived)
				l.wait(t, 200)
				op.do(a)
				l.wait(t, 200)
				l.end()
				res := web.Stop()
				t.Logf("gRPC: %s; HTTP: %s", l, res)
				assert.Zero(t, l.failed.Load(), l.String())
				assert.Zero(t, res.Failed.Load(), "HTTP: %s", res)
			})
		}
	}
}
