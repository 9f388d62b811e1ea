package storage_test

import (
	"context"
	"fmt"
	"log"
	"net/netip"

	"github.com/musterkit/muster/storage"
	"github.com/musterkit/muster/storage/driver"
	"github.com/musterkit/muster/storage/memstorage"
)

// A volume replicated over two servers and mounted on a third; with one
// member away it is degraded and keeps serving.
func Example() {
	ctx := context.Background()
	world := memstorage.NewCluster() // stands for the servers' agents
	pools := storage.New(nil)
	for i, name := range []string{"s0", "s1", "s2"} {
		addr := netip.AddrFrom4([4]byte{198, 18, 0, byte(i + 1)})
		pools.AddServer(ctx, name, addr, func(kind, pool string) (driver.Driver, error) { return world.Open(name, addr), nil })
	}
	if err := pools.Create(ctx, storage.PoolSpec{Name: "shared", Kind: "memory", Servers: []string{"s0", "s1"},
		Layout: storage.Layout{Kind: storage.Replicate, Copies: 2}}); err != nil {
		log.Fatal(err)
	}
	if err := pools.CreateVolume(ctx, "shared", storage.Volume{Name: "data"}); err != nil {
		log.Fatal(err)
	}
	path, err := pools.Mount(ctx, "s2", "shared", "data", nil)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("s2 mounted it at", path)
	world.SetDown("s1", true)
	st, _ := pools.Status(ctx, "shared")
	fmt.Println("with s1 away:", st.Volumes[0].Name, st.Volumes[0].Health)
	fmt.Println(pools.RemoveVolume(ctx, "shared", "data", nil))
	// Output:
	// s2 mounted it at mem:s2/shared/data
	// with s1 away: data degraded
	// remove volume "data" of storage pool "shared": it is mounted on [s2]; unmount it there or force
}
