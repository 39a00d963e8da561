package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/flockhq/flock"
)

// Config is node-cluster-service's proxy config file, plus flock's own
// keys (marked below). An unknown key is an error that names it.
type Config struct {
	// File is where the config was read from; promote rewrites its
	// defaultVersion there.
	File string `json:"-"`

	// VersionPath holds one folder per version; default: the file's
	// folder. A relative path is from the file's folder.
	VersionPath string `json:"versionPath"`
	// DefaultVersion is the live version: it serves requests that name
	// none. Unset, such requests get a 404.
	DefaultVersion string `json:"defaultVersion"`
	// VersionHeader names the version a request asks for; default
	// "x-version".
	VersionHeader string `json:"versionHeader"`
	// WorkerFilename is the program in each version's folder; default
	// "worker.js". A file ending in .js that is not executable is run with
	// node, as cluster-service runs it.
	WorkerFilename string `json:"workerFilename"`
	// Bindings are the public ports; default one, port 80, 2 workers.
	Bindings []Binding `json:"bindings"`
	// VersionPorts is the private range the versions listen on, "lo-hi";
	// default "11000-12000". Each version has one port, on 127.0.0.1.
	VersionPorts string `json:"versionPorts"`
	// NonDefaultWorkerCount is how many workers a version started on
	// demand gets; default 1.
	NonDefaultWorkerCount int `json:"nonDefaultWorkerCount"`
	// NonDefaultWorkerIdleTime is how long, in seconds, a version other
	// than the default may go without a request before it is stopped;
	// default 3600.
	NonDefaultWorkerIdleTime float64 `json:"nonDefaultWorkerIdleTime"`

	// flock's keys.

	// DefaultWorkerCount is how many workers the default version starts
	// with; default 2.
	DefaultWorkerCount int `json:"defaultWorkerCount"`
	// VersionStartTimeout is how long, in seconds, a request waits for
	// its version to start, and promote and version for theirs; default
	// 30. Past it the request gets a 503.
	VersionStartTimeout float64 `json:"versionStartTimeout"`
	// Ready is when a version's new worker counts as ready, as flock's
	// -ready: "notify" (sd_notify READY=1), "now", or a duration; default
	// "1s".
	Ready string `json:"ready"`
	// Env is added to every version's environment, beside PROXY_PORT.
	Env map[string]string `json:"env"`

	lo, hi int
	ready  time.Duration
}

// Binding is one public port, served by the proxy workers.
type Binding struct {
	Port int `json:"port"`
	// Host is the interface; default all of them (flock's key).
	Host string `json:"host"`
	// WorkerCount is how many proxy workers serve it; default 2. The
	// proxy workers serve every binding: there are as many as the largest
	// WorkerCount asks.
	WorkerCount int         `json:"workerCount"`
	TLSOptions  *TLSOptions `json:"tlsOptions"`
}

// TLSOptions make a binding HTTPS: files, relative to the config's folder.
type TLSOptions struct {
	Key  string `json:"key"`
	Cert string `json:"cert"`
	// Pem is a file holding both the certificate and its key, instead of
	// Key and Cert.
	Pem string `json:"pem"`
}

// ErrConfig is in every error about the config file's contents.
var ErrConfig = errors.New("proxy config")

// Load reads the config file at path and fills in the defaults.
func Load(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	c := &Config{}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(c); err != nil {
		return nil, fmt.Errorf("%w %s: %v", ErrConfig, path, err)
	}
	if c.File, err = filepath.Abs(path); err != nil {
		return nil, err
	}
	if err := c.resolve(); err != nil {
		return nil, fmt.Errorf("%w %s: %v", ErrConfig, path, err)
	}
	return c, nil
}

