package driver

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/names"
)

// Bounds on a Config, so that no request can make a driver render or
// start without limit.
const (
	MaxMembers = 64
	MaxVolumes = 256
	MaxExports = 32
	// MaxClients bounds the prefixes of one export rule.
	MaxClients = 64
	// MaxCopies bounds Layout.Copies and Volume.Copies (MooseFS's goals
	// go to 9).
	MaxCopies = 9
)

// Validate checks cfg whatever the system's state: names are DNS labels,
// addresses valid, the layout consistent with the members, volume names
// unique, export rules well formed and mounts naming listed volumes.
// Errors are errcode.InvalidArgument and name the field.
func (cfg *Config) Validate() error {
	if cfg == nil {
		return invalid("no config")
	}
	if err := cfg.Pool.Validate(); err != nil {
		return err
	}
	if err := names.Label(cfg.Self); err != nil {
		return invalid("self: %v", err)
	}
	if len(cfg.Volumes) > MaxVolumes {
		return invalid("pool %q: %d volumes; the limit is %d", cfg.Pool.Name, len(cfg.Volumes), MaxVolumes)
	}
	seen := map[string]bool{}
	for i := range cfg.Volumes {
		v := &cfg.Volumes[i]
		if err := v.Validate(&cfg.Pool); err != nil {
			return err
		}
		if seen[v.Name] {
			return invalid("pool %q: volume %q is listed twice", cfg.Pool.Name, v.Name)
		}
		seen[v.Name] = true
	}
	mounted := map[string]bool{}
	for _, m := range cfg.Mounts {
		if err := names.Label(m.Volume); err != nil {
			return invalid("mount: volume: %v", err)
		}
		if !seen[m.Volume] {
			return invalid("mount of volume %q: the config lists no such volume", m.Volume)
		}
		if mounted[m.Volume] {
			return invalid("volume %q is mounted twice", m.Volume)
		}
		mounted[m.Volume] = true
	}
	return nil
}

// Validate checks a pool: its name, members (unique names and addresses)
// and a layout that the members can hold.
func (p *Pool) Validate() error {
	if err := names.Label(p.Name); err != nil {
		return invalid("pool name: %v", err)
	}
	n := len(p.Members)
	if n == 0 || n > MaxMembers {
		return invalid("pool %q has %d members; give 1 to %d", p.Name, n, MaxMembers)
	}
	servers, addrs := map[string]bool{}, map[netip.Addr]bool{}
	for _, m := range p.Members {
		if err := names.Label(m.Server); err != nil {
			return invalid("pool %q: member: %v", p.Name, err)
		}
		if !m.Addr.IsValid() || m.Addr.IsUnspecified() || m.Addr.IsMulticast() || m.Addr.Zone() != "" {
			return invalid("pool %q: member %q: address %q is not a unicast address", p.Name, m.Server, m.Addr)
		}
		if servers[m.Server] || addrs[m.Addr] {
			return invalid("pool %q: member %q (%s) is listed twice", p.Name, m.Server, m.Addr)
		}
		servers[m.Server], addrs[m.Addr] = true, true
	}
	return p.Layout.validate(p.Name, n)
}

func (l Layout) validate(pool string, members int) error {
	where := fmt.Sprintf("pool %q: layout %s", pool, l.Kind)
	if l.Kind != Replicate && (l.Copies != 0 || l.Arbiter) {
		return invalid("%s: copies and arbiter are for a replicate layout", where)
	}
	if l.Kind != Disperse && l.Redundancy != 0 {
		return invalid("%s: redundancy is for a disperse layout", where)
	}
	switch l.Kind {
	case Single:
		if members != 1 {
			return invalid("%s: needs exactly 1 member, has %d", where, members)
		}
	case Distribute:
	case Replicate:
		if l.Copies < 2 || l.Copies > MaxCopies {
			return invalid("%s: copies %d; give 2 to %d", where, l.Copies, MaxCopies)
		}
		if l.Copies > members {
			return invalid("%s: copies %d is more than the %d servers given", where, l.Copies, members)
		}
		if l.Arbiter && l.Copies != 3 {
			return invalid("%s: an arbiter needs copies 3, not %d", where, l.Copies)
		}
	case Disperse:
		if members < 3 || l.Redundancy < 1 || 2*l.Redundancy >= members {
			return invalid("%s: redundancy %d over %d members; give 3 or more members and a redundancy under half of them", where, l.Redundancy, members)
		}
	default:
		return invalid("pool %q: unknown layout %q (use single, distribute, replicate or disperse)", pool, l.Kind)
	}
	return nil
}

