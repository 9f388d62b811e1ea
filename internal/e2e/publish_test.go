package e2e

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/musterkit/muster/discovery"
	"github.com/musterkit/muster/drivers/consul"
	"github.com/musterkit/muster/internal/consultest"
	"github.com/musterkit/muster/internal/fleet"
)

// TestContainersPublishedToConsul publishes the labelled LXC containers of
// a server, read through its agent, into a real Consul agent: a running
// container is answered with its address on the network, a stopped one is
// withdrawn, and when the server's agent dies its instances expire.
func TestContainersPublishedToConsul(t *testing.T) {
	consultest.Require(t)
	f := startFleet(t, 2)
	ctx := context.Background()
	fab := fabricOf(t, f)
	ensureVXLAN(t, fab, "pub", "198.19.132.0/24", 4302)
	n := runOn(t, f, fab, "pub", "s1", "db", map[string]string{discovery.LabelService: "mysql", discovery.LabelPort: "3306"})
	s1, _ := f.Cluster.Server("s1")
	d, err := consul.Open(ctx, &consul.Options{Address: consultest.StartDev(t, "127.0.0.1")})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := discovery.New(d, nil)
	if err != nil {
		t.Fatal(err)
	}
	p, err := discovery.NewPublisher(reg, "s1", s1, &discovery.PublisherOptions{Interval: 400 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	es, err := reg.Resolve(ctx, "mysql", "")
	if err != nil || len(es) != 1 || es[0].Address != n.Address.Addr().String() || es[0].ID != "s1.db" {
		t.Fatalf("Consul answers %+v, %v; want db at %v", es, err, n.Address.Addr())
	}
	if err := s1.Stop(ctx, "db", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if es, err := reg.Resolve(ctx, "mysql", ""); err != nil || len(es) != 0 {
		t.Fatalf("after the container stopped: %+v, %v", es, err)
	}
	if err := s1.Start(ctx, "db"); err != nil {
		t.Fatal(err)
	}
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	// The server's agent dies: the publisher can no longer list its
	// containers nor keep them alive, and Consul lets them expire.
	if err := f.Servers[1].Kill(); err != nil {
		t.Fatal(err)
	}
	died := time.Now()
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(200 * time.Millisecond) {
		if err := p.Sync(ctx); err == nil {
			t.Fatal("Sync succeeded with the server's agent dead")
		}
		if es, err := reg.Resolve(ctx, "mysql", ""); err == nil && len(es) == 0 {
			t.Logf("db left Consul's answers %v after its server died (TTL 1.2s)", time.Since(died).Round(100*time.Millisecond))
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("db still answered a minute after its server died")
		}
	}
}

// TestAgentPublishesToConsul has an agent publish its own server's
// labelled containers (muster-agent --publish-consul) into a Consul agent
// running in another server: a labelled container appears in Consul's
// answers; stopped, it goes; and when the agent stops, it withdraws them.
func TestAgentPublishesToConsul(t *testing.T) {
	consultest.Require(t)
	f := startFleet(t, 2)
	ctx := context.Background()
	fab := fabricOf(t, f)
	ensureVXLAN(t, fab, "pub2", "198.19.134.0/24", 4304)
	consulAddr := startConsulIn(t, f.Servers[0])
	d, err := consul.Open(ctx, &consul.Options{Address: consulAddr})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := discovery.New(d, nil)
	if err != nil {
		t.Fatal(err)
	}
	s1 := f.Servers[1]
	s1.ExtraArgs = []string{"--publish-consul", consulAddr, "--publish-interval", "1s"}
	if err := s1.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	n := runOn(t, f, fab, "pub2", "s1", "cache", map[string]string{discovery.LabelService: "redis", discovery.LabelPort: "6379"})
	waitAnswers := func(what string, want int) {
		t.Helper()
		for deadline := time.Now().Add(time.Minute); ; time.Sleep(200 * time.Millisecond) {
			es, err := reg.Resolve(ctx, "redis", "")
			if err == nil && len(es) == want && (want == 0 || es[0].Address == n.Address.Addr().String()) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: Consul answers %+v, %v", what, es, err)
			}
		}
	}
	waitAnswers("the agent publishing its running container", 1)
	srv, _ := f.Cluster.Server("s1")
	if err := srv.Stop(ctx, "cache", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	waitAnswers("the container stopped", 0)
	if err := srv.Start(ctx, "cache"); err != nil {
		t.Fatal(err)
	}
	waitAnswers("the container started again", 1)
	if err := s1.Stop(); err != nil {
		t.Fatal(err)
	}
	waitAnswers("the agent stopped", 0)
	s1.ExtraArgs = nil // Consul goes before the fleet, which starts s1 again to clean up
}

// startConsulIn runs a Consul dev agent in server s's namespace, its API
// on s's address, until the test ends, and returns the API's host:port.
func startConsulIn(t *testing.T, s *fleet.Server) string {
	t.Helper()
	ip := s.Host.Addr.String()
	cmd := s.Host.Command(context.Background(), "consul", "agent", "-dev", "-bind", ip, "-client", ip,
		"-dns-port", "-1", "-grpc-port", "-1")
	log := &consultest.Log{}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("consul logged:\n%s", log.String())
		}
	})
	addr := net.JoinHostPort(ip, "8500")
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if _, err := consul.Open(context.Background(), &consul.Options{Address: addr}); err == nil {
			return addr
		}
		if time.Now().After(deadline) {
			t.Fatalf("consul in %s: no leader after 30s:\n%s", s.Name, log.String())
		}
	}
}
