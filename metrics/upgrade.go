package metrics

import (
	"bytes"
	"io"
	"net"
	"os"
	"strconv"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
)

// Across a USR2 upgrade the counts go on: every master's extension tells
// what its workers have counted (the merged cumulative families, its own
// inheritance included) to whoever connects to its abstract unix socket
// "@flock-metrics/PID"; a new master, a child of the old one, connects to
// its parent's at its first scrape and at each scrape after, until the old
// master's Stop (once its last worker has drained) has sent the final
// count. The new master serves only from the handover on, and what it
// fetches then is at least what the old one served last, so the merged
// counters never go backwards. The first byte of an answer says whether
// it is the final one.

func socketName(pid int) string { return "@flock-metrics/" + strconv.Itoa(pid) }

// tell serves the cumulative families to the next master.
func (x *extension) tell() {
	ln, err := net.Listen("unix", socketName(os.Getpid()))
	if err != nil {
		return // an older master's name still bound: no hand-down, counts start afresh
	}
	x.told = make(chan struct{}, 1)
	x.ln = ln
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			x.mu.Lock()
			final := x.stopping
			x.heirAsked = true
			data := encode(x.cumulative())
			x.mu.Unlock()
			c.SetWriteDeadline(time.Now().Add(time.Second))
			flag := byte('0')
			if final {
				flag = '1'
			}
			c.Write(append([]byte{flag}, data...))
			c.Close()
			if final {
				select {
				case x.told <- struct{}{}:
				default:
				}
			}
		}
	}()
}

// cumulative are the merged counters, histograms and summaries of every
// worker this master (and its predecessors) ran.
func (x *extension) cumulative() []*dto.MetricFamily {
	m := newMerger(nil)
	m.add(x.inherited, "", true)
	m.add(x.gone.families(), "", true)
	for _, fams := range x.live {
		m.add(fams, "", true)
	}
	return m.families()
}

// handDown waits, when stopping, until the next master has fetched the
// final counts (at most a few seconds: there may be none).
func (x *extension) handDown() {
	if x.ln == nil {
		return
	}
	x.mu.Lock()
	x.stopping = true
	asked := x.heirAsked
	x.mu.Unlock()
	if asked {
		select {
		case <-x.told:
		case <-time.After(5 * time.Second):
		}
	}
	x.ln.Close()
}

// follow fetches the predecessor's counts, if this master has one, every
// 200 ms until it has sent its final counts or is gone.
func (x *extension) follow() {
	for x.inherit() {
		time.Sleep(200 * time.Millisecond)
	}
}

// inherit fetches the predecessor's counts once, and reports whether more
// are to come.
func (x *extension) inherit() bool {
	x.fetching.Lock() // one at a time: an older answer must not overwrite a newer one
	defer x.fetching.Unlock()
	x.mu.Lock()
	done, pred := x.orphan, x.pred
	x.mu.Unlock()
	if done {
		return false
	}
	fams, final, err := fetch(pred)
	x.mu.Lock()
	defer x.mu.Unlock()
	switch {
	case err != nil:
		x.orphan = true // no predecessor (any more): what it last said stays
	case final:
		x.inherited, x.orphan = fams, true
	default:
		x.inherited = fams
	}
	return !x.orphan
}

func fetch(pid int) (fams []*dto.MetricFamily, final bool, err error) {
	c, err := net.DialTimeout("unix", socketName(pid), time.Second)
	if err != nil {
		return nil, false, err
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	b, err := io.ReadAll(c)
	if err == nil && len(b) == 0 {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		return nil, false, err
	}
	fams, err = decode(b[1:])
	return fams, b[0] == '1', err
}

func encode(fams []*dto.MetricFamily) []byte {
	var b bytes.Buffer
	enc := expfmt.NewEncoder(&b, expfmt.NewFormat(expfmt.TypeProtoDelim))
	for _, f := range fams {
		enc.Encode(f)
	}
	return b.Bytes()
}
