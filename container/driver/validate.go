package driver

import (
	"fmt"
	"path"
	"regexp"
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
	for _, m := range s.Mounts {
		if err := validPath("mount source", m.Source); err != nil {
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

var (
	labelKeyRE   = regexp.MustCompile(`^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$`)
	labelValueRE = regexp.MustCompile(`^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$`)
)

// ValidLabels accepts labels shaped like Kubernetes labels: a key is an
// optional DNS-subdomain prefix and '/', then a name of up to 63 letters,
// digits, '-', '_' and '.'; a value is empty or such a name.
func ValidLabels(labels map[string]string) error {
	for k, v := range labels {
		if !labelKeyRE.MatchString(k) {
			return errcode.New(errcode.InvalidArgument, "label key %q is not a valid key", k)
		}
		if !labelValueRE.MatchString(v) {
			return errcode.New(errcode.InvalidArgument, "label %q value %q is not a valid value", k, v)
		}
	}
	return nil
}

// validPath accepts an absolute, clean path without control characters,
// commas or whitespace runs that a configuration line could misread.
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
