package main

import (
	"bytes"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flockhq/flock/internal/flocktest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// flockctl against the real example: exit status 0 on success, 1 when the
// command failed, 2 on usage errors, 3 when the service is unreachable or
// refuses the key.
func TestFlockctl(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "example")
	build := exec.Command("go", "build", "-o", bin, "github.com/flockhq/flock/example")
	built, err := build.CombinedOutput()
	require.NoError(t, err, "%s", built)
	// The endpoint on a port of the kernel's choosing, read from the log:
	// a port picked by the test and released could be taken before the
	// example binds it.
	a := flocktest.Start(t, exec.Command(bin, "-addr", "127.0.0.1:0", "-workers", "2", "-log-json",
		"-access-key", "k3y", "-command-addr", "127.0.0.1:0"))
	a.Started(2)
	addr := a.WaitFor("the command endpoint", 5*time.Second, func(r flocktest.Rec) bool { return r.Str("msg") == "command: endpoint listening" }).Str("addr")

	ctl := func(args ...string) (int, string, string) {
		var stdout, stderr bytes.Buffer
		code := run(args, &stdout, &stderr)
		return code, strings.TrimSpace(stdout.String()), strings.TrimSpace(stderr.String())
	}
	code, out, _ := ctl("-addr", addr, "-key", "k3y", "health")
	assert.Equal(t, 0, code)
	assert.Equal(t, "OK", out, "a string result is printed bare")

	code, out, _ = ctl("-addr", addr, "-key", "k3y", "-json", "health")
	assert.Equal(t, 0, code)
	assert.Equal(t, `"OK"`, out, "-json prints only the JSON")

	t.Setenv("FLOCK_ACCESS_KEY", "k3y")
	code, out, _ = ctl("-addr", addr, "restart", "all")
	assert.Equal(t, 0, code, "the key from $FLOCK_ACCESS_KEY")
	assert.Equal(t, "2 workers restarted successfully", out)

	code, out, _ = ctl("-addr", addr, "workers")
	assert.Equal(t, 0, code)
	assert.True(t, strings.HasPrefix(out, "{\n  \"workers\": [\n    {"), "indented JSON: %s", out)

	code, _, errOut := ctl("-addr", addr, "restart", "1.5")
	assert.Equal(t, 1, code)
	assert.Equal(t, `flockctl: restart 1.5: usage: restart all|pid|group [{"timeout":ms}] (HTTP 400)`, errOut)

	code, _, errOut = ctl("-addr", addr, "-key", "wrong", "info")
	assert.Equal(t, 3, code)
	assert.Equal(t, "flockctl: not authorized: wrong access key for "+addr, errOut)

	nobody := flocktest.RefusingAddr(t)
	code, _, errOut = ctl("-addr", nobody, "info")
	assert.Equal(t, 3, code)
	assert.Contains(t, errOut, "flockctl: nothing answers on "+nobody)

	// top: frames of the workers' table (not a terminal: one after another).
	code, out, _ = ctl("-addr", addr, "-key", "k3y", "top", "-n", "2", "-every", "10ms")
	assert.Equal(t, 0, code)
	assert.Equal(t, 2, strings.Count(out, "GROUP  STATE"), "two frames: %s", out)
	ready := a.Events("ready")
	for _, r := range ready[len(ready)-2:] { // the workers now
		assert.Regexp(t, fmt.Sprintf(`\b%d +main +ready\b`, r.Int("pid")), out)
	}
	code, _, _ = ctl("-addr", addr, "-key", "k3y", "top", "extra")
	assert.Equal(t, 2, code)

	code, _, _ = ctl("-addr", addr)
	assert.Equal(t, 2, code, "no command line")
	t.Setenv("FLOCK_ACCESS_KEY", "")
	code, _, errOut = ctl("-addr", addr, "info")
	assert.Equal(t, 2, code)
	assert.Equal(t, "flockctl: no access key: give -key or set FLOCK_ACCESS_KEY", errOut)
}
