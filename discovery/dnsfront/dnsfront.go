// Package dnsfront answers DNS queries from any discovery driver, so that
// a container resolves mysql.service.muster through its normal resolver.
// It is an authoritative server for one domain (default "muster."), built
// on github.com/miekg/dns, over UDP and TCP:
//
//   - <service>.service.<domain> A and AAAA: the addresses of the
//     service's passing instances;
//   - <tag>.<service>.service.<domain>: those with the tag;
//   - SRV for either name, and for _<service>._tcp.service.<domain>
//     (RFC 2782): one record per instance with its port and the target
//     <hex address>.addr.<domain>, whose address is in the additional
//     section (and which answers A or AAAA queries itself).
//
// Names in the domain that match nothing are NXDOMAIN (with the SOA, so
// that resolvers cache the absence for the negative TTL); names outside
// it are REFUSED: the server does not recurse. Only passing instances are
// ever answered.
package dnsfront

import (
	"context"
	"encoding/hex"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"

	"github.com/musterkit/muster/discovery/driver"
	"github.com/musterkit/muster/errcode"
)

// Options configures New. A nil *Options means the defaults.
type Options struct {
	// Domain is the zone served; empty means "muster.".
	Domain string
	// TTL of the answers; 0 means none (resolvers ask every time).
	TTL time.Duration
	// Logger receives errors; nil discards.
	Logger *slog.Logger
}

// Server is a DNS front of a discovery driver.
type Server struct {
	d      driver.Driver
	domain string
	ttl    uint32
	log    *slog.Logger

	mu      sync.Mutex
	servers []*dns.Server
}

// New returns a server answering from d.
func New(d driver.Driver, opts *Options) (*Server, error) {
	if opts == nil {
		opts = &Options{}
	}
	domain := opts.Domain
	if domain == "" {
		domain = "muster."
	}
	domain = dns.CanonicalName(domain)
	if _, ok := dns.IsDomainName(domain); !ok || strings.ContainsAny(domain, " \t\n;\"\\") {
		return nil, errcode.New(errcode.InvalidArgument, "dnsfront: domain %q is not a domain name", opts.Domain)
	}
	if opts.TTL < 0 || opts.TTL > 24*time.Hour {
		return nil, errcode.New(errcode.InvalidArgument, "dnsfront: TTL %v out of range 0..24h", opts.TTL)
	}
	s := &Server{d: d, domain: domain, ttl: uint32(opts.TTL / time.Second), log: opts.Logger}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	return s, nil
}

// Serve answers on udp and tcp (either may be nil) until ctx ends or
// Close, then closes them.
func (s *Server) Serve(ctx context.Context, udp net.PacketConn, tcp net.Listener) error {
	var servers []*dns.Server
	if udp != nil {
		servers = append(servers, &dns.Server{PacketConn: udp, Handler: s})
	}
	if tcp != nil {
		servers = append(servers, &dns.Server{Listener: tcp, Handler: s})
	}
	s.mu.Lock()
	s.servers = append(s.servers, servers...)
	s.mu.Unlock()
	errs := make(chan error, len(servers))
	for _, srv := range servers {
		go func() { errs <- srv.ActivateAndServe() }()
	}
	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer stop()
	var err error
	for range servers {
		if e := <-errs; e != nil && !errors.Is(e, net.ErrClosed) && !strings.Contains(e.Error(), "closed") {
			err = errors.Join(err, e)
		}
	}
	return err
}

// Close stops serving.
func (s *Server) Close() error {
	s.mu.Lock()
	servers := s.servers
	s.servers = nil
	s.mu.Unlock()
	var err error
	for _, srv := range servers {
		err = errors.Join(err, srv.Shutdown())
	}
	return err
}

