package flock

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
)

// Reports: data a worker sends its master beside its counts, for the
// extensions (package metrics sends each worker's registry this way, so
// that the master can merge them). On the control socket a report is the
// line "report TOPIC LEN" and LEN bytes.

var reporters struct {
	mu  sync.Mutex
	fns []reporter
}

type reporter struct {
	topic string
	fn    func() []byte
}

// maxReport bounds one report: a bigger one is dropped, with a warning.
const maxReport = 32 << 20

// errReportDropped: a report too big, skipped; what follows it is read.
var errReportDropped = errors.New("dropped")

// Report has every worker call fn at most once a second while it serves,
// and once more after its drain, just before it exits, and send what fn
// returns to the master, where OnEvent and the extensions get it as an
// EventReport with topic (one word). The last report of a worker comes
// before its EventExited. A report equal to the worker's previous one is
// not sent again. In the master and in Single mode it is never called.
func Report(topic string, fn func() []byte) {
	if topic == "" || strings.ContainsAny(topic, " \n") {
		panic(fmt.Sprintf("flock: Report topic %q: one word", topic))
	}
	reporters.mu.Lock()
	defer reporters.mu.Unlock()
	reporters.fns = append(reporters.fns, reporter{topic, fn})
}

// sendReports writes each reporter's report that changed since last.
func sendReports(w io.Writer, last map[string][]byte) error {
	reporters.mu.Lock()
	fns := reporters.fns
	reporters.mu.Unlock()
	for _, r := range fns {
		data := r.fn()
		if bytes.Equal(data, last[r.topic]) && last[r.topic] != nil {
			continue
		}
		last[r.topic] = data
		var b bytes.Buffer
		fmt.Fprintf(&b, "report %s %d\n", r.topic, len(data))
		b.Write(data)
		if _, err := w.Write(b.Bytes()); err != nil {
			return err
		}
	}
	return nil
}

// readReport reads the data of the report line "TOPIC LEN" (arg) from r.
func readReport(r *bufio.Reader, arg string) (topic string, data []byte, err error) {
	topic, n, _ := strings.Cut(arg, " ")
	size, err := strconv.Atoi(n)
	if err != nil || size < 0 {
		return "", nil, fmt.Errorf("report %q: bad length", arg)
	}
	if size > maxReport {
		if _, err := io.CopyN(io.Discard, r, int64(size)); err != nil {
			return "", nil, err
		}
		return "", nil, fmt.Errorf("report %s of %d bytes, more than %d: %w", topic, size, maxReport, errReportDropped)
	}
	data = make([]byte, size)
	_, err = io.ReadFull(r, data)
	return topic, data, err
}
