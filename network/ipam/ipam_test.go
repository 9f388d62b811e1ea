package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/musterkit/muster/errcode"
)

func open(t testing.TB, path, subnet string, opts *Options) *Pool {
	t.Helper()
	p, err := Open(path, netip.MustParsePrefix(subnet), opts)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRanges(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pool.json")
	p := open(t, path, "198.19.0.0/24", &Options{RangeBits: 26})
	want := map[string]string{"a": "198.19.0.0/26", "b": "198.19.0.64/26", "c": "198.19.0.128/26", "d": "198.19.0.192/26"}
	for _, s := range []string{"a", "b", "c", "d", "a"} {
		r, err := p.Range(s)
		if err != nil || r.String() != want[s] {
			t.Fatalf("Range(%s) = %v, %v; want %s", s, r, err, want[s])
		}
	}
	if _, err := p.Range("e"); !errors.Is(err, errcode.Unavailable) {
		t.Fatalf("Range of a full pool: %v", err)
	}
	if err := p.ReleaseRange("b"); err != nil {
		t.Fatal(err)
	}
	if r, err := p.Range("e"); err != nil || r.String() != "198.19.0.64/26" {
		t.Fatalf("Range after a release = %v, %v", r, err)
	}
	again := open(t, path, "198.19.0.0/24", &Options{RangeBits: 26})
	if r, err := again.Range("c"); err != nil || r.String() != want["c"] {
		t.Fatalf("after reopening, Range(c) = %v, %v", r, err)
	}
}

func TestLeases(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pool.json")
	p := open(t, path, "198.19.0.0/24", nil)
	within := netip.MustParsePrefix("198.19.0.0/29")
	got := map[netip.Addr]bool{}
	for i := range 5 {
		a, err := p.Lease(fmt.Sprint("c", i), within)
		if err != nil {
			t.Fatal(err)
		}
		got[a] = true
	}
	for _, a := range []string{"198.19.0.2", "198.19.0.3", "198.19.0.4", "198.19.0.5", "198.19.0.6"} {
		if !got[netip.MustParseAddr(a)] {
			t.Fatalf("leases %v lack %s (network, gateway and broadcast must stay free)", got, a)
		}
	}
	if _, err := p.Lease("c9", within); !errors.Is(err, errcode.Unavailable) {
		t.Fatalf("lease from a full range: %v", err)
	}
	if a, err := p.Lease("c3", within); err != nil || a != netip.MustParseAddr("198.19.0.5") {
		t.Fatalf("a second Lease for one owner = %v, %v; want the same address", a, err)
	}
	if _, err := p.Lease("c3", netip.MustParsePrefix("198.19.0.128/25")); !errors.Is(err, errcode.FailedPrecondition) {
		t.Fatalf("owner leasing from another range: %v", err)
	}
	if _, err := p.Lease("x", netip.MustParsePrefix("198.18.0.0/24")); !errors.Is(err, errcode.InvalidArgument) {
		t.Fatalf("lease outside the subnet: %v", err)
	}
	if err := p.Release("c1"); err != nil {
		t.Fatal(err)
	}
	reopened := open(t, path, "198.19.0.0/24", nil)
	if a, err := reopened.Lease("new", within); err != nil || a != netip.MustParseAddr("198.19.0.3") {
		t.Fatalf("after a release and a restart, Lease = %v, %v; want the freed 198.19.0.3", a, err)
	}
	leases, err := reopened.Leases()
	if err != nil || len(leases) != 5 {
		t.Fatalf("Leases = %v, %v", leases, err)
	}
}

func TestIPv6HasNoBroadcast(t *testing.T) {
	p := open(t, filepath.Join(t.TempDir(), "pool.json"), "fd00::/120", &Options{RangeBits: 126})
	r, err := p.Range("a")
	if err != nil {
		t.Fatal(err)
	}
	a, _ := p.Lease("x", r)
	b, _ := p.Lease("y", r)
	if a.String() != "fd00::2" || b.String() != "fd00::3" {
		t.Fatalf("IPv6 leases %v %v", a, b)
	}
}

func TestOpenRejects(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "pool.json")
	open(t, path, "198.19.0.0/24", nil)
	if _, err := Open(path, netip.MustParsePrefix("198.19.1.0/24"), nil); !errors.Is(err, errcode.FailedPrecondition) {
		t.Fatalf("reopening for another subnet: %v", err)
	}
	if _, err := Open(filepath.Join(dir, "x"), netip.MustParsePrefix("198.19.0.1/24"), nil); !errors.Is(err, errcode.InvalidArgument) {
		t.Fatalf("unmasked subnet: %v", err)
	}
	if _, err := Open(filepath.Join(dir, "y"), netip.MustParsePrefix("198.19.0.0/24"), &Options{RangeBits: 16}); !errors.Is(err, errcode.InvalidArgument) {
		t.Fatalf("range longer than the subnet: %v", err)
	}
	os.WriteFile(path, []byte("{not json"), 0o600)
	if _, err := Open(path, netip.MustParsePrefix("198.19.0.0/24"), nil); !errors.Is(err, errcode.Internal) {
		t.Fatalf("corrupt file: %v", err)
	}
}

