package mountinfo

import (
	"slices"
	"testing"
)

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{`/mnt/a\040b`: "/mnt/a b", `/x\134y`: `/x\y`, `/plain`: "/plain", `/end\04`: `/end\04`, `\`: `\`} {
		if got := Unescape(in); got != want {
			t.Errorf("Unescape(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestRead(t *testing.T) {
	mounts, err := Read()
	if err != nil || !slices.ContainsFunc(mounts, func(m Mount) bool { return m.Target == "/" }) {
		t.Fatalf("Read = %d mounts, %v; want / among them", len(mounts), err)
	}
	under, err := Under("/")
	if err != nil || len(under) != len(mounts) || under[len(under)-1] != mounts[0].Target {
		t.Fatalf("Under(/) = %d, %v; want all %d, deepest first", len(under), err, len(mounts))
	}
}
