package lb_test

import (
	"context"
	"fmt"
	"log"

	"github.com/musterkit/muster/lb"
	"github.com/musterkit/muster/lb/driver"
	"github.com/musterkit/muster/lb/memlb"
)

// A balancer with an HTTP frontend over a pool of two servers; one more
// server joins at run time and another is drained.
func Example() {
	ctx := context.Background()
	b, err := lb.New("edge", memlb.New(), nil)
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close()
	err = b.Apply(ctx, &lb.Config{
		Pools: []lb.Pool{{Name: "web", Algorithm: driver.RoundRobin, Servers: []lb.Server{
			{Name: "web-1", Address: "198.18.0.1", Port: 8080},
			{Name: "web-2", Address: "198.18.0.2", Port: 8080, Weight: 2},
		}}},
		Frontends: []lb.Frontend{{Name: "www", Protocol: driver.HTTP, Address: "0.0.0.0", Port: 80, DefaultPool: "web"}},
	})
	if err != nil {
		log.Fatal(err)
	}
	if err := b.AddServer(ctx, "web", lb.Server{Name: "web-3", Address: "198.18.0.3", Port: 8080}); err != nil {
		log.Fatal(err)
	}
	if err := b.SetState(ctx, "web", "web-1", driver.Drain); err != nil {
		log.Fatal(err)
	}
	st, err := b.Stats(ctx)
	if err != nil {
		log.Fatal(err)
	}
	for _, s := range st {
		fmt.Println(s.Pool, s.Server, s.State, "weight", s.Weight)
	}
	err = b.AddServer(ctx, "web", lb.Server{Name: "web-4", Address: "198.18.0.4\nbind *:22", Port: 8080})
	fmt.Println(err)
	// Output:
	// web web-1 drain weight 1
	// web web-2 up weight 2
	// web web-3 up weight 1
	// balancer "edge": add server: server "web-4" address "198.18.0.4\nbind *:22" contains '\n'; use letters, digits, '-' and '.'
}
