package driver

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/names"
)

// Limits of the model, checked by Validate.
const (
	MaxWeight       = 256
	maxHostLen      = 253
	maxPathLen      = 1024
	maxHeaderLen    = 1024
	defaultInterval = 2 * time.Second
)

func invalid(format string, args ...any) error {
	return errcode.New(errcode.InvalidArgument, format, args...)
}

// ValidName checks a name of a frontend, pool, server, route or certificate:
// a DNS label of lowercase letters, digits and '-', at most 63 bytes.
func ValidName(what, s string) error {
	if err := names.Label(s); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// ValidHost checks a DNS name: dot-separated labels of letters, digits and
// '-' (not at either end of a label), at most 253 bytes. A leading "*." is
// allowed if wildcard is set. Nothing else can appear, so a valid host needs
// no quoting in any configuration language.
func ValidHost(what, s string, wildcard bool) error {
	h := s
	if wildcard {
		h = strings.TrimPrefix(h, "*.")
	}
	if h == "" || len(s) > maxHostLen {
		return invalid("%s %.80q is not a DNS name of 1 to %d bytes", what, s, maxHostLen)
	}
	for label := range strings.SplitSeq(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return invalid("%s %.80q has an empty, overlong or hyphen-bounded label", what, s)
		}
		for _, c := range label {
			if !isAlnum(c) && c != '-' {
				return invalid("%s %.80q contains %q; use letters, digits, '-' and '.'", what, s, c)
			}
		}
	}
	return nil
}

// ValidAddress checks a server address: an IP address without a zone, or a
// DNS name (ValidHost).
func ValidAddress(what, s string) error {
	if a, err := netip.ParseAddr(s); err == nil {
		if a.Zone() != "" || a.IsUnspecified() || a.IsMulticast() {
			return invalid("%s %q is not a unicast address without a zone", what, s)
		}
		return nil
	}
	if strings.Trim(s, "0123456789.") == "" { // looks like a malformed IPv4 address
		return invalid("%s %q is not an IP address", what, s)
	}
	return ValidHost(what, s, false)
}

// ValidPath checks a path prefix: "/" followed by segments of letters,
// digits and - . _ ~ + , = : @ !, without empty segments, "." or "..", and
// no trailing '/' (except the path "/").
func ValidPath(what, s string) error {
	if s == "/" {
		return nil
	}
	if !strings.HasPrefix(s, "/") || len(s) > maxPathLen || strings.HasSuffix(s, "/") {
		return invalid("%s %.80q is not an absolute path of at most %d bytes without a trailing '/'", what, s, maxPathLen)
	}
	for seg := range strings.SplitSeq(s[1:], "/") {
		if seg == "" || seg == "." || seg == ".." {
			return invalid("%s %.80q has an empty, '.' or '..' segment", what, s)
		}
		for _, c := range seg {
			if !isAlnum(c) && !strings.ContainsRune("-._~+,=:@!", c) {
				return invalid("%s %.80q contains %q", what, s, c)
			}
		}
	}
	return nil
}

// ValidHeader checks a header field (see Header).
func ValidHeader(what string, h Header) error {
	if h.Name == "" || len(h.Name) > 256 {
		return invalid("%s name %.80q is empty or too long", what, h.Name)
	}
	for _, c := range h.Name {
		if !isAlnum(c) && c != '-' && c != '_' {
			return invalid("%s name %.80q contains %q; use letters, digits, '-' and '_'", what, h.Name, c)
		}
	}
	if h.Value == "" || len(h.Value) > maxHeaderLen {
		return invalid("%s %s value is empty or longer than %d bytes", what, h.Name, maxHeaderLen)
	}
	for _, c := range h.Value {
		if c <= ' ' || c >= 0x7f || strings.ContainsRune("\"'`\\{};#$%", c) {
			return invalid("%s %s value %.80q contains %q", what, h.Name, h.Value, c)
		}
	}
	return nil
}

// isAlnum reports whether c is an ASCII letter or digit. Validators range
// over runes, not bytes, so an error quotes a whole character.
func isAlnum(c rune) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

