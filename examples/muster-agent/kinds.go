package main

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/musterkit/muster/agent"
	"github.com/musterkit/muster/container/driver"
	"github.com/musterkit/muster/container/memcontainer"
	discdriver "github.com/musterkit/muster/discovery/driver"
	"github.com/musterkit/muster/discovery/memdiscovery"
	"github.com/musterkit/muster/drivers/bgp"
	"github.com/musterkit/muster/drivers/gluster"
	"github.com/musterkit/muster/drivers/haproxy"
	"github.com/musterkit/muster/drivers/keepalived"
	"github.com/musterkit/muster/drivers/lvs"
	"github.com/musterkit/muster/drivers/lxc"
	"github.com/musterkit/muster/drivers/moosefs"
	"github.com/musterkit/muster/drivers/nfs"
	"github.com/musterkit/muster/drivers/nginx"
	"github.com/musterkit/muster/drivers/vxlan"
	"github.com/musterkit/muster/drivers/wireguard"
	hadriver "github.com/musterkit/muster/ha/driver"
	lbdriver "github.com/musterkit/muster/lb/driver"
	"github.com/musterkit/muster/lb/memlb"
	netdriver "github.com/musterkit/muster/network/driver"
	"github.com/musterkit/muster/network/memnetwork"
	storagedriver "github.com/musterkit/muster/storage/driver"
	"github.com/musterkit/muster/storage/memstorage"
)

// The drivers this agent links, registered by kind: the one place that
// maps a flag's value to a driver. Serving another driver (one of your own
// module's) is one more entry here, or your own program around
// agent.NewServer.
var (
	// A container driver takes the server's storage as the VolumePaths
	// of containers that mount a volume.
	containerDrivers = map[string]func(ctx context.Context, dir, hostname string, volumes driver.VolumePaths, log *slog.Logger) (driver.Driver, error){
		"lxc": func(ctx context.Context, dir, _ string, volumes driver.VolumePaths, log *slog.Logger) (driver.Driver, error) {
			return lxc.Open(ctx, dir, &lxc.Options{Logger: log, Volumes: volumes})
		},
		"memory": func(_ context.Context, _, hostname string, volumes driver.VolumePaths, _ *slog.Logger) (driver.Driver, error) {
			return memcontainer.New(&memcontainer.Options{Hostname: hostname, Volumes: volumes}), nil
		},
	}
	// Storage daemons (glusterd, the MooseFS master and chunk servers,
	// ganesha) stop with the agent and come back with it; FUSE mounts
	// outlive it, so that the containers bind-mounting them keep their
	// data, and the restarted agent takes them back.
	storageKinds = map[string]func(hostname string, addr netip.Addr, log *slog.Logger) agent.StorageKind{
		// memory: pools in this agent's memory, of this server alone
		// (memstorage), for trying things out.
		"memory": func(hostname string, addr netip.Addr, _ *slog.Logger) agent.StorageKind {
			world := memstorage.NewCluster()
			return func(context.Context, string) (storagedriver.Driver, error) { return world.Open(hostname, addr), nil }
		},
		// gluster: glusterd (and its bricks) in this server's namespace,
		// FUSE mounts with glusterfs; one Gluster pool per server.
		"gluster": func(_ string, _ netip.Addr, log *slog.Logger) agent.StorageKind {
			return func(ctx context.Context, dir string) (storagedriver.Driver, error) {
				return gluster.Open(ctx, dir, &gluster.Options{Logger: log})
			}
		},
		// moosefs: the master on the pool's first server, a chunk server
		// on each member, FUSE mounts with mfsmount.
		"moosefs": func(_ string, _ netip.Addr, log *slog.Logger) agent.StorageKind {
			return func(ctx context.Context, dir string) (storagedriver.Driver, error) {
				return moosefs.Open(ctx, dir, &moosefs.Options{Logger: log})
			}
		},
		// nfs: exports served by nfs-ganesha (and rpcbind) in this
		// server's namespace; one NFS pool per server (port 2049).
		"nfs": func(_ string, _ netip.Addr, log *slog.Logger) agent.StorageKind {
			return func(ctx context.Context, dir string) (storagedriver.Driver, error) {
				return nfs.Open(ctx, dir, &nfs.Options{Logger: log})
			}
		},
	}
	networkDrivers = map[string]func(ctx context.Context, log *slog.Logger) (netdriver.Driver, error){
		"vxlan": func(ctx context.Context, log *slog.Logger) (netdriver.Driver, error) {
			return vxlan.Open(ctx, &vxlan.Options{Logger: log})
		},
		"wireguard": func(ctx context.Context, log *slog.Logger) (netdriver.Driver, error) {
			return wireguard.Open(ctx, &wireguard.Options{Logger: log})
		},
		"bgp": func(ctx context.Context, log *slog.Logger) (netdriver.Driver, error) {
			return bgp.Open(ctx, &bgp.Options{Logger: log})
		},
		"memory": func(context.Context, *slog.Logger) (netdriver.Driver, error) { return memnetwork.New(nil), nil },
	}
	// HAProxy and Nginx outlive an agent that dies (the data plane keeps
	// serving while the control plane is away); the restarted agent's
	// drivers end them and start their own when they deploy the kept
	// configurations. A graceful stop stops them.
	balancerKinds = map[string]func(log *slog.Logger) agent.BalancerKind{
		"haproxy": func(log *slog.Logger) agent.BalancerKind {
			return func(ctx context.Context, dir string) (lbdriver.Driver, error) {
				return haproxy.Open(ctx, dir, &haproxy.Options{Logger: log})
			}
		},
		"nginx": func(log *slog.Logger) agent.BalancerKind {
			return func(ctx context.Context, dir string) (lbdriver.Driver, error) {
				return nginx.Open(ctx, dir, &nginx.Options{Logger: log})
			}
		},
		"lvs": func(log *slog.Logger) agent.BalancerKind {
			return func(ctx context.Context, _ string) (lbdriver.Driver, error) {
				return lvs.Open(ctx, &lvs.Options{Logger: log})
			}
		},
		"memory": func(*slog.Logger) agent.BalancerKind {
			return func(context.Context, string) (lbdriver.Driver, error) { return memlb.New(), nil }
		},
	}
	discoveryKinds = map[string]func(log *slog.Logger) discdriver.Driver{
		"memory": func(log *slog.Logger) discdriver.Driver { return memdiscovery.New(&memdiscovery.Options{Logger: log}) },
	}
	// keepalived runs in this process's network namespace: the server's.
	floatingIPKinds = map[string]func(log *slog.Logger) agent.FloatingIPKind{
		"keepalived": func(log *slog.Logger) agent.FloatingIPKind {
			return func(ctx context.Context, dir string) (hadriver.Driver, error) {
				return keepalived.Open(ctx, dir, &keepalived.Options{Logger: log})
			}
		},
	}
)

// pick returns the openers of the kinds named, or an error naming an
// unknown kind and the kinds there are.
func pick[O any](registered map[string]O, kinds []string, what string) (map[string]O, error) {
	out := map[string]O{}
	for _, k := range kinds {
		o, ok := registered[k]
		if !ok {
			return nil, fmt.Errorf("unknown %s %q: want %s", what, k, kindList(registered))
		}
		out[k] = o
	}
	return out, nil
}

// kindList lists the kinds registered, sorted, for messages and help.
func kindList[O any](registered map[string]O) string {
	return strings.Join(slices.Sorted(maps.Keys(registered)), ", ")
}
