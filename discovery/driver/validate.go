package driver

import (
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/names"
)

var (
	validID      = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,128}$`)
	validMetaKey = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
)

func bad(format string, args ...any) error {
	return errcode.New(errcode.InvalidArgument, format, args...)
}

// ValidService returns nil if name can be a service's name: a DNS label.
func ValidService(name string) error {
	if err := names.Label(name); err != nil {
		return bad("service name %q is not a DNS label", name)
	}
	return nil
}

// ValidID returns nil if id can be an instance's ID.
func ValidID(id string) error {
	if !validID.MatchString(id) || strings.Trim(id, ".") == "" {
		return bad("instance ID %q: want 1 to 128 letters, digits, '-', '_' and '.'", id)
	}
	return nil
}

// Validate reports the first problem with i as an errcode.InvalidArgument
// error. A valid instance is safe to put in a registry, a DNS answer or
// a request: see the fields' rules.
func (i *Instance) Validate() error {
	if i == nil {
		return bad("nil instance")
	}
	if err := ValidID(i.ID); err != nil {
		return err
	}
	if err := ValidService(i.Service); err != nil {
		return err
	}
	a, err := netip.ParseAddr(i.Address)
	if err != nil || a.Zone() != "" || a.IsUnspecified() || a.IsMulticast() {
		return bad("instance %s: address %q is not a unicast IP address", i.ID, i.Address)
	}
	if i.Port == 0 {
		return bad("instance %s: port 0", i.ID)
	}
	for j, t := range i.Tags {
		if names.Label(t) != nil {
			return bad("instance %s: tag %q is not a DNS label", i.ID, t)
		}
		if slices.Contains(i.Tags[:j], t) {
			return bad("instance %s: tag %q twice", i.ID, t)
		}
	}
	for k, v := range i.Meta {
		if !validMetaKey.MatchString(k) {
			return bad("instance %s: meta key %q: want 1 to 64 letters, digits, '-' and '_'", i.ID, k)
		}
		if len(v) > 512 || strings.ContainsFunc(v, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			return bad("instance %s: meta %s: at most 512 printable characters", i.ID, k)
		}
	}
	if i.Check != nil {
		return i.Check.validate(i.ID)
	}
	return nil
}

func (c *Check) validate(id string) error {
	switch c.Type {
	case TCPCheck, HTTPCheck:
		if c.TTL != 0 {
			return bad("instance %s: a %s check has no TTL", id, c.Type)
		}
		if c.Interval != 0 && (c.Interval < 100*time.Millisecond || c.Interval > time.Hour) {
			return bad("instance %s: check interval %v out of range 100ms..1h", id, c.Interval)
		}
		if c.Timeout < 0 || c.Timeout > c.interval() {
			return bad("instance %s: check timeout %v: at most the interval %v", id, c.Timeout, c.interval())
		}
	case TTLCheck:
		if c.TTL < time.Second || c.TTL > 24*time.Hour || c.Interval != 0 || c.Timeout != 0 {
			return bad("instance %s: a TTL check needs a TTL of 1s to 24h and no interval or timeout", id)
		}
	default:
		return bad("instance %s: unknown check type %q", id, c.Type)
	}
	if c.Type != HTTPCheck && c.Path != "" {
		return bad("instance %s: only HTTP checks have a path", id)
	}
	if c.Path != "" && (!strings.HasPrefix(c.Path, "/") || strings.ContainsFunc(c.Path, func(r rune) bool {
		return r <= ' ' || r >= 0x7f || strings.ContainsRune(`"'\#{}<>;`, r)
	})) {
		return bad("instance %s: check path %q: want an absolute path of visible characters without quotes, '#', braces or ';'", id, c.Path)
	}
	if c.DeregisterAfter != 0 && c.DeregisterAfter < time.Minute {
		return bad("instance %s: deregister-after %v: 0 or at least 1m", id, c.DeregisterAfter)
	}
	return nil
}

// Normalized returns a copy of a valid check with its defaults explicit:
// Interval 10s, Timeout the interval, Path "/" (HTTP).
func (c *Check) Normalized() *Check {
	n := *c
	if n.Type == TTLCheck {
		return &n
	}
	n.Interval = c.interval()
	if n.Timeout == 0 {
		n.Timeout = n.Interval
	}
	if n.Type == HTTPCheck && n.Path == "" {
		n.Path = "/"
	}
	return &n
}

func (c *Check) interval() time.Duration {
	if c.Interval == 0 {
		return 10 * time.Second
	}
	return c.Interval
}

// Validate checks q's service name and tag (DNS labels).
func (q Query) Validate() error {
	if err := ValidService(q.Service); err != nil {
		return err
	}
	if q.Tag != "" {
		if err := ValidService(q.Tag); err != nil {
			return bad("tag: %v", err)
		}
	}
	return nil
}
