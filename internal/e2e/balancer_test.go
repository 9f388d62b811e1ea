package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/musterkit/muster/container"
	"github.com/musterkit/muster/internal/fleet"
	lbdriver "github.com/musterkit/muster/lb/driver"
)

// TestBalancerThroughAgent deploys HAProxy, then Nginx, on s0 through its
// agent, in front of web servers (busybox httpd) in LXC containers on s1
// and s2 on a VXLAN network, and drives it from outside the servers: round
// robin over both, a drained server taking no new requests, the balancer
// serving on while its agent is dead and taken over by the restarted
// agent with the same configuration, and gone after Close.
func TestBalancerThroughAgent(t *testing.T) {
	f := startFleet(t, 3)
	ctx := context.Background()
	fab := fabricOf(t, f)
	ensureVXLAN(t, fab, "web", "198.19.130.0/24", 4300)
	var servers []lbdriver.Server
	for _, s := range f.Servers[1:] {
		name := "web-" + s.Name
		n := runOn(t, f, fab, "web", s.Name, name, nil)
		srv, _ := f.Cluster.Server(s.Name)
		script := fmt.Sprintf("mkdir -p /www && echo %s > /www/index.html && httpd -p 8080 -h /www", name)
		var out strings.Builder
		if code, err := srv.Exec(ctx, name, &container.Process{Args: []string{"sh", "-c", script}, Stdout: &out, Stderr: &out}); err != nil || code != 0 {
			t.Fatalf("starting httpd in %s: %d, %v: %s", name, code, err, out.String())
		}
		servers = append(servers, lbdriver.Server{Name: name, Address: n.Address.Addr().String(), Port: 8080})
	}

	for _, kind := range []string{"haproxy", "nginx"} {
		t.Run(kind, func(t *testing.T) { balanceThroughAgent(t, f, kind, servers) })
	}
}

func balanceThroughAgent(t *testing.T, f *fleet.Fleet, kind string, servers []lbdriver.Server) {
	ctx := context.Background()
	s0 := f.Servers[0]
	bal := s0.Client.Balancer(kind, "front")
	caps := bal.Capabilities()
	cfg := &lbdriver.Config{
		Frontends: []lbdriver.Frontend{{Name: "http", Protocol: lbdriver.HTTP, Address: "0.0.0.0", Port: 8080, DefaultPool: "app"}},
		Pools: []lbdriver.Pool{{Name: "app", Servers: servers,
			HealthCheck: &lbdriver.HealthCheck{Type: lbdriver.HTTPCheck, Interval: 500 * time.Millisecond}}},
	}
	if err := bal.Apply(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	url := fmt.Sprintf("http://%s:8080/", s0.Host.Addr)
	client := &http.Client{Timeout: 5 * time.Second}
	get := func() (string, error) {
		resp, err := client.Get(url)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return strings.TrimSpace(string(b)), err
	}
	count := func(n int) map[string]int {
		t.Helper()
		got := map[string]int{}
		for range n {
			body, err := get()
			if err != nil {
				t.Fatalf("GET %s: %v", url, err)
			}
			got[body]++
		}
		return got
	}
	waitServing := func(what string) {
		t.Helper()
		for deadline := time.Now().Add(time.Minute); ; time.Sleep(200 * time.Millisecond) {
			if body, err := get(); err == nil && strings.HasPrefix(body, "web-") {
				return
			} else if time.Now().After(deadline) {
				t.Fatalf("%s: the balancer does not serve: %q, %v", what, body, err)
			}
		}
	}
	waitServing("after deploying")
	if got := count(20); got["web-s1"] != 10 || got["web-s2"] != 10 {
		t.Fatalf("round robin over 20 requests: %v", got)
	}

	if err := bal.SetState(ctx, "app", "web-s2", lbdriver.Drain); err != nil {
		t.Fatal(err)
	}
	if got := count(10); got["web-s1"] != 10 {
		t.Fatalf("with web-s2 draining: %v", got)
	}
	st, err := bal.Stats(ctx)
	drained := lbdriver.Draining
	if !caps.Drain {
		drained = lbdriver.Maint // Nginx drains by taking the server out
	}
	if err != nil || len(st) != 2 || st[1].State != drained || (caps.SessionStats && st[0].TotalConnections == 0) {
		t.Fatalf("stats through the agent: %+v, %v", st, err)
	}
	if err := bal.SetState(ctx, "app", "web-s2", lbdriver.Ready); err != nil {
		t.Fatal(err)
	}

	// The agent dies: the balancer serves on. The restarted agent ends it
	// and deploys its own with the kept configuration.
	if err := s0.Kill(); err != nil {
		t.Fatal(err)
	}
	if got := count(10); got["web-s1"]+got["web-s2"] != 10 {
		t.Fatalf("with the agent dead: %v", got)
	}
	if err := s0.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	waitServing("after the agent restarted")
	if got, err := bal.Config(ctx); err != nil || !lbdriver.Equal(got, cfg) {
		t.Fatalf("config after the restart: %+v, %v", got, err)
	}
	if got := count(20); got["web-s1"] != 10 || got["web-s2"] != 10 {
		t.Fatalf("round robin after the restart: %v", got)
	}
	if err := bal.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := get(); err == nil {
		t.Fatal("the balancer answers after Close")
	}
	if list, err := s0.Client.Balancers(ctx); err != nil || len(list) != 0 {
		t.Fatalf("balancers after Close: %v, %v", list, err)
	}
}
