package memlb_test

import (
	"context"
	"fmt"
	"log"
	"net/netip"

	"github.com/musterkit/muster/lb/driver"
	"github.com/musterkit/muster/lb/memlb"
)

// A weighted pool in memory: Pick shows where connections would go.
func Example() {
	d := memlb.New()
	err := d.Apply(context.Background(), &driver.Config{Pools: []driver.Pool{{
		Name: "api",
		Servers: []driver.Server{
			{Name: "small", Address: "198.18.0.1", Port: 80, Weight: 1},
			{Name: "big", Address: "198.18.0.2", Port: 80, Weight: 3},
		},
	}}})
	if err != nil {
		log.Fatal(err)
	}
	count := map[string]int{}
	for range 8 {
		c, err := d.Pick("api", netip.MustParseAddr("198.18.0.9"))
		if err != nil {
			log.Fatal(err)
		}
		count[c.Server]++
		c.Close()
	}
	fmt.Println("small", count["small"], "big", count["big"])
	// Output:
	// small 2 big 6
}
