package confpath_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/internal/confpath"
)

func TestChecks(t *testing.T) {
	for _, c := range []struct {
		p               string
		plain, quotable bool
	}{
		{"/run/muster/lb-1", true, true},
		{"/opt/a+b/x_y.z", true, true},
		{"/", true, true},
		{"/tmp/a b", false, true},
		{`/tmp/a"b\c'd#e;f{g}:h`, false, true},
		{"/tmp/é", false, true},
		{"relative", false, false},
		{"", false, false},
		{"/a/../b", false, false},
		{"/a//b", false, false},
		{"/a/", false, false},
		{"/" + strings.Repeat("a", confpath.MaxLen), false, false},
		{"/a\nb", false, false},
		{"/a\x00b", false, false},
		{"/a\rb", false, false},
		{"/a\tb", false, false},
		{"/a\x7fb", false, false},
		{"/a\u0085b", false, false},
		{"/a\u202eb", false, false},
		{"/a\u00a0b", false, false},
		{"/a\xffb", false, false},
		{"/a$b", false, false},
		{"/a${HOME}", false, false},
	} {
		for _, k := range []struct {
			name string
			err  error
			want bool
		}{{"Plain", confpath.Plain("dir", c.p), c.plain}, {"Quotable", confpath.Quotable("dir", c.p, ""), c.quotable}} {
			if k.want && k.err != nil {
				t.Errorf("%s(%q) = %v", k.name, c.p, k.err)
			}
			if !k.want && !errors.Is(k.err, errcode.InvalidArgument) {
				t.Errorf("%s(%q) = %v, want InvalidArgument", k.name, c.p, k.err)
			}
			if k.err != nil && (!strings.HasPrefix(k.err.Error(), "dir ") || strings.ContainsAny(k.err.Error(), "\n\x00")) {
				t.Errorf("%s(%q): error %q does not name the path, or is not one line", k.name, c.p, k.err)
			}
		}
	}
	if err := confpath.Quotable("dir", "/a,b", ","); !errors.Is(err, errcode.InvalidArgument) || !strings.Contains(err.Error(), `contains ','`) {
		t.Errorf("Quotable with a refused comma = %v", err)
	}
}

func TestQuote(t *testing.T) {
	for p, want := range map[string]string{
		"/run/x":       `"/run/x"`,
		"/a b":         `"/a b"`,
		`/a"b\c'd#e;f`: `"/a\"b\\c'd#e;f"`,
	} {
		if got := confpath.Quote(p); got != want {
			t.Errorf("Quote(%q) = %s, want %s", p, got, want)
		}
	}
}
