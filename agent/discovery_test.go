package agent

import (
	"context"
	"errors"
	"testing"
	"time"

	discdriver "github.com/musterkit/muster/discovery/driver"
	"github.com/musterkit/muster/discovery/drivertest"
	"github.com/musterkit/muster/discovery/memdiscovery"
	"github.com/musterkit/muster/errcode"
)

// TestDiscoveryConformance runs the discovery suite on the embedded
// registry served by an agent, through the agent's client.
func TestDiscoveryConformance(t *testing.T) {
	drivertest.RunConformanceTests(t, drivertest.Harness{
		Open: func(t *testing.T) discdriver.Driver {
			reg := memdiscovery.New(nil)
			t.Cleanup(func() { reg.Close() })
			cl := newCluster(t, nil)
			cl.discovery = reg
			d := cl.dial(t, cl.serve(t, memServer(t))).Discovery()
			t.Cleanup(func() { d.Close() })
			return d
		},
		CheckInterval: 200 * time.Millisecond,
	})
}

func TestDiscoveryNotServed(t *testing.T) {
	c := remote(t, memServer(t))
	if _, err := c.Discovery().Services(context.Background()); !errors.Is(err, errcode.Unimplemented) {
		t.Fatalf("an agent that serves no registry: %v", err)
	}
	if kinds := c.Kinds("discovery"); len(kinds) != 0 {
		t.Fatalf("discovery kinds %v", kinds)
	}
}
