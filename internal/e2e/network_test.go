package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/musterkit/muster/container"
	"github.com/musterkit/muster/network"
	netdriver "github.com/musterkit/muster/network/driver"
)

// TestContainersTalkOverVXLAN builds a VXLAN network across three servers
// through their agents, attaches an LXC container on each, and sends a
// message over TCP from a container on one server to containers on the
// others.
func TestContainersTalkOverVXLAN(t *testing.T) {
	f := startFleet(t, 3)
	ctx := context.Background()
	fab, err := network.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range f.Servers {
		if err := fab.AddServer(s.Name, s.Client.Network(netdriver.VXLAN), s.Host.Addr); err != nil {
			t.Fatal(err)
		}
	}
	spec := &network.Spec{ID: "blue", Mode: netdriver.VXLAN, Subnet: netip.MustParsePrefix("198.19.128.0/24"), VNI: 4242}
	if _, err := fab.Ensure(ctx, spec); err != nil {
		t.Fatal(err)
	}
	addrs := map[string]netip.Addr{}
	for _, s := range f.Servers {
		name := "c-" + s.Name
		n, err := fab.Attach(ctx, "blue", s.Name, name)
		if err != nil {
			t.Fatal(err)
		}
		srv, _ := f.Cluster.Server(s.Name)
		if _, err := srv.Create(ctx, &container.Spec{Name: name, Image: "base", Networks: []container.Network{n}}); err != nil {
			t.Fatal(err)
		}
		if err := srv.Start(ctx, name); err != nil {
			t.Fatal(err)
		}
		addrs[s.Name] = n.Address.Addr()
	}
	// Applying the same spec again changes nothing and keeps traffic.
	if _, err := fab.Ensure(ctx, spec); err != nil {
		t.Fatal(err)
	}
	src, _ := f.Cluster.Server("s0")
	for _, to := range []string{"s1", "s2"} {
		dst, _ := f.Cluster.Server(to)
		msg := fmt.Sprintf("hello %s over vxlan\n", to)
		got := make(chan string, 1)
		go func() {
			var out strings.Builder
			lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			dst.Exec(lctx, "c-"+to, &container.Process{Args: []string{"nc", "-l", "-p", "7000"}, Stdout: &out})
			got <- out.String()
		}()
		var sent bool
		for try := 0; try < 50 && !sent; try++ {
			code, err := src.Exec(ctx, "c-s0", &container.Process{
				Args:  []string{"nc", "-w", "2", addrs[to].String(), "7000"},
				Stdin: strings.NewReader(msg),
			})
			if err != nil {
				t.Fatal(err)
			}
			sent = code == 0
			if !sent {
				time.Sleep(100 * time.Millisecond) // the listener may not be up yet
			}
		}
		if !sent {
			t.Fatalf("could not connect from s0 to %s at %v", to, addrs[to])
		}
		if out := <-got; out != msg {
			t.Fatalf("the container on %s received %q, want %q", to, out, msg)
		}
	}
}
