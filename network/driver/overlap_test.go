package driver

import (
	"fmt"
	"net/netip"
	"testing"

	"pgregory.net/rapid"
)

// TestOverlappingMatchesPairwise: the sorted neighbour check finds an
// overlap exactly when comparing every pair does.
func TestOverlappingMatchesPairwise(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		var rs []ownedRange
		for i := range rapid.IntRange(0, 30).Draw(t, "n") {
			addr := netip.AddrFrom4([4]byte{10, byte(rapid.IntRange(0, 3).Draw(t, "b")), byte(rapid.IntRange(0, 255).Draw(t, "c")), 0})
			p := netip.PrefixFrom(addr, rapid.IntRange(14, 24).Draw(t, "bits")).Masked()
			rs = append(rs, ownedRange{p, fmt.Sprint("r", i)})
		}
		pairwise := false
		for i := range rs {
			for j := range i {
				pairwise = pairwise || rs[i].prefix.Overlaps(rs[j].prefix)
			}
		}
		if got := overlapping(rs) != nil; got != pairwise {
			t.Fatalf("overlapping says %v, pairwise %v, for %v", got, pairwise, rs)
		}
	})
}
