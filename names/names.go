// Package names holds the naming rules every Muster package and driver
// shares: DNS labels for the names of containers, images, servers,
// networks and other named things; Linux interface names; and the one
// scheme by which drivers name the links they create. Each check returns
// nil or an error with code errcode.InvalidArgument that names the
// offending character, so a value that passes is safe in a file name, a
// host name, a rendered configuration and a command line.
package names

import (
	"crypto/sha256"
	"encoding/hex"

	"github.com/musterkit/muster/errcode"
)

// MaxInterface is the longest Linux interface name, in bytes (IFNAMSIZ
// less its terminating NUL).
const MaxInterface = 15

// Label returns nil if s is an RFC 1123 DNS label: 1 to 63 characters of
// lowercase letters, digits and '-', neither starting nor ending with '-'.
func Label(s string) error {
	if s == "" {
		return errcode.New(errcode.InvalidArgument, "name is empty")
	}
	if len(s) > 63 {
		return errcode.New(errcode.InvalidArgument, "name %.20q... is %d bytes long; the limit is 63", s, len(s))
	}
	for _, c := range s {
		if c != '-' && !lowerAlnum(c) {
			return errcode.New(errcode.InvalidArgument, "name %q contains %q; use lowercase letters a-z, digits and '-'", s, c)
		}
	}
	if s[0] == '-' || s[len(s)-1] == '-' {
		return errcode.New(errcode.InvalidArgument, "name %q starts or ends with '-'", s)
	}
	return nil
}

// Interface returns nil if s is a Linux interface name: 1 to 15 bytes of
// ASCII letters, digits, '-', '_' and '.', and neither "." nor "..".
func Interface(s string) error {
	if s == "" || len(s) > MaxInterface || s == "." || s == ".." {
		return errcode.New(errcode.InvalidArgument, "interface name %.80q must be 1 to %d bytes, and not \".\" or \"..\"", s, MaxInterface)
	}
	for _, c := range s {
		if !lowerAlnum(c) && !('A' <= c && c <= 'Z') && c != '-' && c != '_' && c != '.' {
			return errcode.New(errcode.InvalidArgument, "interface name %q contains %q; use letters, digits, '-', '_' and '.'", s, c)
		}
	}
	return nil
}

// Link returns the name of the link a driver creates for the named thing
// id (a Label): prefix (which the driver owns, such as "mbr-") and id if
// that fits an interface name, else prefix, id's first bytes, '_' (which
// no Label holds, so the two forms never meet) and six hex digits of id's
// SHA-256, 15 bytes in all. prefix must be a valid interface name of at
// most 4 bytes.
func Link(prefix, id string) string {
	if name := prefix + id; len(name) <= MaxInterface {
		return name
	}
	sum := sha256.Sum256([]byte(id))
	keep := MaxInterface - len(prefix) - 1 - 6
	return prefix + id[:keep] + "_" + hex.EncodeToString(sum[:3])
}

func lowerAlnum(c rune) bool { return 'a' <= c && c <= 'z' || '0' <= c && c <= '9' }
