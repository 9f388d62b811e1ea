package dnsfront_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/musterkit/muster/discovery/dnsfront"
	"github.com/musterkit/muster/discovery/driver"
	"github.com/musterkit/muster/discovery/memdiscovery"
	"github.com/musterkit/muster/internal/freeport"
)

// serve starts a front of reg on loopback and returns its address.
func serve(t testing.TB, reg driver.Driver) string {
	t.Helper()
	// One port for both, found by binding both (a UDP port picked free
	// could have its TCP half taken).
	tcp, udp, err := freeport.ListenTCPUDP("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	s, err := dnsfront.New(reg, &dnsfront.Options{TTL: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, udp, tcp) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return udp.LocalAddr().String()
}

func registry(t testing.TB) *memdiscovery.Registry {
	t.Helper()
	r := memdiscovery.New(nil)
	t.Cleanup(func() { r.Close() })
	ctx := context.Background()
	for _, i := range []*driver.Instance{
		{ID: "mysql-1", Service: "mysql", Address: "198.19.0.10", Port: 3306, Tags: []string{"primary"}},
		{ID: "mysql-2", Service: "mysql", Address: "198.19.0.11", Port: 3307, Tags: []string{"replica"}},
		{ID: "mysql-3", Service: "mysql", Address: "198.19.0.12", Port: 3306, Check: &driver.Check{Type: driver.TTLCheck, TTL: time.Hour}}, // critical
		{ID: "api-1", Service: "api", Address: "2001:db8::1", Port: 80},
		{ID: "down-1", Service: "down", Address: "198.19.0.13", Port: 80, Check: &driver.Check{Type: driver.TTLCheck, TTL: time.Hour}},
	} {
		if err := r.Register(ctx, i); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

func query(t *testing.T, addr, network, name string, qtype uint16) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: network, Timeout: 2 * time.Second}
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	in, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s %s: %v", name, dns.TypeToString[qtype], err)
	}
	return in
}

func addrs(m *dns.Msg) []string {
	var out []string
	for _, rr := range m.Answer {
		switch r := rr.(type) {
		case *dns.A:
			out = append(out, r.A.String())
		case *dns.AAAA:
			out = append(out, r.AAAA.String())
		}
	}
	slices.Sort(out)
	return out
}

func TestAnswers(t *testing.T) {
	addr := serve(t, registry(t))
	for _, network := range []string{"udp", "tcp"} {
		t.Run(network, func(t *testing.T) {
			m := query(t, addr, network, "mysql.service.muster.", dns.TypeA)
			if m.Rcode != dns.RcodeSuccess || !m.Authoritative || !slices.Equal(addrs(m), []string{"198.19.0.10", "198.19.0.11"}) {
				t.Fatalf("A mysql: %v", m)
			}
			if m.Answer[0].Header().Ttl != 5 {
				t.Fatalf("TTL %d", m.Answer[0].Header().Ttl)
			}
			if m := query(t, addr, network, "primary.mysql.service.muster.", dns.TypeA); !slices.Equal(addrs(m), []string{"198.19.0.10"}) {
				t.Fatalf("A primary.mysql: %v", m)
			}
			if m := query(t, addr, network, "api.service.muster.", dns.TypeAAAA); !slices.Equal(addrs(m), []string{"2001:db8::1"}) {
				t.Fatalf("AAAA api: %v", m)
			}
			srv := query(t, addr, network, "_mysql._tcp.service.muster.", dns.TypeSRV)
			if len(srv.Answer) != 2 || len(srv.Extra) != 2 {
				t.Fatalf("SRV: %v", srv)
			}
			ports := map[uint16]string{}
			for _, rr := range srv.Answer {
				s := rr.(*dns.SRV)
				ports[s.Port] = s.Target
			}
			if ports[3306] != "c613000a.addr.muster." || ports[3307] != "c613000b.addr.muster." {
				t.Fatalf("SRV targets %v", ports)
			}
			if m := query(t, addr, network, "c613000a.addr.muster.", dns.TypeA); !slices.Equal(addrs(m), []string{"198.19.0.10"}) {
				t.Fatalf("A of an SRV target: %v", m)
			}
			if m := query(t, addr, network, "nothing.service.muster.", dns.TypeA); m.Rcode != dns.RcodeNameError || len(m.Ns) != 1 {
				t.Fatalf("unknown service: %v", m)
			}
			if m := query(t, addr, network, "down.service.muster.", dns.TypeA); m.Rcode != dns.RcodeSuccess || len(m.Answer) != 0 {
				t.Fatalf("a service with nothing passing: %v", m)
			}
			if m := query(t, addr, network, "example.com.", dns.TypeA); m.Rcode != dns.RcodeRefused || m.Authoritative {
				t.Fatalf("outside the domain: %v", m)
			}
		})
	}
}

func TestBadDomain(t *testing.T) {
	for _, d := range []string{"bad domain.", "a;b.", "x\n."} {
		if _, err := dnsfront.New(memdiscovery.New(nil), &dnsfront.Options{Domain: d}); err == nil {
			t.Errorf("domain %q accepted", d)
		}
	}
}

// FuzzQuery sends any name and type: the server answers every query with
// a well-formed message and never an address of a critical instance.
func FuzzQuery(f *testing.F) {
	for _, s := range []string{"mysql.service.muster.", "_mysql._tcp.service.muster.", "zz.addr.muster.", "a.b.c.service.muster.", "muster."} {
		f.Add(s, uint16(dns.TypeA))
	}
	addr := serve(f, registry(f))
	c := &dns.Client{Timeout: 2 * time.Second}
	f.Fuzz(func(t *testing.T, name string, qtype uint16) {
		if _, ok := dns.IsDomainName(name); !ok || !dns.IsFqdn(name) || len(name) > 253 {
			return
		}
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		in, _, err := c.Exchange(m, addr)
		if err != nil {
			t.Fatalf("%q type %d: %v", name, qtype, err)
		}
		for _, a := range addrs(in) {
			if a == "198.19.0.12" && !dns.IsSubDomain("addr.muster.", dns.CanonicalName(name)) {
				t.Fatalf("%q answered a critical instance's address", name)
			}
		}
	})
}