// ServeDNS implements dns.Handler.
func (s *Server) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	m.RecursionAvailable = false
	if len(req.Question) != 1 || req.Opcode != dns.OpcodeQuery {
		m.SetRcode(req, dns.RcodeNotImplemented)
		w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	name := dns.CanonicalName(q.Name)
	if !dns.IsSubDomain(s.domain, name) {
		// Not our zone: no authority over the answer.
		m.Authoritative = false
		m.SetRcode(req, dns.RcodeRefused)
		w.WriteMsg(m)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	rcode, err := s.answer(ctx, m, name, q.Qtype)
	if err != nil {
		s.log.Warn("dnsfront: answering", "name", name, "err", err)
		rcode = dns.RcodeServerFailure
	}
	m.Rcode = rcode
	if rcode == dns.RcodeNameError || (rcode == dns.RcodeSuccess && len(m.Answer) == 0) {
		m.Ns = append(m.Ns, s.soa())
	}
	if opt := req.IsEdns0(); opt != nil {
		m.SetEdns0(opt.UDPSize(), false)
	}
	if _, isUDP := w.RemoteAddr().(*net.UDPAddr); isUDP {
		size := dns.MinMsgSize
		if opt := req.IsEdns0(); opt != nil {
			size = int(opt.UDPSize())
		}
		m.Truncate(size)
	}
	w.WriteMsg(m)
}

func (s *Server) soa() dns.RR {
	return &dns.SOA{
		Hdr:     dns.RR_Header{Name: s.domain, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: s.ttl},
		Ns:      "ns." + s.domain,
		Mbox:    "hostmaster." + s.domain,
		Serial:  1,
		Refresh: 3600, Retry: 600, Expire: 86400,
		Minttl: s.ttl,
	}
}

// answer fills m for name (in the domain) and returns the rcode.
func (s *Server) answer(ctx context.Context, m *dns.Msg, name string, qtype uint16) (int, error) {
	rel := strings.TrimSuffix(strings.TrimSuffix(name, s.domain), ".")
	labels := dns.SplitDomainName(rel)
	if rel == "" {
		if qtype == dns.TypeSOA {
			m.Answer = append(m.Answer, s.soa())
		}
		return dns.RcodeSuccess, nil
	}
	// <hex>.addr.<domain>
	if len(labels) == 2 && labels[1] == "addr" {
		a, ok := decodeAddr(labels[0])
		if !ok {
			return dns.RcodeNameError, nil
		}
		if rr := s.addrRR(name, a, qtype); rr != nil {
			m.Answer = append(m.Answer, rr)
		}
		return dns.RcodeSuccess, nil
	}
	var service, tag string
	switch {
	case len(labels) == 2 && labels[1] == "service":
		service = labels[0]
	case len(labels) == 3 && labels[2] == "service" && strings.HasPrefix(labels[0], "_") && labels[1] == "_tcp":
		service = strings.TrimPrefix(labels[0], "_")
	case len(labels) == 3 && labels[2] == "service":
		tag, service = labels[0], labels[1]
	default:
		return dns.RcodeNameError, nil
	}
	if driver.ValidService(service) != nil || (tag != "" && driver.ValidService(tag) != nil) {
		return dns.RcodeNameError, nil
	}
	es, err := s.d.Resolve(ctx, driver.Query{Service: service, Tag: tag})
	if err != nil {
		return 0, err
	}
	if len(es) == 0 {
		// A known service with nothing passing is no error: the name
		// exists, it has no address now.
		all, err := s.d.Resolve(ctx, driver.Query{Service: service, Tag: tag, Critical: true})
		if err != nil {
			return 0, err
		}
		if len(all) == 0 {
			return dns.RcodeNameError, nil
		}
		return dns.RcodeSuccess, nil
	}
	for _, e := range es {
		a, err := netip.ParseAddr(e.Address)
		if err != nil {
			continue
		}
		switch qtype {
		case dns.TypeSRV, dns.TypeANY:
			target := encodeAddr(a) + ".addr." + s.domain
			m.Answer = append(m.Answer, &dns.SRV{
				Hdr:      dns.RR_Header{Name: name, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: s.ttl},
				Priority: 1, Weight: 1, Port: e.Port, Target: target,
			})
			if rr := s.addrRR(target, a, dns.TypeANY); rr != nil {
				m.Extra = append(m.Extra, rr)
			}
		default:
			if rr := s.addrRR(name, a, qtype); rr != nil {
				m.Answer = append(m.Answer, rr)
			}
		}
	}
	return dns.RcodeSuccess, nil
}

// addrRR returns the A or AAAA record of a for name if qtype asks for
// its family (ANY asks for both), or nil.
func (s *Server) addrRR(name string, a netip.Addr, qtype uint16) dns.RR {
	hdr := dns.RR_Header{Name: name, Class: dns.ClassINET, Ttl: s.ttl}
	switch {
	case a.Is4() && (qtype == dns.TypeA || qtype == dns.TypeANY):
		hdr.Rrtype = dns.TypeA
		return &dns.A{Hdr: hdr, A: a.AsSlice()}
	case a.Is6() && (qtype == dns.TypeAAAA || qtype == dns.TypeANY):
		hdr.Rrtype = dns.TypeAAAA
		return &dns.AAAA{Hdr: hdr, AAAA: a.AsSlice()}
	}
	return nil
}

// encodeAddr is a's bytes in hex: 8 digits for IPv4, 32 for IPv6.
func encodeAddr(a netip.Addr) string { return hex.EncodeToString(a.AsSlice()) }

func decodeAddr(label string) (netip.Addr, bool) {
	b, err := hex.DecodeString(label)
	if err != nil || (len(b) != 4 && len(b) != 16) {
		return netip.Addr{}, false
	}
	a, _ := netip.AddrFromSlice(b)
	return a, true
}