// Validate reports the first problem with c as an errcode.InvalidArgument
// error. A valid config is safe to render into any backend's configuration
// language: names are DNS labels (ValidName), hosts DNS names (ValidHost),
// addresses IP addresses or DNS names, paths and headers are restricted to
// characters that need no quoting, certificates parse as a key pair, and
// every reference (a frontend's or route's pool) exists. Only
// Unsafe.RawSnippets escape these rules, and only their keys are checked.
func (c *Config) Validate() error {
	if c == nil {
		return invalid("nil config")
	}
	pools := map[string]bool{}
	for i := range c.Pools {
		p := &c.Pools[i]
		if err := p.Validate(); err != nil {
			return err
		}
		if pools[p.Name] {
			return invalid("two pools are named %q", p.Name)
		}
		pools[p.Name] = true
	}
	seen := map[string]bool{}
	binds := map[uint16][]netip.Addr{}
	for i := range c.Frontends {
		f := &c.Frontends[i]
		if err := f.validate(pools); err != nil {
			return err
		}
		if seen[f.Name] {
			return invalid("two frontends are named %q", f.Name)
		}
		seen[f.Name] = true
		a := netip.MustParseAddr(f.Address)
		for _, b := range binds[f.Port] {
			if b == a || b.IsUnspecified() || a.IsUnspecified() {
				return invalid("frontend %q: %s port %d overlaps another frontend's bind", f.Name, f.Address, f.Port)
			}
		}
		binds[f.Port] = append(binds[f.Port], a)
	}
	for _, p := range c.Pools {
		if c.PoolProtocol(p.Name) == "" {
			return invalid("pool %q is used by both TCP and HTTP frontends; use two pools", p.Name)
		}
	}
	if c.Unsafe != nil {
		for k := range c.Unsafe.RawSnippets {
			if err := validSnippetKey(k); err != nil {
				return err
			}
		}
	}
	return nil
}

func validSnippetKey(k string) error {
	switch k {
	case "global", "defaults", "http", "stream":
		return nil
	}
	kind, name, ok := strings.Cut(k, "/")
	if ok && slices.Contains([]string{"frontend", "pool", "server", "upstream"}, kind) && names.Label(name) == nil {
		return nil
	}
	return invalid("raw snippet key %.80q is not global, defaults, http, stream, frontend/<name>, pool/<name>, server/<name> or upstream/<name>", k)
}

func (f *Frontend) validate(pools map[string]bool) error {
	if err := ValidName("frontend name", f.Name); err != nil {
		return err
	}
	if f.Protocol != TCP && f.Protocol != HTTP {
		return invalid("frontend %q: protocol %q is not %q or %q", f.Name, f.Protocol, TCP, HTTP)
	}
	a, err := netip.ParseAddr(f.Address)
	if err != nil || a.Zone() != "" || a.IsMulticast() || a.Is4In6() {
		return invalid("frontend %q: address %.80q is not an IP address without a zone", f.Name, f.Address)
	}
	if f.Port == 0 {
		return invalid("frontend %q: port 0", f.Name)
	}
	if f.DefaultPool != "" && !pools[f.DefaultPool] {
		return invalid("frontend %q: default pool %q does not exist", f.Name, f.DefaultPool)
	}
	if f.Protocol == TCP && (f.DefaultPool == "" || len(f.Routes) > 0) {
		return invalid("frontend %q: a TCP frontend has a default pool and no routes", f.Name)
	}
	if f.TLS != nil {
		if err := f.TLS.validate(f.Name); err != nil {
			return err
		}
	}
	names := map[string]bool{}
	for i := range f.Routes {
		r := &f.Routes[i]
		if err := r.validate(f.Name, pools); err != nil {
			return err
		}
		if names[r.Name] {
			return invalid("frontend %q: two routes are named %q", f.Name, r.Name)
		}
		names[r.Name] = true
	}
	return nil
}

func (t *TLS) validate(fe string) error {
	if len(t.Certificates) == 0 {
		return invalid("frontend %q: TLS without certificates", fe)
	}
	names := map[string]bool{}
	for i := range t.Certificates {
		c := &t.Certificates[i]
		if err := ValidName("certificate name", c.Name); err != nil {
			return fmt.Errorf("frontend %q: %w", fe, err)
		}
		if names[c.Name] {
			return invalid("frontend %q: two certificates are named %q", fe, c.Name)
		}
		names[c.Name] = true
		if _, err := tls.X509KeyPair(c.CertPEM, c.KeyPEM); err != nil {
			return invalid("frontend %q: certificate %q: %v", fe, c.Name, err)
		}
		for _, n := range c.ServerNames {
			if err := ValidHost("server name", n, true); err != nil {
				return fmt.Errorf("frontend %q: certificate %q: %w", fe, c.Name, err)
			}
		}
		sni, err := c.Names()
		if err != nil {
			return fmt.Errorf("frontend %q: %w", fe, err)
		}
		if len(sni) == 0 && i > 0 {
			return invalid("frontend %q: certificate %q has no server names and is not the first", fe, c.Name)
		}
	}
	return nil
}

