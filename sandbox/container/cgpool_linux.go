//go:build linux

package container

import (
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/cgroups/manager"
)

// Instance cgroups made ahead for direct starts. Making an instance's
// cgroup (a directory in every hierarchy, its limits, its device rules)
// does not depend on the start, and took a quarter of a direct start
// (docs/sandbox.md, "Where the time goes"). The runtime keeps a few made
// per tenant and limits; a start takes one and its shim joins it itself,
// and the runtime makes the replacement once the started instance is up.
// A start that finds none makes its own.

// Bounds of the cgroup pool: ready cgroups per tenant and limits, and in
// all.
const (
	cgroupSpares   = 2
	maxCgroupsPool = 64
)

// readyCgroup is an instance cgroup with its limits set and no process.
type readyCgroup struct {
	m     cgroups.Manager
	cg    *cgroups.Cgroup
	paths []string // the cgroup's directory in each hierarchy, no repeats
	// optPaths are its directories in named hierarchies (name=systemd,
	// and the unified one of a hybrid layout), which the manager's
	// Apply(pid) joins as it can and without failing.
	optPaths []string
}

type cgroupPool struct {
	mu      sync.Mutex
	ready   map[string][]*readyCgroup // by cgroupKey
	filling map[string]int
	total   int // ready and being made, all keys
	closed  bool
	bg      sync.WaitGroup
	taken   uint64 // starts served from the pool
}

func newCgroupPool() *cgroupPool {
	return &cgroupPool{ready: map[string][]*readyCgroup{}, filling: map[string]int{}}
}

// cgroupKey says which starts a ready cgroup can serve: the same tenant
// and the same limits.
func cgroupKey(t *tenant, res *cgroups.Resources) string {
	k := t.name + "\x00" + strconv.FormatInt(res.Memory, 10) + "\x00" + strconv.FormatInt(res.CpuQuota, 10) + "\x00" + strconv.FormatUint(res.CpuPeriod, 10)
	if res.PidsLimit != nil {
		k += "\x00" + strconv.FormatInt(*res.PidsLimit, 10)
	}
	for _, d := range res.Devices {
		k += "\x00" + d.CgroupString()
	}
	return k
}

// take returns a ready cgroup for key, or nil.
func (p *cgroupPool) take(key string) *readyCgroup {
	p.mu.Lock()
	defer p.mu.Unlock()
	rs := p.ready[key]
	if len(rs) == 0 {
		return nil
	}
	c := rs[len(rs)-1]
	p.ready[key] = rs[:len(rs)-1]
	p.total--
	p.taken++
	return c
}

// refill makes cgroups for key in the background until cgroupSpares are
// ready or being made, within maxCgroupsPool.
func (p *cgroupPool) refill(key string, newCgroup func() (*readyCgroup, error), warn func(error)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for !p.closed && len(p.ready[key])+p.filling[key] < cgroupSpares && p.total < maxCgroupsPool {
		p.filling[key]++
		p.total++
		p.bg.Add(1)
		go func() {
			defer p.bg.Done()
			c, err := newCgroup()
			p.mu.Lock()
			p.filling[key]--
			if p.filling[key] == 0 {
				delete(p.filling, key)
			}
			if err == nil && !p.closed {
				p.ready[key] = append(p.ready[key], c)
				c = nil
			} else {
				p.total--
			}
			p.mu.Unlock()
			if err != nil {
				warn(err)
			}
			if c != nil {
				_ = c.m.Destroy()
			}
		}()
	}
}

// close removes the ready cgroups, once those being made are done.
func (p *cgroupPool) close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.bg.Wait()
	p.mu.Lock()
	var all []*readyCgroup
	for k, rs := range p.ready {
		all = append(all, rs...)
		delete(p.ready, k)
	}
	p.total = 0
	p.mu.Unlock()
	for _, c := range all {
		_ = c.m.Destroy()
	}
}

func (p *cgroupPool) stats() (ready int, taken uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, rs := range p.ready {
		ready += len(rs)
	}
	return ready, p.taken
}

// makeCgroup creates an instance cgroup below t's, in every hierarchy,
// and sets res on it (limits and device rules). No process is in it.
func (r *Runtime) makeCgroup(t *tenant, res *cgroups.Resources) (_ *readyCgroup, err error) {
	name := "c" + r.tag + "-g" + strconv.FormatUint(r.seq.Add(1), 10)
	cg := &cgroups.Cgroup{Path: filepath.Join("/", r.opts.CgroupParent, t.cgroup, name), Resources: res}
	// The instance's cgroup is below the tenant's in every hierarchy:
	// finding the hierarchies again (manager.New parses mountinfo per
	// controller) is not needed.
	paths := make(map[string]string, len(t.paths))
	var dirs, opt []string
	v2 := cgroups.IsCgroup2UnifiedMode()
	for k, p := range t.paths {
		paths[k] = filepath.Join(p, name)
		named := !v2 && (k == "" || k == "misc" || strings.HasPrefix(k, "name="))
		switch {
		case named && !slices.Contains(opt, paths[k]):
			opt = append(opt, paths[k])
		case !named && !slices.Contains(dirs, paths[k]):
			dirs = append(dirs, paths[k])
		}
	}
	slices.Sort(opt)
	slices.Sort(dirs)
	m, err := manager.NewWithPaths(cg, paths)
	if err != nil {
		return nil, fmt.Errorf("cgroup %s: %w", cg.Path, err)
	}
	defer func() {
		if err != nil {
			_ = m.Destroy()
		}
	}()
	if err := m.Apply(-1); err != nil {
		return nil, fmt.Errorf("cgroup %s: %w", cg.Path, err)
	}
	if err := m.Set(res); err != nil {
		return nil, fmt.Errorf("cgroup %s: limits: %w", cg.Path, err)
	}
	return &readyCgroup{m: m, cg: cg, paths: dirs, optPaths: opt}, nil
}
