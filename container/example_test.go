package container_test

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/musterkit/muster/container"
	"github.com/musterkit/muster/container/image"
	"github.com/musterkit/muster/container/memcontainer"
)

// Build the offline base image, put it on a server, and run a container.
// With drivers/lxc or an agent.Client instead of memcontainer the calls
// are the same.
func Example() {
	ctx := context.Background()
	srv := container.NewServer(memcontainer.New(nil), nil)
	putBaseImage(ctx, srv)
	if _, err := srv.Create(ctx, &container.Spec{
		Name:   "web",
		Image:  "base",
		Limits: container.Limits{MemoryBytes: 128 << 20, Pids: 100},
		Labels: map[string]string{"app": "web"},
	}); err != nil {
		log.Fatal(err)
	}
	if err := srv.Start(ctx, "web"); err != nil {
		log.Fatal(err)
	}
	code, err := srv.Exec(ctx, "web", &container.Process{Args: []string{"cat", "/etc/hostname"}, Stdout: os.Stdout})
	fmt.Println("exit", code, err)
	info, _ := srv.Get(ctx, "web")
	fmt.Println(info.Spec.Name, info.State)
	// Output:
	// web
	// exit 0 <nil>
	// web running
}

// Move a running container between servers, reporting progress.
func ExampleCluster_Move() {
	ctx := context.Background()
	cl := container.NewCluster(nil)
	for _, name := range []string{"s1", "s2"} {
		cl.AddServer(name, container.NewServer(memcontainer.New(nil), nil))
	}
	s1, _ := cl.Server("s1")
	putBaseImage(ctx, s1)
	s1.Create(ctx, &container.Spec{Name: "db", Image: "base"})
	s1.Start(ctx, "db")

	info, err := cl.Move(ctx, "db", "s1", "s2", &container.TransferOptions{
		Progress: func(e container.Event) {
			if e.Phase != container.PhaseTransfer {
				fmt.Println(e.Phase)
			}
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	p, _ := cl.Find(ctx, "db")
	fmt.Println(p.Server, info.State)
	// Output:
	// stop
	// start
	// cleanup
	// done
	// s2 running
}

// putBaseImage builds the offline busybox base image and puts it on srv.
func putBaseImage(ctx context.Context, srv *container.Server) {
	dir, _ := os.MkdirTemp("", "example-")
	defer os.RemoveAll(dir)
	store, _ := image.OpenStore(dir, nil)
	if _, err := image.BuildBase(ctx, store, "base", nil); err != nil {
		log.Fatal(err)
	}
	m, blob, _ := store.Open(ctx, "base")
	defer blob.Close()
	if _, err := srv.PutImage(ctx, m, blob); err != nil {
		log.Fatal(err)
	}
}