// Names returns the SNI names that select the certificate: ServerNames, or
// the leaf certificate's valid DNS names if ServerNames is empty.
func (c *Certificate) Names() ([]string, error) {
	if len(c.ServerNames) > 0 {
		return c.ServerNames, nil
	}
	block, _ := pem.Decode(c.CertPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, invalid("certificate %q: no PEM certificate", c.Name)
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, invalid("certificate %q: %v", c.Name, err)
	}
	var names []string
	for _, n := range leaf.DNSNames {
		if ValidHost("", n, true) == nil {
			names = append(names, strings.ToLower(n))
		}
	}
	return names, nil
}

func (r *Route) validate(fe string, pools map[string]bool) error {
	if err := ValidName("route name", r.Name); err != nil {
		return fmt.Errorf("frontend %q: %w", fe, err)
	}
	where := fmt.Sprintf("frontend %q route %q", fe, r.Name)
	if r.Host != "" {
		if err := ValidHost(where+" host", r.Host, false); err != nil {
			return err
		}
	}
	if r.PathPrefix != "" {
		if err := ValidPath(where+" path prefix", r.PathPrefix); err != nil {
			return err
		}
	}
	if (r.Pool == "") == (r.Redirect == nil) {
		return invalid("%s: exactly one of pool and redirect is set", where)
	}
	if r.Pool != "" && !pools[r.Pool] {
		return invalid("%s: pool %q does not exist", where, r.Pool)
	}
	if rd := r.Redirect; rd != nil {
		if rd.Scheme != "" && rd.Scheme != "http" && rd.Scheme != "https" {
			return invalid("%s: redirect scheme %.20q is not http or https", where, rd.Scheme)
		}
		if rd.Host != "" {
			if err := ValidHost(where+" redirect host", rd.Host, false); err != nil {
				return err
			}
		} else if rd.Port != 0 {
			return invalid("%s: a redirect port needs a host", where)
		}
		if rd.StatusCode != 0 && !slices.Contains([]int{301, 302, 303, 307, 308}, rd.StatusCode) {
			return invalid("%s: redirect status %d is not 301, 302, 303, 307 or 308", where, rd.StatusCode)
		}
		if rd.Scheme == "" && rd.Host == "" {
			return invalid("%s: a redirect changes the scheme or the host", where)
		}
		if len(r.RequestHeaders) > 0 {
			return invalid("%s: a redirect sends no request to set headers on", where)
		}
	}
	for _, h := range r.RequestHeaders {
		if err := ValidHeader(where+" request header", h); err != nil {
			return err
		}
	}
	for _, h := range r.ResponseHeaders {
		if err := ValidHeader(where+" response header", h); err != nil {
			return err
		}
	}
	return nil
}

// Validate checks a pool and its servers and health check.
func (p *Pool) Validate() error {
	if err := ValidName("pool name", p.Name); err != nil {
		return err
	}
	if !slices.Contains([]Algorithm{"", RoundRobin, Weighted, LeastConnections, SourceHash}, p.Algorithm) {
		return invalid("pool %q: unknown algorithm %.40q", p.Name, p.Algorithm)
	}
	names := map[string]bool{}
	for i := range p.Servers {
		s := &p.Servers[i]
		if err := s.Validate(); err != nil {
			return fmt.Errorf("pool %q: %w", p.Name, err)
		}
		if names[s.Name] {
			return invalid("pool %q: two servers are named %q", p.Name, s.Name)
		}
		names[s.Name] = true
	}
	if hc := p.HealthCheck; hc != nil {
		where := fmt.Sprintf("pool %q health check", p.Name)
		switch hc.Type {
		case TCPCheck:
			if hc.Path != "" || hc.ExpectStatus != 0 {
				return invalid("%s: path and status are for HTTP checks", where)
			}
		case HTTPCheck:
			if hc.Path != "" {
				if err := ValidPath(where+" path", hc.Path); err != nil {
					return err
				}
			}
			if hc.ExpectStatus != 0 && (hc.ExpectStatus < 100 || hc.ExpectStatus > 599) {
				return invalid("%s: status %d is outside 100..599", where, hc.ExpectStatus)
			}
		default:
			return invalid("%s: type %.20q is not tcp or http", where, hc.Type)
		}
		if hc.Interval != 0 && (hc.Interval < 100*time.Millisecond || hc.Interval > time.Hour || hc.Interval%time.Millisecond != 0) {
			return invalid("%s: interval %v is not whole milliseconds from 100ms to 1h", where, hc.Interval)
		}
		iv := cmpOr(hc.Interval, defaultInterval)
		if hc.Timeout < 0 || hc.Timeout > iv || hc.Timeout%time.Millisecond != 0 {
			return invalid("%s: timeout %v is not whole milliseconds up to the interval", where, hc.Timeout)
		}
		if hc.Rise < 0 || hc.Rise > 100 || hc.Fall < 0 || hc.Fall > 100 {
			return invalid("%s: rise and fall are 1 to 100", where)
		}
	}
	return nil
}

