package proxy

import (
	"errors"
	"fmt"
	"net"
	"strconv"

	"github.com/flockhq/flock"
)

// New makes the proxy of cfg; Run runs it.
func New(cfg *Config) *Proxy { return newProxy(cfg) }

// Run runs the proxy mode under one flock master: o with the bindings as
// its listeners (the first is Addr), as many proxy workers as the largest
// workerCount, and the default version as a worker group; the Proxy as an
// extension. In a worker, it serves the bindings. Add p.Command() to the
// command surface before, for the proxy command.
func (p *Proxy) Run(o flock.Options) error {
	cfg := p.cfg
	if o.Single {
		return errors.New("proxy: Single: the proxy mode runs a master, with proxy workers and the versions' workers")
	}
	o.Addr, o.Listeners = bindAddr(cfg.Bindings[0]), nil
	for i, b := range cfg.Bindings[1:] {
		o.Listeners = append(o.Listeners, flock.Listener{Name: listenerName(i + 1), Addr: bindAddr(b)})
	}
	o.Workers = cfg.workers()
	if def := cfg.DefaultVersion; def != "" && !flock.IsWorker() {
		// Checked here, so that a wrong config fails the start; the
		// extension starts it as the master listens, a group added while
		// running as every version (so that USR2 hands each down alike).
		if _, err := cfg.program(def, 0); err != nil {
			return fmt.Errorf("proxy: defaultVersion: %w", err)
		}
		if _, err := p.freePort(); err != nil {
			return fmt.Errorf("proxy: defaultVersion %s: %w", def, err)
		}
	}
	o.Extensions = append(o.Extensions, p)
	return flock.Run(o, newRouter(cfg).setup)
}

func bindAddr(b Binding) string { return net.JoinHostPort(b.Host, strconv.Itoa(b.Port)) }
