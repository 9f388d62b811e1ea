package names_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/names"
)

func TestLabel(t *testing.T) {
	for _, ok := range []string{"a", "web-1", "0", strings.Repeat("a", 63)} {
		if err := names.Label(ok); err != nil {
			t.Errorf("Label(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", "-", "Web", "a_b", "-a", "a-", "a.b", "a b", "a\nb", "a\x00", "ä", strings.Repeat("a", 64), "../x", "a/b"} {
		if err := names.Label(bad); !errors.Is(err, errcode.InvalidArgument) {
			t.Errorf("Label(%q) = %v, want InvalidArgument", bad, err)
		}
	}
	// A multi-byte character is named whole in the message.
	if err := names.Label("aé"); err == nil || !strings.Contains(err.Error(), `'é'`) {
		t.Errorf("Label(aé) = %v", err)
	}
}

func TestInterface(t *testing.T) {
	for _, ok := range []string{"eth0", "br-x_1.2", "ABCDEFGHIJKLMNO"} {
		if err := names.Interface(ok); err != nil {
			t.Errorf("Interface(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", ".", "..", "a/b", "a b", "a:b", "abcdefghijklmnop", "é"} {
		if err := names.Interface(bad); !errors.Is(err, errcode.InvalidArgument) {
			t.Errorf("Interface(%q) = %v, want InvalidArgument", bad, err)
		}
	}
}

func TestLink(t *testing.T) {
	seen := map[string]string{}
	for _, id := range []string{"a", "net-a", "eleven-char", "twelve-chars", "twelve-charsx", "twelve-charsy", strings.Repeat("z", 63)} {
		for _, prefix := range []string{"mbr-", "mvx-", "m"} {
			name := names.Link(prefix, id)
			if err := names.Interface(name); err != nil || !strings.HasPrefix(name, prefix) {
				t.Errorf("Link(%q, %q) = %q: %v", prefix, id, name, err)
			}
			if other, ok := seen[name]; ok {
				t.Errorf("ids %q and %q share link %q", other, id, name)
			}
			seen[name] = id
			if names.Link(prefix, id) != name {
				t.Errorf("Link(%q, %q) is not deterministic", prefix, id)
			}
		}
	}
	if got := names.Link("mbr-", "net-a"); got != "mbr-net-a" {
		t.Errorf("a short ID's link is %q, want mbr-net-a", got)
	}
}