// Validate checks a volume of pool p: its name, quota, copies and export
// rules.
func (v *Volume) Validate(p *Pool) error {
	if err := names.Label(v.Name); err != nil {
		return invalid("volume name: %v", err)
	}
	if v.QuotaBytes < 0 {
		return invalid("volume %q: quota %d is negative", v.Name, v.QuotaBytes)
	}
	if v.Copies < 0 || v.Copies > MaxCopies || v.Copies > len(p.Members) {
		return invalid("volume %q: copies %d; give 0 (the pool's) to %d, the servers given", v.Name, v.Copies, min(MaxCopies, len(p.Members)))
	}
	if len(v.Exports) > MaxExports {
		return invalid("volume %q: %d export rules; the limit is %d", v.Name, len(v.Exports), MaxExports)
	}
	for i, e := range v.Exports {
		if err := e.Validate(); err != nil {
			return invalid("volume %q: export rule %d: %v", v.Name, i+1, err)
		}
	}
	return nil
}

// Validate checks an export rule: 1 to MaxClients valid prefixes in
// canonical form (198.18.0.0/15, not 198.18.1.2/15) and an Access.
func (e Export) Validate() error {
	if len(e.Clients) == 0 || len(e.Clients) > MaxClients {
		return invalid("%d clients; give 1 to %d prefixes", len(e.Clients), MaxClients)
	}
	for _, c := range e.Clients {
		if !c.IsValid() || c.Addr().Zone() != "" {
			return invalid("client %q is not a prefix", c)
		}
		if c.Masked() != c {
			return invalid("client %s has host bits set; write %s", c, c.Masked())
		}
	}
	if e.Access != ReadWrite && e.Access != ReadOnly {
		return invalid("access %q; use rw or ro", e.Access)
	}
	return nil
}

// Allows returns the access exports give addr: the first rule that
// matches, read-write when there are no rules, and "" when rules exist and
// none matches.
func Allows(exports []Export, addr netip.Addr) Access {
	if len(exports) == 0 {
		return ReadWrite
	}
	for _, e := range exports {
		if slices.ContainsFunc(e.Clients, func(p netip.Prefix) bool { return p.Contains(addr.Unmap()) }) {
			return e.Access
		}
	}
	return ""
}

// Coordinator is the pool's first member, which forms it and holds its
// volumes.
func (p *Pool) Coordinator() Member { return p.Members[0] }

// Member returns server's membership, if it is a member.
func (p *Pool) Member(server string) (Member, bool) {
	i := slices.IndexFunc(p.Members, func(m Member) bool { return m.Server == server })
	if i < 0 {
		return Member{}, false
	}
	return p.Members[i], true
}

// Volume returns volume name of cfg, if listed.
func (cfg *Config) Volume(name string) (Volume, bool) {
	i := slices.IndexFunc(cfg.Volumes, func(v Volume) bool { return v.Name == name })
	if i < 0 {
		return Volume{}, false
	}
	return cfg.Volumes[i], true
}

// Check returns errcode.Unimplemented if cfg needs a feature caps lack,
// naming it; drivers call it after Validate.
func (caps Capabilities) Check(cfg *Config) error {
	p := &cfg.Pool
	if !slices.Contains(caps.Layouts, p.Layout.Kind) {
		return errcode.New(errcode.Unimplemented, "pool %q: this driver builds no %s layout (it builds %v)", p.Name, p.Layout.Kind, caps.Layouts)
	}
	if caps.MaxMembers > 0 && len(p.Members) > caps.MaxMembers {
		return errcode.New(errcode.Unimplemented, "pool %q: %d members; this driver takes at most %d", p.Name, len(p.Members), caps.MaxMembers)
	}
	if p.Layout.Arbiter && !caps.Arbiter {
		return errcode.New(errcode.Unimplemented, "pool %q: this driver has no arbiter", p.Name)
	}
	for _, v := range cfg.Volumes {
		switch {
		case v.QuotaBytes > 0 && !caps.Quota:
			return errcode.New(errcode.Unimplemented, "volume %q: this driver has no quota", v.Name)
		case v.Copies > 0 && !caps.VolumeCopies:
			return errcode.New(errcode.Unimplemented, "volume %q: this driver keeps copies per pool, not per volume", v.Name)
		case len(v.Exports) > 0 && !caps.Exports:
			return errcode.New(errcode.Unimplemented, "volume %q: this driver enforces no export rules", v.Name)
		}
	}
	if len(cfg.Mounts) > 0 && !caps.Mount {
		return errcode.New(errcode.Unimplemented, "pool %q: this server cannot mount %s volumes (no %s client)", p.Name, p.Name, caps.Client)
	}
	return nil
}

func invalid(format string, args ...any) error {
	return errcode.New(errcode.InvalidArgument, format, args...)
}

// Clone returns a deep copy of cfg.
func (cfg *Config) Clone() *Config {
	if cfg == nil {
		return nil
	}
	out := *cfg
	out.Pool.Members = slices.Clone(cfg.Pool.Members)
	out.Volumes = slices.Clone(cfg.Volumes)
	for i := range out.Volumes {
		out.Volumes[i].Exports = slices.Clone(out.Volumes[i].Exports)
		for j := range out.Volumes[i].Exports {
			out.Volumes[i].Exports[j].Clients = slices.Clone(out.Volumes[i].Exports[j].Clients)
		}
	}
	out.Mounts = slices.Clone(cfg.Mounts)
	return &out
}
