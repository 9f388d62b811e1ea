// Package ipam hands out addresses of a network's subnet: a range per server
// for the layer-3 modes, and leases of single addresses to containers. State
// lives in one JSON file, replaced atomically before any call returns, so
// leases survive restarts and an address is never handed out twice, even
// across processes (a file lock serialises them).
package ipam

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net/netip"
	"os"
	"slices"
	"sync"
	"syscall"

	"github.com/google/renameio/v2"

	"github.com/musterkit/muster/errcode"
)

// Pool allocates from one subnet. It is safe for concurrent use.
type Pool struct {
	path      string
	subnet    netip.Prefix
	rangeBits int

	mu sync.Mutex
}

// state is what the file holds.
type state struct {
	Subnet netip.Prefix            `json:"subnet"`
	Ranges map[string]netip.Prefix `json:"ranges,omitempty"` // by server
	Leases map[string]netip.Addr   `json:"leases,omitempty"` // by owner
	// Last is the address last leased in each range, by range: the next
	// lease starts after it.
	Last map[string]netip.Addr `json:"last,omitempty"`
}

// Options configure Open. The zero value is usable.
type Options struct {
	// RangeBits is the prefix length of each server's range; default 24,
	// or the subnet's own length plus 4 if that is longer, and at most
	// what leaves two host bits.
	RangeBits int
}

// Open opens the pool kept in the file at path, creating it for subnet if
// it does not exist. A file kept for another subnet is
// errcode.FailedPrecondition.
func Open(path string, subnet netip.Prefix, opts *Options) (*Pool, error) {
	if !subnet.IsValid() || subnet != subnet.Masked() {
		return nil, errcode.New(errcode.InvalidArgument, "ipam: subnet %v is not a masked prefix", subnet)
	}
	p := &Pool{path: path, subnet: subnet, rangeBits: min(max(24, subnet.Bits()+4), subnet.Addr().BitLen()-2)}
	if opts != nil && opts.RangeBits != 0 {
		p.rangeBits = opts.RangeBits
	}
	if p.rangeBits < subnet.Bits() || p.rangeBits > subnet.Addr().BitLen()-2 {
		return nil, errcode.New(errcode.InvalidArgument, "ipam: range length /%d does not fit in %v", p.rangeBits, subnet)
	}
	return p, p.update(func(*state) error { return nil })
}

// Subnet returns the pool's subnet.
func (p *Pool) Subnet() netip.Prefix { return p.subnet }

// Range returns server's range, allocating the lowest free one the first
// time. errcode.Unavailable when every range is taken.
func (p *Pool) Range(server string) (netip.Prefix, error) {
	var out netip.Prefix
	err := p.update(func(s *state) error {
		if r, ok := s.Ranges[server]; ok {
			out = r
			return nil
		}
		taken := slices.Collect(maps.Values(s.Ranges))
		for r := netip.PrefixFrom(p.subnet.Addr(), p.rangeBits); p.subnet.Contains(r.Addr()); r = nextPrefix(r) {
			if !slices.Contains(taken, r) {
				s.Ranges[server], out = r, r
				return nil
			}
		}
		return errcode.New(errcode.Unavailable, "ipam: every /%d range of %v is taken", p.rangeBits, p.subnet)
	})
	return out, err
}

// ReleaseRange frees server's range. Leases inside it are kept; release
// them first. Releasing an unknown server's range does nothing.
func (p *Pool) ReleaseRange(server string) error {
	return p.update(func(s *state) error {
		delete(s.Ranges, server)
		return nil
	})
}

// Lease returns owner's address, allocating the first time the first free
// host address of within after the one it leased last, wrapping around
// (so that an address just released is not handed out again at once,
// while peers may still hold its old MAC address in their neighbour
// tables): never within's network address, its first host address (the
// gateway, which servers' bridges hold) or, in IPv4, its broadcast
// address. within must lie in the subnet. errcode.Unavailable
// when within is full; errcode.FailedPrecondition if owner holds an
// address outside within.
func (p *Pool) Lease(owner string, within netip.Prefix) (netip.Addr, error) {
	var out netip.Addr
	err := p.update(func(s *state) error {
		if !within.IsValid() || within != within.Masked() || !p.subnet.Contains(within.Addr()) || within.Bits() < p.subnet.Bits() {
			return errcode.New(errcode.InvalidArgument, "ipam: %v is not a range of %v", within, p.subnet)
		}
		if a, ok := s.Leases[owner]; ok {
			if !within.Contains(a) {
				return errcode.New(errcode.FailedPrecondition, "ipam: %q holds %v, outside %v", owner, a, within)
			}
			out = a
			return nil
		}
		used := map[netip.Addr]bool{}
		for _, a := range s.Leases {
			used[a] = true
		}
		first, last := within.Addr().Next().Next(), lastAddr(within)
		usable := func(a netip.Addr) bool { return a.IsValid() && within.Contains(a) && !(a.Is4() && a == last) }
		start := first
		if prev, ok := s.Last[within.String()]; ok && usable(prev.Next()) {
			start = prev.Next()
		}
		// From start to the end of the range, then from its first address.
		for _, from := range []netip.Addr{start, first} {
			for a := from; usable(a); a = a.Next() {
				if !used[a] {
					if s.Last == nil {
						s.Last = map[string]netip.Addr{}
					}
					s.Leases[owner], s.Last[within.String()], out = a, a, a
					return nil
				}
			}
		}
		return errcode.New(errcode.Unavailable, "ipam: %v has no free address", within)
	})
	return out, err
}

// Release frees owner's lease. Releasing an owner without one does nothing.
func (p *Pool) Release(owner string) error {
	return p.update(func(s *state) error {
		delete(s.Leases, owner)
		return nil
	})
}

// Leases returns every lease by owner.
func (p *Pool) Leases() (map[string]netip.Addr, error) {
	var out map[string]netip.Addr
	err := p.update(func(s *state) error {
		out = maps.Clone(s.Leases)
		return nil
	})
	return out, err
}

// update runs f on the state under the process's and the file's locks and
// writes the state back atomically if f changed it.
func (p *Pool) update(f func(*state) error) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	lock, err := os.OpenFile(p.path+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("ipam: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("ipam: lock: %w", err)
	}
	s := &state{Subnet: p.subnet, Ranges: map[string]netip.Prefix{}, Leases: map[string]netip.Addr{}}
	data, err := os.ReadFile(p.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		data = nil
	case err != nil:
		return fmt.Errorf("ipam: %w", err)
	default:
		if err := json.Unmarshal(data, s); err != nil {
			return errcode.New(errcode.Internal, "ipam: %s is corrupt: %w", p.path, err)
		}
		if s.Subnet != p.subnet {
			return errcode.New(errcode.FailedPrecondition, "ipam: %s holds subnet %v, not %v", p.path, s.Subnet, p.subnet)
		}
	}
	if err := f(s); err != nil {
		return err
	}
	out, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	if string(out) == string(data) {
		return nil
	}
	return renameio.WriteFile(p.path, out, 0o600)
}

// nextPrefix returns the prefix of the same length right after p, or an
// invalid prefix past the end of the address space.
func nextPrefix(p netip.Prefix) netip.Prefix {
	next := lastAddr(p).Next()
	if !next.IsValid() {
		return netip.Prefix{}
	}
	return netip.PrefixFrom(next, p.Bits())
}

// lastAddr returns the highest address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}
