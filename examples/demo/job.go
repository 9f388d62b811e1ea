package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/musterkit/muster/internal/fleet"
	lbdriver "github.com/musterkit/muster/lb/driver"
	"github.com/musterkit/muster/schedule"
)

// job runs a 6-replica job over the three servers behind HAProxy on s2,
// placed and kept by the scheduler, and upgrades it while a client sends
// requests: new replicas take traffic once healthy, old ones are drained
// before they stop.
func job(ctx context.Context, e *env) error {
	step("a job: 6 replicas of a web server placed over the three servers by the scheduler, behind HAProxy on s2")
	s2 := e.fleet.Servers[2]
	bal := s2.Client.Balancer("haproxy", "jobs")
	defer bal.Close()
	if err := bal.Apply(ctx, &lbdriver.Config{
		Frontends: []lbdriver.Frontend{{Name: "http", Protocol: lbdriver.HTTP, Address: "0.0.0.0", Port: 8081, DefaultPool: "shop"}},
		Pools:     []lbdriver.Pool{{Name: "shop"}},
	}); err != nil {
		return err
	}
	ctrl := schedule.NewController(e.containers, &schedule.ControllerOptions{
		Networks: e.networks, Traffic: []schedule.Traffic{schedule.BalancerPool(bal, 500*time.Millisecond)},
		HealthTimeout: 10 * time.Second,
		Events: func(ev schedule.Event) {
			fmt.Printf("  %-8s %-22s %-3s %s\n", ev.Action, ev.Replica, ev.Server, ev.Reason)
		},
	})
	shop := func(release string) schedule.Deployment {
		return schedule.Deployment{
			Job:     schedule.Job{Name: "shop", Replicas: 6, Resources: schedule.Resources{MilliCPU: 100, MemoryBytes: 32 << 20}, MaxPerServer: 3},
			Image:   "base",
			Labels:  map[string]string{"release": release},
			Network: demoNetwork, Port: 8080,
			Start:  []string{"sh", "-c", fmt.Sprintf("mkdir -p /www && echo shop %s on $(hostname) > /www/index.html && httpd -p 8080 -h /www", release)},
			Health: []string{"wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/"},
			Update: schedule.Update{MaxSurge: 1},
		}
	}
	if err := ctrl.Reconcile(ctx, []schedule.Deployment{shop("v1")}); err != nil {
		return err
	}

	step("upgrading the job to v2 while a client sends requests through HAProxy")
	load := fleet.StartLoad(fmt.Sprintf("http://%s:8081/", s2.Host.Addr))
	err := ctrl.Reconcile(ctx, []schedule.Deployment{shop("v2")})
	r := load.Stop()
	if err != nil {
		return err
	}
	byRelease := map[string]int{}
	for body, n := range r.Answers {
		if f := strings.Fields(body); len(f) > 1 {
			byRelease[f[1]] += n
		}
	}
	fmt.Printf("  %d requests during the upgrade, %d failed: %d answered by v1, %d by v2\n", r.OK+r.Failed, r.Failed, byRelease["v1"], byRelease["v2"])
	all, err := e.containers.Containers(ctx)
	if err != nil {
		return err
	}
	per := map[string][]string{}
	for _, p := range all {
		if p.Spec.Labels[schedule.LabelJob] == "shop" {
			per[p.Server] = append(per[p.Server], p.Spec.Name)
		}
	}
	w := tabwriter.NewWriter(os.Stdout, 2, 0, 2, ' ', 0)
	fmt.Fprintln(w, "  SERVER\tREPLICAS OF shop")
	for _, srv := range slices.Sorted(func(yield func(string) bool) {
		for s := range per {
			if !yield(s) {
				return
			}
		}
	}) {
		fmt.Fprintf(w, "  %s\t%s\n", srv, strings.Join(per[srv], ", "))
	}
	w.Flush()
	return ctrl.Reconcile(ctx, []schedule.Deployment{func() schedule.Deployment { d := shop("v2"); d.Replicas = 0; return d }()})
}