var versionName = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]*$`)

// checkVersion says why name cannot be a version (a folder's name), or nil.
func checkVersion(name string) error {
	if !versionName.MatchString(name) || len(name) > 100 {
		return fmt.Errorf("version %q: a version is a folder's name: letters, digits, '.', '_' and '-'", name)
	}
	return nil
}

func (c *Config) resolve() error {
	dir := filepath.Dir(c.File)
	switch {
	case c.VersionPath == "":
		c.VersionPath = dir
	case !filepath.IsAbs(c.VersionPath):
		c.VersionPath = filepath.Join(dir, c.VersionPath)
	}
	if c.VersionHeader == "" {
		c.VersionHeader = "x-version"
	}
	if c.WorkerFilename == "" {
		c.WorkerFilename = "worker.js"
	}
	if len(c.Bindings) == 0 {
		c.Bindings = []Binding{{Port: 80}}
	}
	for i := range c.Bindings {
		b := &c.Bindings[i]
		switch {
		case b.Port < 0 || b.Port > 65535:
			return fmt.Errorf("bindings[%d]: port %d: out of range", i, b.Port)
		case b.WorkerCount < 0:
			return fmt.Errorf("bindings[%d]: workerCount %d: must be at least 1", i, b.WorkerCount)
		case b.WorkerCount == 0:
			b.WorkerCount = 2
		}
		if t := b.TLSOptions; t != nil {
			for _, f := range []*string{&t.Key, &t.Cert, &t.Pem} {
				if *f != "" && !filepath.IsAbs(*f) {
					*f = filepath.Join(dir, *f)
				}
			}
			if t.Pem == "" && (t.Key == "" || t.Cert == "") {
				return fmt.Errorf("bindings[%d]: tlsOptions: want key and cert, or pem", i)
			}
			if _, err := t.load(); err != nil { // here, not in every proxy worker as it starts
				return fmt.Errorf("bindings[%d]: tlsOptions: %v", i, err)
			}
		}
	}
	if c.VersionPorts == "" {
		c.VersionPorts = "11000-12000"
	}
	lo, hi, ok := strings.Cut(c.VersionPorts, "-")
	var err1, err2 error
	c.lo, err1 = strconv.Atoi(strings.TrimSpace(lo))
	c.hi, err2 = strconv.Atoi(strings.TrimSpace(hi))
	if !ok || err1 != nil || err2 != nil || c.lo < 1 || c.hi > 65535 || c.lo > c.hi {
		return fmt.Errorf("versionPorts %q: want a range of ports, as \"11000-12000\"", c.VersionPorts)
	}
	if c.NonDefaultWorkerCount < 0 || c.DefaultWorkerCount < 0 {
		return fmt.Errorf("nonDefaultWorkerCount %d, defaultWorkerCount %d: must be at least 1", c.NonDefaultWorkerCount, c.DefaultWorkerCount)
	}
	c.NonDefaultWorkerCount = max(c.NonDefaultWorkerCount, 1)
	if c.DefaultWorkerCount == 0 {
		c.DefaultWorkerCount = 2
	}
	if c.NonDefaultWorkerIdleTime < 0 || c.VersionStartTimeout < 0 {
		return fmt.Errorf("nonDefaultWorkerIdleTime %v, versionStartTimeout %v: seconds, not negative", c.NonDefaultWorkerIdleTime, c.VersionStartTimeout)
	}
	if c.NonDefaultWorkerIdleTime == 0 {
		c.NonDefaultWorkerIdleTime = 3600
	}
	if c.VersionStartTimeout == 0 {
		c.VersionStartTimeout = 30
	}
	switch c.Ready {
	case "":
		c.ready = 0 // flock's default
	case "notify":
		c.ready = flock.ReadyNotify
	case "now":
		c.ready = flock.ReadyAtOnce
	default:
		d, err := time.ParseDuration(c.Ready)
		if err != nil || d <= 0 {
			return fmt.Errorf("ready %q: want notify, now or a duration", c.Ready)
		}
		c.ready = d
	}
	if c.DefaultVersion != "" {
		if err := checkVersion(c.DefaultVersion); err != nil {
			return fmt.Errorf("defaultVersion: %v", err)
		}
	}
	return nil
}

func (c *Config) idleTime() time.Duration {
	return time.Duration(c.NonDefaultWorkerIdleTime * float64(time.Second))
}

func (c *Config) startTimeout() time.Duration {
	return time.Duration(c.VersionStartTimeout * float64(time.Second))
}

// workers is how many proxy workers serve the bindings.
func (c *Config) workers() int {
	n := 1
	for _, b := range c.Bindings {
		n = max(n, b.WorkerCount)
	}
	return n
}

// versionDir is the folder of a version, if there is one.
func (c *Config) versionDir(version string) (string, error) {
	dir := filepath.Join(c.VersionPath, version)
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return "", fmt.Errorf("%w %q: no folder %s", ErrUnknownVersion, version, dir)
	}
	return dir, nil
}

// program is how a version's workers run, listening on port.
func (c *Config) program(version string, port int) (flock.Program, error) {
	dir, err := c.versionDir(version)
	if err != nil {
		return flock.Program{}, err
	}
	file := filepath.Join(dir, c.WorkerFilename)
	p := flock.Program{Path: file, Dir: dir, Name: version, Ready: c.ready,
		Env: []string{"PROXY_PORT=" + strconv.Itoa(port), "PROXY_VERSION=" + version}}
	if st, err := os.Stat(file); err == nil && st.Mode()&0o111 == 0 && strings.HasSuffix(file, ".js") {
		p.Path, p.Args = "node", []string{file}
	}
	for k, v := range c.Env {
		p.Env = append(p.Env, k+"="+v)
	}
	return p, nil
}

// saveDefault rewrites the file's defaultVersion, and nothing else (its
// keys come out sorted, as JSON objects are read), atomically: a new
// file, with the old one's mode and owner, renamed over the old one (the
// file a symbolic link points to, if it is one), and the folder synced.
func (c *Config) saveDefault(version string) error {
	path, err := filepath.EvalSymlinks(c.File)
	if err != nil {
		return err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(b, &keys); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	keys["defaultVersion"], _ = json.Marshal(version)
	out, err := json.MarshalIndent(keys, "", "  ")
	if err != nil {
		return err
	}
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".flock-proxy-*.json")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // once renamed, there is nothing to remove
	err = writeAll(tmp, append(out, '\n'), st)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	dir, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer dir.Close()
	return dir.Sync()
}

// writeAll writes b to f, with the mode and owner of st, and syncs it.
func writeAll(f *os.File, b []byte, st os.FileInfo) error {
	if _, err := f.Write(b); err != nil {
		return err
	}
	if err := f.Chmod(st.Mode().Perm()); err != nil {
		return err
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && (int(sys.Uid) != os.Getuid() || int(sys.Gid) != os.Getgid()) {
		if err := f.Chown(int(sys.Uid), int(sys.Gid)); err != nil {
			return err
		}
	}
	return f.Sync()
}
