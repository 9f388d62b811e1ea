package driver

import (
	"errors"
	"fmt"
	"maps"
	"path"
	"regexp"
	"slices"
	"strings"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/names"
)

// Validate reports the first problem with spec as an errcode.InvalidArgument
// error. A valid spec is safe to put in a configuration file: every name is
// a DNS label or interface name, every path absolute and clean, and no
// string holds a control character.
func (s *Spec) Validate() error {
	if err := names.Label(s.Name); err != nil {
		return err
	}
	if err := ValidImageRef(s.Image); err != nil {
		return err
	}
	l := s.Limits
	if l.MemoryBytes < 0 || l.MilliCPU < 0 || l.Pids < 0 {
		return errcode.New(errcode.InvalidArgument, "limits must not be negative")
	}
	if l.MemoryBytes != 0 && l.MemoryBytes < 4<<20 {
		return errcode.New(errcode.InvalidArgument, "memory limit %d is below 4 MiB", l.MemoryBytes)
	}
	targets := map[string]bool{}
	if len(s.Mounts) > MaxMounts {
		return errcode.New(errcode.InvalidArgument, "%d mounts; at most %d", len(s.Mounts), MaxMounts)
	}
	for _, m := range s.Mounts {
		if err := m.validSource(); err != nil {
			return err
		}
		if err := validPath("mount target", m.Target); err != nil {
			return err
		}
		if m.Target == "/" {
			return errcode.New(errcode.InvalidArgument, "mount target must not be /")
		}
		if targets[m.Target] {
			return errcode.New(errcode.InvalidArgument, "mount target %q is used twice", m.Target)
		}
		targets[m.Target] = true
	}
	ifaces := map[string]bool{}
	for i, n := range s.Networks {
		if err := names.Interface(n.Bridge); err != nil {
			return fmt.Errorf("network %d bridge: %w", i, err)
		}
		name := n.InterfaceName(i)
		if err := names.Interface(name); err != nil {
			return fmt.Errorf("network %d interface: %w", i, err)
		}
		if ifaces[name] {
			return errcode.New(errcode.InvalidArgument, "interface %q is used twice", name)
		}
		ifaces[name] = true
		if n.Address.IsValid() && n.Address.Addr().Zone() != "" {
			return errcode.New(errcode.InvalidArgument, "network %d address %s has a zone", i, n.Address)
		}
		if n.Gateway.IsValid() {
			if !n.Address.IsValid() {
				return errcode.New(errcode.InvalidArgument, "network %d has a gateway but no address", i)
			}
			if !n.Address.Contains(n.Gateway) || n.Gateway == n.Address.Addr() {
				return errcode.New(errcode.InvalidArgument, "network %d gateway %s is not another address in %s", i, n.Gateway, n.Address.Masked())
			}
		}
		if n.MTU != 0 && (n.MTU < 576 || n.MTU > 65535) {
			return errcode.New(errcode.InvalidArgument, "network %d MTU %d is outside 576..65535", i, n.MTU)
		}
	}
	return ValidLabels(s.Labels)
}

// InterfaceName returns the interface's name inside the container: n.Interface,
// or eth<index> when it is empty.
func (n Network) InterfaceName(index int) string {
	if n.Interface != "" {
		return n.Interface
	}
	return fmt.Sprintf("eth%d", index)
}

var digestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// ValidImageRef accepts an image name (a DNS label) or a digest
// "sha256:<64 lowercase hex>".
func ValidImageRef(ref string) error {
	if strings.HasPrefix(ref, "sha256:") {
		if !digestRE.MatchString(ref) {
			return errcode.New(errcode.InvalidArgument, "image digest %q is not sha256:<64 hex digits>", ref)
		}
		return nil
	}
	if err := names.Label(ref); err != nil {
		return fmt.Errorf("image reference: %w", err)
	}
	return nil
}

// Label caps. A key and a value follow Kubernetes' rules (see ValidLabels);
// Kubernetes caps neither the number of labels nor their total size, only
// annotations (256 KiB in all). Labels here are selectors that every List
// carries, not storage, so a container gets at most MaxLabels of them
// whose keys and values add up to at most MaxLabelBytes: far above what
// real workloads carry (the discovery Publisher uses 5), and small enough
// that a thousand maximal containers list in 16 MiB.
const (
	MaxLabels         = 64
	MaxLabelBytes     = 16 << 10
	MaxLabelKeyPrefix = 253 // a DNS subdomain
	MaxLabelName      = 63
	MaxLabelValue     = 63
)

