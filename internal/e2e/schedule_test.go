package e2e

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/internal/fleet"
	lbdriver "github.com/musterkit/muster/lb/driver"
	"github.com/musterkit/muster/schedule"
)

// TestJobBehindHAProxy runs a 6-replica job (busybox httpd in LXC
// containers on a VXLAN network) over 3 servers behind HAProxy deployed
// through an agent, with a client sending requests through HAProxy the
// whole time: a rolling upgrade to a new version, then an upgrade whose
// new version fails its health check and rolls back, and not one request
// fails.
func TestJobBehindHAProxy(t *testing.T) {
	f := startFleet(t, 3)
	ctx := context.Background()
	fab := fabricOf(t, f)
	ensureVXLAN(t, fab, "jobs", "198.19.131.0/24", 4400)
	s0 := f.Servers[0]
	bal := s0.Client.Balancer("haproxy", "front")
	if err := bal.Apply(ctx, &lbdriver.Config{
		Frontends: []lbdriver.Frontend{{Name: "http", Protocol: lbdriver.HTTP, Address: "0.0.0.0", Port: 8080, DefaultPool: "web"}},
		Pools:     []lbdriver.Pool{{Name: "web"}},
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bal.Close() })
	var events []schedule.Event
	c := schedule.NewController(f.Cluster, &schedule.ControllerOptions{
		Networks: fab, Traffic: []schedule.Traffic{schedule.BalancerPool(bal, time.Second)},
		HealthTimeout: 5 * time.Second,
		Events:        func(ev schedule.Event) { events = append(events, ev) },
	})
	web := func(release string, start string) schedule.Deployment {
		return schedule.Deployment{
			Job:     schedule.Job{Name: "web", Replicas: 6, Resources: schedule.Resources{MilliCPU: 100}},
			Image:   "base",
			Labels:  map[string]string{"release": release},
			Network: "jobs", Port: 8080,
			Start:  []string{"sh", "-c", start},
			Health: []string{"wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/"},
			Update: schedule.Update{MaxSurge: 1},
		}
	}
	serve := func(release string) string {
		return fmt.Sprintf("mkdir -p /www && echo %s > /www/index.html && httpd -p 8080 -h /www", release)
	}
	if err := c.Reconcile(ctx, []schedule.Deployment{web("v1", serve("v1"))}); err != nil {
		t.Fatal(err)
	}

	// A client through HAProxy for the rest of the test.
	load := fleet.StartLoad(fmt.Sprintf("http://%s:8080/", s0.Host.Addr))
	for deadline := time.Now().Add(30 * time.Second); load.Result().OK < 10; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			r := load.Stop()
			t.Fatalf("HAProxy does not serve the job: %d ok, %d failed, %v", r.OK, r.Failed, r.FirstErr)
		}
	}
	load.Reset()

	v2 := web("v2", serve("v2"))
	if err := c.Reconcile(ctx, []schedule.Deployment{v2}); err != nil {
		t.Fatal(err)
	}
	// v3 never starts its web server: its health check fails, and the
	// upgrade goes back to v2.
	err := c.Reconcile(ctx, []schedule.Deployment{web("v3", "true")})
	if !errors.Is(err, errcode.FailedPrecondition) {
		t.Fatalf("an upgrade to a failing version: %v", err)
	}
	time.Sleep(time.Second)
	r := load.Stop()
	t.Logf("%d requests through HAProxy during the upgrade and the rollback, %d failed; answers %v", r.OK+r.Failed, r.Failed, r.Answers)
	if r.Failed != 0 {
		t.Fatalf("%d requests failed (first: %v)", r.Failed, r.FirstErr)
	}
	if r.Answers["v2"] == 0 {
		t.Fatal("no request reached v2")
	}
	cfg, err := bal.Config(ctx)
	if err != nil || len(cfg.Pools[0].Servers) != 6 {
		t.Fatalf("the pool after the rollback: %+v, %v", cfg, err)
	}
	all, _ := f.Cluster.Containers(ctx)
	if len(all) != 6 {
		t.Fatalf("%d containers after the rollback; want the 6 of v2", len(all))
	}
	for _, p := range all {
		if p.Spec.Labels["release"] != "v2" {
			t.Fatalf("after the rollback %s is release %s", p.Spec.Name, p.Spec.Labels["release"])
		}
	}
}
