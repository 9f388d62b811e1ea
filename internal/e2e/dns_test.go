package e2e

import (
	"context"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/musterkit/muster/container"
	"github.com/musterkit/muster/discovery/dnsfront"
	"github.com/musterkit/muster/discovery/driver"
	"github.com/musterkit/muster/discovery/memdiscovery"
	"github.com/musterkit/muster/roottest"
)

// TestContainerResolvesByDNS serves the embedded registry's DNS front on
// s0's address on a VXLAN network, and resolves mysql.service.muster from
// an LXC container on s1: with busybox nslookup inside the container, and
// with dig (Debian dnsutils) in the container's network namespace. An
// instance whose check fails drops out of the answers.
func TestContainerResolvesByDNS(t *testing.T) {
	roottest.Require(t, roottest.BinaryFrom("dig", "dnsutils"), roottest.Binary("nsenter"))
	f := startFleet(t, 2)
	ctx := context.Background()
	fab := fabricOf(t, f)
	sts := ensureVXLAN(t, fab, "svc", "198.19.131.0/24", 4301)
	dnsAddr := sts[0].Spec.Local.Addr() // s0's address on the network

	reg := memdiscovery.New(nil)
	defer reg.Close()
	for _, inst := range []*driver.Instance{
		{ID: "mysql-1", Service: "mysql", Address: "198.19.131.50", Port: 3306},
		{ID: "mysql-2", Service: "mysql", Address: "198.19.131.51", Port: 3306, Check: &driver.Check{Type: driver.TTLCheck, TTL: time.Hour}}, // never passes
	} {
		if err := reg.Register(ctx, inst); err != nil {
			t.Fatal(err)
		}
	}
	front, err := dnsfront.New(reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	var udp net.PacketConn
	var tcp net.Listener
	err = f.Servers[0].Host.Do(func() error {
		var err error
		if udp, err = net.ListenPacket("udp", net.JoinHostPort(dnsAddr.String(), "53")); err != nil {
			return err
		}
		tcp, err = net.Listen("tcp", net.JoinHostPort(dnsAddr.String(), "53"))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- front.Serve(sctx, udp, tcp) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()

	runOn(t, f, fab, "svc", "s1", "client", nil)
	s1, _ := f.Cluster.Server("s1")
	var out strings.Builder
	code, err := s1.Exec(ctx, "client", &container.Process{Args: []string{"nslookup", "mysql.service.muster", dnsAddr.String()}, Stdout: &out, Stderr: &out})
	if err != nil || code != 0 || !strings.Contains(out.String(), "198.19.131.50") || strings.Contains(out.String(), "198.19.131.51") {
		t.Fatalf("nslookup in the container: exit %d, %v:\n%s", code, err, out.String())
	}
	info, err := s1.Get(ctx, "client")
	if err != nil || info.PID == 0 {
		t.Fatalf("container: %+v, %v", info, err)
	}
	dig := func(args ...string) string {
		t.Helper()
		all := append([]string{"-t", strconv.Itoa(info.PID), "-n", "dig", "@" + dnsAddr.String(), "+time=2", "+tries=2"}, args...)
		got, err := exec.Command("nsenter", all...).CombinedOutput()
		if err != nil {
			t.Fatalf("dig %v in the container's network: %v\n%s", args, err, got)
		}
		return strings.TrimSpace(string(got))
	}
	if got := dig("+short", "mysql.service.muster", "A"); got != "198.19.131.50" {
		t.Fatalf("dig A: %q", got)
	}
	if got := dig("+short", "_mysql._tcp.service.muster", "SRV"); got != "1 1 3306 c6138332.addr.muster." {
		t.Fatalf("dig SRV: %q", got)
	}
	if got := dig("+tcp", "+short", "mysql.service.muster", "A"); got != "198.19.131.50" {
		t.Fatalf("dig over TCP: %q", got)
	}
	if got := dig("nothing.service.muster"); !strings.Contains(got, "status: NXDOMAIN") {
		t.Fatalf("dig of an unknown service:\n%s", got)
	}
	// The instance goes away: the answer follows.
	if err := reg.Deregister(ctx, "mysql-1"); err != nil {
		t.Fatal(err)
	}
	if got := dig("+short", "mysql.service.muster", "A"); got != "" {
		t.Fatalf("dig after deregistering: %q", got)
	}
}