// ValidLabels accepts labels shaped like Kubernetes labels, at most
// MaxLabels of them whose keys and values total at most MaxLabelBytes
// bytes. A key is an optional prefix and '/', then a name; the prefix is a
// DNS subdomain (DNS labels joined by '.', at most 253 bytes in all); the
// name is 1 to 63 bytes of ASCII letters, digits, '-', '_' and '.',
// starting and ending with a letter or digit. A value is empty or shaped
// like a name. The error, with code errcode.InvalidArgument, says which
// rule a label breaks.
func ValidLabels(labels map[string]string) error {
	if len(labels) > MaxLabels {
		return errcode.New(errcode.InvalidArgument, "%d labels; the limit is %d", len(labels), MaxLabels)
	}
	total := 0
	for k, v := range labels {
		total += len(k) + len(v)
	}
	if total > MaxLabelBytes {
		return errcode.New(errcode.InvalidArgument, "labels hold %d bytes of keys and values; the limit is %d", total, MaxLabelBytes)
	}
	for _, k := range slices.Sorted(maps.Keys(labels)) { // the same error every time
		if err := validLabelKey(k); err != nil {
			return err
		}
		if v := labels[k]; v != "" {
			if err := validLabelName(v, MaxLabelValue); err != nil {
				return errcode.New(errcode.InvalidArgument, "label %s: value %.80q: %s", k, v, err)
			}
		}
	}
	return nil
}

// validLabelKey checks a key: [prefix/]name.
func validLabelKey(k string) error {
	prefix, name, hasPrefix := strings.Cut(k, "/")
	if !hasPrefix {
		name = prefix
	}
	if err := validLabelName(name, MaxLabelName); err != nil {
		return errcode.New(errcode.InvalidArgument, "label key %.80q: name: %s", k, err)
	}
	if !hasPrefix {
		return nil
	}
	if len(prefix) > MaxLabelKeyPrefix {
		return errcode.New(errcode.InvalidArgument, "label key %.80q: prefix is %d bytes long; the limit is %d", k, len(prefix), MaxLabelKeyPrefix)
	}
	for part := range strings.SplitSeq(prefix, ".") {
		if err := names.Label(part); err != nil {
			return errcode.New(errcode.InvalidArgument, "label key %.80q: prefix is not a DNS subdomain (DNS labels joined by '.'): %w", k, err)
		}
	}
	return nil
}

// validLabelName checks a label name or non-empty value: 1 to max bytes of
// [A-Za-z0-9-_.], starting and ending with a letter or digit. Its error
// is a plain description, for the caller to wrap.
func validLabelName(s string, max int) error {
	switch {
	case s == "":
		return errors.New("is empty")
	case len(s) > max:
		return fmt.Errorf("is %d bytes long; the limit is %d", len(s), max)
	}
	for _, r := range s {
		if r >= 0x80 || !isAlnum(byte(r)) && r != '-' && r != '_' && r != '.' {
			return fmt.Errorf("contains %q; use ASCII letters, digits, '-', '_' and '.'", r)
		}
	}
	if !isAlnum(s[0]) || !isAlnum(s[len(s)-1]) {
		return errors.New("must start and end with a letter or digit")
	}
	return nil
}

func isAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

// validPath accepts an absolute, clean path without control characters,
// commas or whitespace runs that a configuration line could misread.
// MaxMounts bounds a Spec's mounts.
const MaxMounts = 64

// validSource checks that m names exactly one of a Source path and a
// pool/volume.
func (m Mount) validSource() error {
	if m.Volume == "" {
		return validPath("mount source", m.Source)
	}
	if m.Source != "" {
		return errcode.New(errcode.InvalidArgument, "mount of volume %q also names source %q; give one of them", m.Volume, m.Source)
	}
	pool, volume, ok := strings.Cut(m.Volume, "/")
	if !ok {
		return errcode.New(errcode.InvalidArgument, "mount volume %q: write pool/volume", m.Volume)
	}
	for _, n := range []string{pool, volume} {
		if err := names.Label(n); err != nil {
			return fmt.Errorf("mount volume %q: %w", m.Volume, err)
		}
	}
	return nil
}

func validPath(what, p string) error {
	if !path.IsAbs(p) || path.Clean(p) != p {
		return errcode.New(errcode.InvalidArgument, "%s %q must be an absolute, clean path", what, p)
	}
	for _, r := range p {
		if r < 0x20 || r == 0x7f || r == ',' || r == ' ' || r == '\t' || r == '#' || r == '=' || r == '\\' {
			return errcode.New(errcode.InvalidArgument, "%s %q holds a character that is not allowed (control, space, ',', '#', '=' or '\\')", what, p)
		}
	}
	return nil
}
