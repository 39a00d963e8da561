package flock

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A browser asking for / gets the status page; everyone else the JSON.
func TestStatusPageOrJSON(t *testing.T) {
	a := startApp(t, appSpec{Workers: 1})
	a.Started(1)
	get := func(accept string) (string, string) {
		req, err := http.NewRequest("GET", "http://"+a.Monitor+"/", nil)
		require.NoError(t, err)
		if accept != "" {
			req.Header.Set("Accept", accept)
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		return resp.Header.Get("Content-Type"), resp.Header.Get("Content-Security-Policy")
	}
	ct, csp := get("text/html,application/xhtml+xml,*/*;q=0.8") // a browser's
	assert.Equal(t, "text/html; charset=utf-8", ct)
	assert.Contains(t, csp, "default-src 'self'", "no external script, font or style")
	for _, accept := range []string{"", "*/*", "application/json"} {
		ct, _ = get(accept)
		assert.Equal(t, "application/json", ct, "Accept %q", accept)
	}
	assert.NotContains(t, string(statusPage), "http://", "nothing fetched from elsewhere")
	assert.NotContains(t, string(statusPage), "https://")
}

// Headless Chromium renders the page: its script has filled the table
// with the workers' pids and the ECV state, and listed recent events. A
// screenshot is kept (FLOCK_TEST_ARTEFACTS, default the temporary
// directory).
func TestStatusPageInChromium(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("chromium is not installed (.ci/run installs Debian's): ", err)
	}
	a := startApp(t, appSpec{Workers: 2})
	pids := a.Started(2)
	url := "http://" + a.Monitor + "/"
	browse := func(extra ...string) string {
		args := append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
			"--disable-background-networking", "--disable-component-update", "--disable-sync",
			"--user-data-dir=" + t.TempDir(), "--virtual-time-budget=3000", "--window-size=1000,700"}, extra...)
		cmd := exec.Command(chromium, append(args, url)...)
		out, err := cmd.Output()
		require.NoError(t, err, "chromium %v", extra)
		return string(out)
	}
	dom := browse("--dump-dom")
	for _, pid := range pids {
		assert.Contains(t, dom, fmt.Sprintf(`data-pid="%d"`, pid), "worker %d in the table", pid)
	}
	assert.Contains(t, dom, `class="ecv AVAILABLE"`)
	assert.Contains(t, dom, "ready")
	assert.Regexp(t, `forked \d+\s+start`, dom, "recent events")

	dir := os.Getenv("FLOCK_TEST_ARTEFACTS")
	if dir == "" {
		dir = os.TempDir()
	}
	shot := filepath.Join(dir, "flock-status-page.png")
	browse("--screenshot=" + shot)
	st, err := os.Stat(shot)
	require.NoError(t, err)
	assert.Positive(t, st.Size())
	t.Logf("screenshot of the status page: %s (%d bytes, %s)", shot, st.Size(), time.Now().Format(time.RFC3339))
	assert.Regexp(t, `<p id="summary">2 workers · `, dom, "the page reached the master")
}
