// Package confpath checks the paths drivers write into configuration files
// and command lines (instance directories, programs), so that no path can
// add a directive, end a quoted string or split an argument.
package confpath

import (
	"path/filepath"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/musterkit/muster/errcode"
)

// MaxLen is the longest path either check accepts, in bytes.
const MaxLen = 200

// Plain checks a path that a configuration holds unquoted: an absolute,
// clean path of at most MaxLen bytes of letters, digits, '/', '.', '_',
// '-' and '+'. Nothing else can appear, so it needs no quoting. what names
// the path in the error (errcode.InvalidArgument).
func Plain(what, p string) error {
	return check(what, p, "use letters, digits and /._-+", func(r rune) bool {
		return r < utf8.RuneSelf && (r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("/._-+", r))
	})
}

// Quotable checks a path that a configuration holds as a quoted string
// (Quote): an absolute, clean path of at most MaxLen bytes of printable
// UTF-8. It refuses control characters (newline, NUL, ...), invalid UTF-8,
// other non-printing characters (bidirectional controls, spaces other than
// ' '), '$' (HAProxy expands variables in socket addresses even when
// escaped, Nginx in certificate paths, and neither can quote it) and any
// character in refused (what a caller's command line cannot carry). what
// names the path in the error (errcode.InvalidArgument).
func Quotable(what, p, refused string) error {
	return check(what, p, "it cannot be written safely into a configuration or command line", func(r rune) bool {
		return unicode.IsPrint(r) && r != '$' && !strings.ContainsRune(refused, r)
	})
}

func check(what, p, hint string, ok func(rune) bool) error {
	if !filepath.IsAbs(p) || filepath.Clean(p) != p || len(p) > MaxLen {
		return errcode.New(errcode.InvalidArgument, "%s %.80q is not a clean absolute path of at most %d bytes", what, p, MaxLen)
	}
	if !utf8.ValidString(p) {
		return errcode.New(errcode.InvalidArgument, "%s %.80q is not valid UTF-8", what, p)
	}
	for _, r := range p {
		if !ok(r) {
			return errcode.New(errcode.InvalidArgument, "%s %.80q contains %q; %s", what, p, r, hint)
		}
	}
	return nil
}

// Quote returns p as a double-quoted string with backslashes and double
// quotes escaped by a backslash: the quoted-string syntax HAProxy and Nginx
// share, for a path Quotable accepted.
func Quote(p string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(p) + `"`
}