// TestNoAddressTwiceAcrossProcesses leases concurrently through two pools
// on one file, as two processes would.
func TestNoAddressTwiceAcrossProcesses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pool.json")
	pools := []*Pool{open(t, path, "198.19.0.0/24", nil), open(t, path, "198.19.0.0/24", nil)}
	within := netip.MustParsePrefix("198.19.0.0/24")
	var mu sync.Mutex
	seen := map[netip.Addr]string{}
	var wg sync.WaitGroup
	for i, p := range pools {
		for j := range 4 {
			wg.Go(func() {
				for k := range 25 {
					owner := fmt.Sprintf("p%d-g%d-%d", i, j, k)
					a, err := p.Lease(owner, within)
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					if other, dup := seen[a]; dup {
						t.Errorf("%v leased to %s and %s", a, other, owner)
					}
					seen[a] = owner
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	if len(seen) != 200 {
		t.Fatalf("%d distinct leases, want 200", len(seen))
	}
}

// FuzzLeases runs a sequence of leases and releases and checks that no
// address is held twice and every one lies in its range.
func FuzzLeases(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 0x81, 4, 5})
	f.Fuzz(func(t *testing.T, ops []byte) {
		p := open(t, filepath.Join(t.TempDir(), "pool.json"), "198.19.0.0/28", nil)
		within := netip.MustParsePrefix("198.19.0.0/28")
		for _, op := range ops {
			owner := fmt.Sprint(op & 0x7f % 16)
			if op&0x80 != 0 {
				p.Release(owner)
				continue
			}
			if _, err := p.Lease(owner, within); err != nil && !errors.Is(err, errcode.Unavailable) {
				t.Fatal(err)
			}
		}
		leases, _ := p.Leases()
		seen := map[netip.Addr]bool{}
		for _, a := range leases {
			if seen[a] || !within.Contains(a) || a == within.Addr() || a == within.Addr().Next() {
				t.Fatalf("bad lease set %v", leases)
			}
			seen[a] = true
		}
	})
}

// TestReleasedAddressIsNotReusedAtOnce: leases go round the range, so an
// address just released (whose old MAC address peers may still cache) is
// handed out again only after the others; a full range still finds it.
func TestReleasedAddressIsNotReusedAtOnce(t *testing.T) {
	p := open(t, filepath.Join(t.TempDir(), "ipam.json"), "198.19.0.0/29", nil)
	within := netip.MustParsePrefix("198.19.0.0/29") // hosts .2 to .6 (.1 gateway, .7 broadcast)
	lease := func(owner string) string {
		t.Helper()
		a, err := p.Lease(owner, within)
		if err != nil {
			t.Fatalf("Lease(%s): %v", owner, err)
		}
		return a.String()
	}
	if a, b := lease("a"), lease("b"); a != "198.19.0.2" || b != "198.19.0.3" {
		t.Fatalf("first leases %s, %s", a, b)
	}
	p.Release("a")
	if c := lease("c"); c != "198.19.0.4" {
		t.Fatalf("after releasing .2 the next lease is %s; want .4, not the released .2", c)
	}
	lease("d")
	lease("e")
	if f := lease("f"); f != "198.19.0.2" {
		t.Fatalf("at the end of the range the lease is %s; want .2, wrapping round", f)
	}
	if _, err := p.Lease("g", within); !errors.Is(err, errcode.Unavailable) {
		t.Fatalf("a full range: %v", err)
	}
}
