package flock

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
)

// Output is where a foreign program's standard output and error go.
type Output string

const (
	// OutputInherit: the master's own, as they are (the default).
	OutputInherit Output = ""
	// OutputPrefix: the master's, each line starting "[NAME PID] ", whole
	// lines only, so that workers' lines never interleave mid-line.
	OutputPrefix Output = "prefix"
	// OutputSilent: discarded (node-cluster-service's silent).
	OutputSilent Output = "silent"
)

func (o Output) valid() error {
	switch o {
	case OutputInherit, OutputPrefix, OutputSilent:
		return nil
	}
	return fmt.Errorf("Output %q: want %q, %q or %q", string(o), OutputInherit, OutputPrefix, OutputSilent)
}

// outputs are a worker's standard output and error.
type outputs struct {
	stdout, stderr *os.File
	pipes          []*os.File // prefix: the read ends, copied once the pid is known
}

func (o Output) open() (*outputs, error) {
	switch o {
	case OutputSilent:
		return &outputs{}, nil // os/exec: the null device
	case OutputPrefix:
		out := &outputs{}
		for _, f := range []**os.File{&out.stdout, &out.stderr} {
			r, w, err := os.Pipe()
			if err != nil {
				out.close()
				return nil, err
			}
			*f, out.pipes = w, append(out.pipes, r)
		}
		return out, nil
	}
	return &outputs{stdout: os.Stdout, stderr: os.Stderr}, nil
}

// started closes the master's copies of the pipes' write ends, and copies
// what comes out of them, line by line, prefixed with name and pid.
func (out *outputs) started(name string, pid int) {
	if out.pipes == nil {
		return
	}
	out.stdout.Close()
	out.stderr.Close()
	prefix := "[" + name + " " + strconv.Itoa(pid) + "] "
	go copyLines(os.Stdout, out.pipes[0], prefix)
	go copyLines(os.Stderr, out.pipes[1], prefix)
}

// close undoes open when the program did not start.
func (out *outputs) close() {
	for _, f := range append([]*os.File{out.stdout, out.stderr}, out.pipes...) {
		if f != nil && f != os.Stdout && f != os.Stderr {
			f.Close()
		}
	}
}

// lines serialises every worker's lines, so that each is written whole.
var lines sync.Mutex

// copyLines copies r to w until EOF, each line prefixed. A line longer
// than the buffer is cut, each part a line of its own.
func copyLines(w io.Writer, r *os.File, prefix string) {
	defer r.Close()
	br := bufio.NewReaderSize(r, 64<<10)
	buf := []byte(prefix)
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			buf = append(buf[:len(prefix)], line...)
			if buf[len(buf)-1] != '\n' {
				buf = append(buf, '\n')
			}
			lines.Lock()
			w.Write(buf)
			lines.Unlock()
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return
		}
	}
}