// Validate checks a server.
func (s *Server) Validate() error {
	if err := ValidName("server name", s.Name); err != nil {
		return err
	}
	if err := ValidAddress(fmt.Sprintf("server %q address", s.Name), s.Address); err != nil {
		return err
	}
	if s.Port == 0 {
		return invalid("server %q: port 0", s.Name)
	}
	if s.Weight < 0 || s.Weight > MaxWeight {
		return invalid("server %q: weight %d is outside 1..%d", s.Name, s.Weight, MaxWeight)
	}
	return ValidState(s.State)
}

// ValidState checks an administrative state; empty means Ready.
func ValidState(st AdminState) error {
	if !slices.Contains([]AdminState{"", Ready, Drain, Maintenance}, st) {
		return invalid("state %.20q is not ready, drain or maint", st)
	}
	return nil
}

func cmpOr[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// Normalized returns a deep copy of a valid c with every default made
// explicit, empty slices nil and addresses in canonical form: two configs
// that mean the same have equal normalized forms (see Equal). Drivers keep
// and return the normalized form.
func (c *Config) Normalized() *Config {
	n := c.clone()
	for i := range n.Frontends {
		f := &n.Frontends[i]
		if a, err := netip.ParseAddr(f.Address); err == nil {
			f.Address = a.String()
		}
		for j := range f.Routes {
			r := &f.Routes[j]
			r.Host = strings.ToLower(r.Host)
			if r.PathPrefix == "" {
				r.PathPrefix = "/"
			}
			if r.Redirect != nil {
				r.Redirect.Host = strings.ToLower(r.Redirect.Host)
				r.Redirect.StatusCode = cmpOr(r.Redirect.StatusCode, 302)
			}
		}
		if f.TLS != nil {
			for j := range f.TLS.Certificates {
				ct := &f.TLS.Certificates[j]
				for k, s := range ct.ServerNames {
					ct.ServerNames[k] = strings.ToLower(s)
				}
			}
		}
	}
	for i := range n.Pools {
		p := &n.Pools[i]
		p.Algorithm = cmpOr(p.Algorithm, RoundRobin)
		for j := range p.Servers {
			p.Servers[j].normalize()
		}
		if hc := p.HealthCheck; hc != nil {
			hc.Interval = cmpOr(hc.Interval, defaultInterval)
			hc.Timeout = cmpOr(hc.Timeout, hc.Interval)
			hc.Rise = cmpOr(hc.Rise, 2)
			hc.Fall = cmpOr(hc.Fall, 3)
			if hc.Type == HTTPCheck {
				hc.Path = cmpOr(hc.Path, "/")
			}
		}
	}
	if n.Unsafe != nil && len(n.Unsafe.RawSnippets) == 0 {
		n.Unsafe = nil
	}
	return n
}

func (s *Server) normalize() {
	s.Weight = cmpOr(s.Weight, 1)
	s.State = cmpOr(s.State, Ready)
	if a, err := netip.ParseAddr(s.Address); err == nil {
		s.Address = a.String()
	} else {
		s.Address = strings.ToLower(s.Address)
	}
}

// clone deep-copies c through JSON, which also turns empty slices into nil.
func (c *Config) clone() *Config {
	b, err := json.Marshal(c)
	if err != nil {
		panic(err) // every field marshals
	}
	var n Config
	if err := json.Unmarshal(b, &n); err != nil {
		panic(err)
	}
	return &n
}

// Equal reports whether a and b mean the same configuration. Both must be
// valid.
func Equal(a, b *Config) bool {
	x, _ := json.Marshal(a.Normalized())
	y, _ := json.Marshal(b.Normalized())
	return string(x) == string(y)
}

// PoolProtocol returns the protocol of the frontends that use pool: TCP or
// HTTP, TCP for a pool no frontend uses, and "" for a pool used by both
// (which Validate rejects).
func (c *Config) PoolProtocol(pool string) Protocol {
	var tcp, http bool
	for _, f := range c.Frontends {
		if f.DefaultPool == pool || slices.ContainsFunc(f.Routes, func(r Route) bool { return r.Pool == pool }) {
			tcp = tcp || f.Protocol == TCP
			http = http || f.Protocol == HTTP
		}
	}
	switch {
	case tcp && http:
		return ""
	case http:
		return HTTP
	}
	return TCP
}

// Pool returns the pool named name, or nil.
func (c *Config) Pool(name string) *Pool {
	for i := range c.Pools {
		if c.Pools[i].Name == name {
			return &c.Pools[i]
		}
	}
	return nil
}

// Server returns the server named name, or nil.
func (p *Pool) Server(name string) *Server {
	for i := range p.Servers {
		if p.Servers[i].Name == name {
			return &p.Servers[i]
		}
	}
	return nil
}

// WithServer returns a normalized copy of c in which fn has changed server
// name of pool (or, for name "", the pool itself), and the copy's server
// as changed. It is how every driver implements the server operations, with
// their error codes: errcode.NotFound for an unknown pool or server.
func (c *Config) WithServer(pool, name string, fn func(*Pool, *Server) error) (*Config, error) {
	n := c.Normalized()
	p := n.Pool(pool)
	if p == nil {
		return nil, errcode.New(errcode.NotFound, "no pool %q", pool)
	}
	var s *Server
	if name != "" {
		if s = p.Server(name); s == nil {
			return nil, errcode.New(errcode.NotFound, "pool %q has no server %q", pool, name)
		}
	}
	if err := fn(p, s); err != nil {
		return nil, err
	}
	if err := n.Validate(); err != nil {
		return nil, err
	}
	return n.Normalized(), nil
}

// AddServer returns c with srv added to pool (see Driver.AddServer).
func (c *Config) AddServer(pool string, srv Server) (*Config, error) {
	if err := srv.Validate(); err != nil {
		return nil, err
	}
	return c.WithServer(pool, "", func(p *Pool, _ *Server) error {
		if p.Server(srv.Name) != nil {
			return errcode.New(errcode.AlreadyExists, "pool %q already has a server %q", pool, srv.Name)
		}
		srv.normalize()
		p.Servers = append(p.Servers, srv)
		return nil
	})
}

// RemoveServer returns c without server name of pool.
func (c *Config) RemoveServer(pool, name string) (*Config, error) {
	return c.WithServer(pool, name, func(p *Pool, _ *Server) error {
		p.Servers = slices.DeleteFunc(p.Servers, func(s Server) bool { return s.Name == name })
		return nil
	})
}

// SetWeight returns c with a server's weight changed.
func (c *Config) SetWeight(pool, name string, weight int) (*Config, error) {
	if weight < 1 || weight > MaxWeight {
		return nil, invalid("weight %d is outside 1..%d", weight, MaxWeight)
	}
	return c.WithServer(pool, name, func(_ *Pool, s *Server) error {
		s.Weight = weight
		return nil
	})
}

// SetState returns c with a server's administrative state changed.
func (c *Config) SetState(pool, name string, st AdminState) (*Config, error) {
	if err := ValidState(st); err != nil {
		return nil, err
	}
	return c.WithServer(pool, name, func(_ *Pool, s *Server) error {
		s.State = cmpOr(st, Ready)
		return nil
	})
}

// CheckCapabilities returns errcode.Unimplemented if c needs a feature caps
// lacks (TLS, HTTP routing, raw snippets). Health checks are not checked:
// drivers without active checks map them to passive ones.
func CheckCapabilities(c *Config, caps Capabilities) error {
	for _, f := range c.Frontends {
		if f.TLS != nil && !caps.TLS {
			return errcode.New(errcode.Unimplemented, "frontend %q: TLS is not supported", f.Name)
		}
		if f.Protocol == HTTP && !caps.Layer7 {
			return errcode.New(errcode.Unimplemented, "frontend %q: HTTP frontends are not supported", f.Name)
		}
	}
	if c.Unsafe != nil && len(c.Unsafe.RawSnippets) > 0 && !caps.RawSnippets {
		return errcode.New(errcode.Unimplemented, "raw snippets are not supported")
	}
	return nil
}
