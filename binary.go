package flock

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"

	"golang.org/x/sys/unix"
)

// A path is not a binary: a deploy puts another file at the path. So the
// master pins what it verified. A binary is held open on its inode and
// workers are executed through that descriptor (/proc/self/fd/N in the
// child), so replacing or deleting the file on disk changes nothing until
// the next HUP, USR2 or upgrade command reads the path again.
type binary struct {
	path string   // where it was read from
	id   string   // "sha256:" and the first 12 hex digits of its content's hash
	f    *os.File // open on the inode
}

// Binary identifies the executable a worker runs.
type Binary struct {
	Path string `json:"path"`         // where it was read from
	ID   string `json:"id,omitempty"` // "sha256:" and the first 12 hex digits of its content's hash
}

func (b *binary) String() string { return b.path + " (" + b.id + ")" }

func (b *binary) public() Binary { return Binary{Path: b.path, ID: b.id} }

// ErrNotExecutable is in the error of a binary that cannot be a worker.
var ErrNotExecutable = errors.New("not an executable file")

// openBinary pins the file at open (named path for people): a regular
// file with execute permission, hashed.
func openBinary(open, path string) (*binary, error) {
	f, err := os.OpenFile(open, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("executable %s: %w", path, unwrapPathError(err))
	}
	fi, err := f.Stat()
	switch {
	case err != nil:
	case !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 || fi.Size() == 0:
		err = ErrNotExecutable
	}
	h := sha256.New()
	if err == nil {
		_, err = io.Copy(h, f)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("executable %s: %w", path, err)
	}
	return &binary{path: path, id: "sha256:" + hex.EncodeToString(h.Sum(nil))[:12], f: f}, nil
}

func unwrapPathError(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// pinBinary opens the binary at path for workers and keeps track of it, so
// that it is closed once nothing refers to it.
func (m *master) pinBinary(open, path string) (*binary, error) {
	b, err := openBinary(open, path)
	if err == nil {
		m.binaries = append(m.binaries, b)
	}
	return b, err
}

func (m *master) closeBinaries() {
	for _, b := range m.binaries {
		b.f.Close()
	}
}

// releaseBinaries closes the binaries that no slot, worker or roll refers
// to any more: each HUP pins one, and the master must not keep them all.
func (m *master) releaseBinaries() {
	used := map[*binary]bool{m.bin: true}
	for _, s := range m.slots {
		used[s.bin] = true
	}
	for _, w := range m.workers {
		used[w.bin] = true
	}
	for _, r := range append([]*roll{m.roll}, m.pending...) {
		if r != nil {
			used[r.bin] = true
		}
	}
	m.binaries = slices.DeleteFunc(m.binaries, func(b *binary) bool {
		if !used[b] {
			b.f.Close()
		}
		return !used[b]
	})
}
