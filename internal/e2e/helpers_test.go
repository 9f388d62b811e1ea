package e2e

import (
	"context"
	"net/netip"
	"testing"

	"github.com/musterkit/muster/container"
	"github.com/musterkit/muster/internal/fleet"
	"github.com/musterkit/muster/network"
	netdriver "github.com/musterkit/muster/network/driver"
)

// fabricOf returns a Fabric over f's servers, through their agents.
func fabricOf(t *testing.T, f *fleet.Fleet) *network.Fabric {
	t.Helper()
	fab, err := network.Open(context.Background(), t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range f.Servers {
		if err := fab.AddServer(context.Background(), s.Name, s.Client, s.Host.Addr); err != nil {
			t.Fatal(err)
		}
	}
	return fab
}

// ensureVXLAN builds VXLAN network id with subnet and vni across fab's
// servers and returns their statuses, sorted by server.
func ensureVXLAN(t *testing.T, fab *network.Fabric, id, subnet string, vni uint32) []*netdriver.Status {
	t.Helper()
	sts, err := fab.Ensure(context.Background(), &network.Spec{ID: id, Mode: netdriver.VXLAN, Subnet: netip.MustParsePrefix(subnet), VNI: vni})
	if err != nil {
		t.Fatal(err)
	}
	return sts
}

// runOn creates and starts container name from the base image on server,
// attached to network id, with labels, and returns its network.
func runOn(t *testing.T, f *fleet.Fleet, fab *network.Fabric, id, server, name string, labels map[string]string) container.Network {
	t.Helper()
	ctx := context.Background()
	n, err := fab.Attach(ctx, id, server, name)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := f.Cluster.Server(server)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Create(ctx, &container.Spec{Name: name, Image: "base", Networks: []container.Network{n}, Labels: labels}); err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(ctx, name); err != nil {
		t.Fatal(err)
	}
	return n
}
