package flock

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"net/http"
	"strings"
	"time"
)

// The status page for people: the monitor's GET / asked for HTML (a
// browser) gets statuspage.html, which reads the JSON Status every second
// and shows the workers, a chart of requests per second over the last
// minutes, the ECV state with its control, and the recent events. No
// external script, font or style.

//go:embed statuspage.html
var statusPage []byte

// wantsHTML reports whether r prefers HTML to JSON (a browser).
func wantsHTML(r *http.Request) bool {
	for _, part := range strings.Split(r.Header.Get("Accept"), ",") {
		switch strings.TrimSpace(strings.SplitN(part, ";", 2)[0]) {
		case "text/html":
			return true
		case "application/json":
			return false
		}
	}
	return false
}

func servePage(w http.ResponseWriter, ecvPath string) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'")
	js, _ := json.Marshal(ecvPath) // escapes <, > and &: safe inside <script>
	w.Write(bytes.Replace(statusPage, []byte(`"ECV_PATH"`), js, 1))
}

// Recent is an event as the status page lists it.
type Recent struct {
	Time   time.Time `json:"time"`
	Kind   EventKind `json:"kind"`
	PID    int       `json:"pid,omitempty"`
	Reason string    `json:"reason,omitempty"`
}

// maxRecent events are kept for the status page.
const maxRecent = 30

// remember keeps e among the recent events (on the master's goroutine).
func (m *master) remember(e Event) {
	r := Recent{Time: e.Time, Kind: e.Kind, PID: e.PID}
	switch e.Kind {
	case EventForked:
		r.Reason = string(e.Start)
	case EventExited:
		r.Reason = string(e.Exit)
	case EventRoll, EventUpgrade:
		r.Reason = e.phaseText()
	case EventSignal, EventShutdown:
		if e.Signal != nil {
			r.Reason = signalName(e.Signal)
		}
	case EventGaveUp:
		r.Reason = e.Err.Error()
	case EventMonitor:
		r.Reason = map[bool]string{true: "disabled", false: "enabled"}[e.Disabled]
	}
	old := m.recent.Load()
	next := []Recent{}
	if old != nil {
		next = append(next, (*old)[max(0, len(*old)-maxRecent+1):]...)
	}
	next = append(next, r)
	m.recent.Store(&next)
}
