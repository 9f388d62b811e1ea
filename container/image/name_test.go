package image

import (
	"errors"
	"strings"
	"testing"

	"github.com/musterkit/muster/errcode"
)

func TestValidName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"a", true},
		{"web", true},
		{"web-1", true},
		{"0", true},
		{"1web", true},
		{"a-b-c-9", true},
		{strings.Repeat("a", 63), true},
		{strings.Repeat("a", 64), false},
		{"", false},
		{"-web", false},
		{"web-", false},
		{"-", false},
		{"Web", false},
		{"web_1", false},
		{"web.local", false},
		{"web 1", false},
		{"../x", false},
		{"a/b", false},
		{"wéb", false},
		{"web\x00", false},
		{"web\n", false},
	} {
		err := ValidName(tc.name)
		if tc.ok && err != nil {
			t.Errorf("ValidName(%q) = %v, want nil", tc.name, err)
		}
		if !tc.ok && !errors.Is(err, errcode.InvalidArgument) {
			t.Errorf("ValidName(%q) = %v, want InvalidArgument", tc.name, err)
		}
	}
}

func TestManifestValidate(t *testing.T) {
	good := Manifest{Name: "web", Digest: "sha256:" + strings.Repeat("ab", 32), Size: 10, Arch: "amd64",
		Labels: map[string]string{"org.example/team": "core", "v": ""}}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, change := range map[string]func(*Manifest){
		"bad name":         func(m *Manifest) { m.Name = "Web" },
		"no digest":        func(m *Manifest) { m.Digest = "" },
		"short digest":     func(m *Manifest) { m.Digest = "sha256:abc" },
		"uppercase digest": func(m *Manifest) { m.Digest = "sha256:" + strings.Repeat("AB", 32) },
		"other algorithm":  func(m *Manifest) { m.Digest = "sha512:" + strings.Repeat("ab", 32) },
		"negative size":    func(m *Manifest) { m.Size = -1 },
		"no arch":          func(m *Manifest) { m.Arch = "" },
		"empty label key":  func(m *Manifest) { m.Labels = map[string]string{"": "x"} },
		"label key space":  func(m *Manifest) { m.Labels = map[string]string{"a b": "x"} },
		"label key dash":   func(m *Manifest) { m.Labels = map[string]string{"-a": "x"} },
		"label control":    func(m *Manifest) { m.Labels = map[string]string{"a": "x\x1b[31m"} },
		"label long value": func(m *Manifest) { m.Labels = map[string]string{"a": strings.Repeat("x", 1025)} },
		"label bad utf8":   func(m *Manifest) { m.Labels = map[string]string{"a": "\xff"} },
		"label bidi value": func(m *Manifest) { m.Labels = map[string]string{"a": "exe.\u202etxt"} },
		"label bidi key":   func(m *Manifest) { m.Labels = map[string]string{"a\u202e": "x"} },
		"label isolate":    func(m *Manifest) { m.Labels = map[string]string{"a": "x\u2067y"} },
		"label zero width": func(m *Manifest) { m.Labels = map[string]string{"a": "pay\u200bpal"} },
		"label bom":        func(m *Manifest) { m.Labels = map[string]string{"a": "\ufeffx"} },
		"label nel":        func(m *Manifest) { m.Labels = map[string]string{"a": "x\u0085y"} },
		"label line sep":   func(m *Manifest) { m.Labels = map[string]string{"a": "x\u2028y"} },
	} {
		m := good
		change(&m)
		if err := m.Validate(); !errors.Is(err, errcode.InvalidArgument) {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
	// The error names the character escaped, never the raw override.
	m := good
	m.Labels = map[string]string{"a": "exe.\u202etxt"}
	if err := m.Validate(); err == nil || !strings.Contains(err.Error(), `'\u202e' (U+202E)`) || strings.ContainsRune(err.Error(), '\u202e') {
		t.Errorf("bidi label error = %v, want it to name '\\u202e' (U+202E), escaped", err)
	}
	// Printable text in any script stays allowed.
	m.Labels = map[string]string{"a": "Café 日本語 🚀 x-y_z/1.0"}
	if err := m.Validate(); err != nil {
		t.Errorf("printable label refused: %v", err)
	}
}
