package flock

import (
	"context"
	"log"
	"log/slog"
	"strings"
	"sync"
	"time"
)

// A line logged on a path that can repeat (a failing accept loop, a
// retried start) must not flood the logs: a limiter lets one line through
// per interval and counts the others, reported with the next one let
// through ("suppressed": n).
type limiter struct {
	every time.Duration

	mu     sync.Mutex
	last   map[string]time.Time
	hidden map[string]int
}

func newLimiter(every time.Duration) *limiter {
	return &limiter{every: every, last: map[string]time.Time{}, hidden: map[string]int{}}
}

// allow reports whether a line of kind key may be logged now, and how many
// of its kind were suppressed since the last one.
func (l *limiter) allow(key string) (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if now.Sub(l.last[key]) < l.every {
		l.hidden[key]++
		return false, 0
	}
	n := l.hidden[key]
	l.last[key], l.hidden[key] = now, 0
	return true, n
}

// log logs msg at level unless a line of kind key was logged less than
// the limiter's interval ago.
func (l *limiter) log(lg *slog.Logger, level slog.Level, key, msg string, attrs ...any) {
	if ok, n := l.allow(key); ok {
		if n > 0 {
			attrs = append(attrs, "suppressed", n)
		}
		lg.Log(context.Background(), level, msg, attrs...)
	}
}

// newLimitedLog is a *log.Logger for an http.Server's ErrorLog: its
// "Accept error … retrying" lines repeat every few milliseconds when the
// process runs out of file descriptors. Lines are limited by their text
// up to the first digit, so that "retrying in 5ms" and "in 10ms" count as one.
func newLimitedLog(lg *slog.Logger, level slog.Level, every time.Duration) *log.Logger {
	return log.New(limitedWriter{lg: lg, level: level, l: newLimiter(every)}, "", 0)
}

type limitedWriter struct {
	lg    *slog.Logger
	level slog.Level
	l     *limiter
}

func (w limitedWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	key := line
	if i := strings.IndexAny(line, "0123456789"); i >= 0 {
		key = line[:i]
	}
	w.l.log(w.lg, w.level, key, line)
	return len(p), nil
}
