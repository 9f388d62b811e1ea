package drivertest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/lb/driver"
)

// FuzzCert returns a valid certificate for the TLS frontends of a
// renderer's fuzz target.
func FuzzCert() driver.Certificate {
	for _, f := range GoldenConfigs()["tls"].Frontends {
		if f.TLS != nil {
			return f.TLS.Certificates[0]
		}
	}
	panic("the tls golden config has no certificate")
}

// HostileDirs are instance directories under base that a driver rendering
// its directory into a configuration must refuse, at Open and at Render:
// each would end a line or a quoted string, hide in the configuration
// (line-separator and bidirectional characters), be invalid UTF-8 or be
// read as a variable. A driver adds its own: a line that injects one of
// its directives, and whatever else its syntax cannot carry.
func HostileDirs(base string) []string {
	return []string{
		base + "/lb\r",
		base + "/lb\x00",
		base + "/lb\u2028", // a line separator
		base + "/lb\u202e", // a bidirectional override
		base + "/\xff",
		base + "/lb$HOME",
	}
}

// RunBadDirTests checks that render refuses each of dirs, a relative
// directory and an unclean one (errcode.InvalidArgument, and no output:
// render returns an error if it had any), and that open refuses each of
// dirs with InvalidArgument naming the directory ("instance directory
// %q") and creates nothing in base.
func RunBadDirTests(t *testing.T, base string, dirs []string, render func(dir string) error, open func(ctx context.Context, dir string) (io.Closer, error)) {
	t.Helper()
	for _, dir := range append(dirs, "lb", "/tmp/../lb") {
		if err := render(dir); !errors.Is(err, errcode.InvalidArgument) {
			t.Errorf("Render with dir %q: %v; want InvalidArgument and no output", dir, err)
		}
	}
	for _, dir := range dirs {
		d, err := open(t.Context(), dir)
		if !errors.Is(err, errcode.InvalidArgument) || !strings.Contains(err.Error(), fmt.Sprintf("instance directory %.80q", dir)) {
			t.Errorf("Open(%q) = %v, want InvalidArgument naming the directory", dir, err)
		}
		if d != nil {
			d.Close()
		}
	}
	if entries, _ := os.ReadDir(base); len(entries) != 0 {
		t.Errorf("Open created %s", entries[0].Name())
	}
}

// CheckRenderedDir checks what a renderer made of instance directory dir,
// for fuzz targets: conf has as many lines as ref (the same config
// rendered for another directory: the directory adds no line), the quoted
// path that pathLine's first group matches reads back as want, and every
// file lies in a directory of its own under dir.
func CheckRenderedDir(t *testing.T, dir, conf, ref string, pathLine *regexp.Regexp, want string, files map[string][]byte) {
	t.Helper()
	if strings.Count(ref, "\n") != strings.Count(conf, "\n") {
		t.Fatalf("dir %q changes the number of lines:\n%s", dir, conf)
	}
	m := pathLine.FindStringSubmatch(conf)
	if m == nil {
		t.Fatalf("no line matches %v:\n%s", pathLine, conf)
	}
	if got, err := strconv.Unquote(m[1]); err != nil || got != want {
		t.Fatalf("path %s reads as %q (%v), want %q", m[1], got, err, want)
	}
	for file := range files {
		if filepath.Dir(filepath.Dir(file)) != dir {
			t.Fatalf("file %q outside %q", file, dir)
		}
	}
}
