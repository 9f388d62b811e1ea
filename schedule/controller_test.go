package schedule

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/musterkit/muster/container"
	"github.com/musterkit/muster/container/driver"
	"github.com/musterkit/muster/container/drivertest"
	"github.com/musterkit/muster/container/memcontainer"
	"github.com/musterkit/muster/errcode"
)

// flaky is a memory server that can stop answering, as one cut off does.
type flaky struct {
	*memcontainer.Driver
	mu   sync.Mutex
	down bool
}

func (f *flaky) setDown(down bool) { f.mu.Lock(); f.down = down; f.mu.Unlock() }

func (f *flaky) away() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return errcode.New(errcode.Unavailable, "server away")
	}
	return nil
}

func (f *flaky) HostInfo(ctx context.Context) (*driver.HostInfo, error) {
	if err := f.away(); err != nil {
		return nil, err
	}
	return f.Driver.HostInfo(ctx)
}

func (f *flaky) List(ctx context.Context) ([]*driver.Info, error) {
	if err := f.away(); err != nil {
		return nil, err
	}
	return f.Driver.List(ctx)
}

// clock is a settable clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) { c.mu.Lock(); c.now = c.now.Add(d); c.mu.Unlock() }
func newClock() *clock               { return &clock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

// jobReplicas returns the servers of job's running replicas by version,
// and how many replicas it has in all.
func jobReplicas(t *testing.T, cl *container.Cluster, job string) (running map[string][]string, total int) {
	t.Helper()
	all, _ := cl.Containers(context.Background())
	running = map[string][]string{}
	for _, p := range all {
		if p.Spec.Labels[LabelJob] != job {
			continue
		}
		total++
		if p.State == container.Running {
			running[p.Spec.Labels[LabelVersion]] = append(running[p.Spec.Labels[LabelVersion]], p.Server)
		}
	}
	return running, total
}

// testCluster is three memory servers, racks r0, r1, r2, 4 CPUs each,
// with the base image.
func testCluster(t *testing.T) (*container.Cluster, []*flaky) {
	t.Helper()
	m, blob := drivertest.BaseImage(t)
	cl := container.NewCluster(nil)
	var fs []*flaky
	for i := range 3 {
		name := fmt.Sprintf("s%d", i)
		f := &flaky{Driver: memcontainer.New(&memcontainer.Options{Hostname: name, CPUs: 4, MemoryBytes: 8 << 30})}
		if _, err := f.PutImage(context.Background(), m, bytes.NewReader(blob)); err != nil {
			t.Fatal(err)
		}
		if err := cl.AddServer(name, container.NewServer(f, nil)); err != nil {
			t.Fatal(err)
		}
		if err := cl.SetLabels(name, map[string]string{"rack": fmt.Sprintf("r%d", i)}); err != nil {
			t.Fatal(err)
		}
		fs = append(fs, f)
	}
	return cl, fs
}

func web(replicas int, version string) Deployment {
	return Deployment{
		Job:    Job{Name: "web", Replicas: replicas, Resources: Resources{MilliCPU: 500}, Spread: "rack"},
		Image:  "base",
		Labels: map[string]string{"app": "web", "release": version},
		Update: Update{MaxSurge: 1},
	}
}

func TestControllerScales(t *testing.T) {
	ctx := t.Context()
	cl, _ := testCluster(t)
	c := NewController(cl, nil)
	for _, n := range []int{6, 4, 7, 0} {
		if err := c.Reconcile(ctx, []Deployment{web(n, "1")}); err != nil {
			t.Fatalf("%d replicas: %v", n, err)
		}
		running, total := jobReplicas(t, cl, "web")
		v := web(n, "1")
		servers := running[v.Version()]
		if total != n || len(servers) != n {
			t.Fatalf("%d replicas declared: %d run, %d in all", n, len(servers), total)
		}
		per := map[string]int{}
		for _, s := range servers {
			per[s]++
		}
		for s, k := range per {
			if k > n/3+1 {
				t.Fatalf("%d replicas: %s runs %d (%v); spread over racks wants at most %d", n, s, k, per, n/3+1)
			}
		}
	}
	// 9 CPUs of requests fit nowhere beyond 12 CPUs: explained.
	big := web(30, "1")
	err := c.Reconcile(ctx, []Deployment{big})
	if !errors.Is(err, errcode.Unavailable) || !bytesContain(err.Error(), "cpu ruled out 3") {
		t.Fatalf("30 replicas of half a CPU on 12 CPUs: %v", err)
	}
}

func bytesContain(s, sub string) bool { return bytes.Contains([]byte(s), []byte(sub)) }

// TestRollingUpgrade: from version 1 to 2 with max surge 1 and max
// unavailable 0: at every step at least 6 and at most 7 replicas run,
// each new one in before an old one out.
func TestRollingUpgrade(t *testing.T) {
	ctx := t.Context()
	cl, _ := testCluster(t)
	var actions []Action
	var bad error
	checking := false
	c := NewController(cl, &ControllerOptions{Events: func(ev Event) {
		if !checking {
			return
		}
		actions = append(actions, ev.Action)
		running, _ := jobReplicas(t, cl, "web")
		n := 0
		for _, rs := range running {
			n += len(rs)
		}
		if (n < 6 || n > 7) && bad == nil {
			bad = fmt.Errorf("after %s of %s: %d replicas run", ev.Action, ev.Replica, n)
		}
	}})
	if err := c.Reconcile(ctx, []Deployment{web(6, "1")}); err != nil {
		t.Fatal(err)
	}
	checking = true
	v2 := web(6, "2")
	if err := c.Reconcile(ctx, []Deployment{v2}); err != nil {
		t.Fatal(err)
	}
	if bad != nil {
		t.Fatal(bad)
	}
	want := slices.Repeat([]Action{Started, Removed}, 6)
	if !slices.Equal(actions, want) {
		t.Fatalf("actions %v; want a start before each removal", actions)
	}
	running, total := jobReplicas(t, cl, "web")
	if len(running[v2.Version()]) != 6 || total != 6 {
		t.Fatalf("after the upgrade: %v, %d in all", running, total)
	}
}

// TestUpgradeRollsBack: a version whose health check fails is rolled
// back; the old replicas kept serving throughout.
func TestUpgradeRollsBack(t *testing.T) {
	ctx := t.Context()
	cl, _ := testCluster(t)
	var actions []Action
	c := NewController(cl, &ControllerOptions{HealthTimeout: 300 * time.Millisecond, Events: func(ev Event) { actions = append(actions, ev.Action) }})
	v1 := web(6, "1")
	v1.Health = []string{"true"}
	if err := c.Reconcile(ctx, []Deployment{v1}); err != nil {
		t.Fatal(err)
	}
	actions = nil
	v2 := web(6, "2")
	v2.Health = []string{"false"}
	err := c.Reconcile(ctx, []Deployment{v2})
	if !errors.Is(err, errcode.FailedPrecondition) || !bytesContain(err.Error(), "rolled back") {
		t.Fatalf("a failing upgrade: %v", err)
	}
	if want := []Action{Started, Unhealthy, Removed, RolledBack}; !slices.Equal(actions, want) {
		t.Fatalf("actions %v, want %v", actions, want)
	}
	running, total := jobReplicas(t, cl, "web")
	if len(running[v1.Version()]) != 6 || total != 6 {
		t.Fatalf("after the rollback: %v, %d in all", running, total)
	}
}

// TestLostServer: a server that stops answering keeps its replicas
// through the grace period; after it they run elsewhere; when it returns
// its stale replicas go, and exactly the declared count runs.
func TestLostServer(t *testing.T) {
	ctx := t.Context()
	cl, fs := testCluster(t)
	clk := newClock()
	c := NewController(cl, &ControllerOptions{Grace: 30 * time.Second, Now: clk.Now})
	d := web(6, "1")
	if err := c.Reconcile(ctx, []Deployment{d}); err != nil {
		t.Fatal(err)
	}
	fs[2].setDown(true)
	if err := c.Reconcile(ctx, []Deployment{d}); err != nil {
		t.Fatal(err)
	}
	if running, _ := jobReplicas(t, cl, "web"); len(running[d.Version()]) != 4 {
		t.Fatalf("within the grace period: %v (s2's 2 not seen, none started)", running)
	}
	clk.Add(31 * time.Second)
	if err := c.Reconcile(ctx, []Deployment{d}); err != nil {
		t.Fatal(err)
	}
	if running, _ := jobReplicas(t, cl, "web"); len(running[d.Version()]) != 6 {
		t.Fatalf("after the grace period: %v; want 6 on s0 and s1", running)
	}
	fs[2].setDown(false)
	if err := c.Reconcile(ctx, []Deployment{d}); err != nil {
		t.Fatal(err)
	}
	running, total := jobReplicas(t, cl, "web")
	if len(running[d.Version()]) != 6 || total != 6 {
		t.Fatalf("after s2 returned: %v, %d in all; want exactly 6", running, total)
	}
}

func TestControllerRefusesBadDeployments(t *testing.T) {
	cl, _ := testCluster(t)
	c := NewController(cl, nil)
	noImage := web(1, "1")
	noImage.Image = ""
	negative := web(-1, "1")
	surge := web(1, "1")
	surge.Update.MaxSurge = -1
	for _, d := range []Deployment{noImage, negative, surge} {
		if err := c.Reconcile(t.Context(), []Deployment{d}); !errors.Is(err, errcode.InvalidArgument) {
			t.Errorf("%+v: %v", d, err)
		}
	}
	if _, total := jobReplicas(t, cl, "web"); total != 0 {
		t.Fatalf("refused deployments left %d replicas", total)
	}
}

// TestPlan shows what Reconcile would do and changes nothing.
func TestPlan(t *testing.T) {
	ctx := t.Context()
	cl, _ := testCluster(t)
	c := NewController(cl, nil)
	v1 := web(6, "1")
	if err := c.Reconcile(ctx, []Deployment{v1}); err != nil {
		t.Fatal(err)
	}
	plan := func(d Deployment) Change {
		t.Helper()
		chs, err := c.Plan(ctx, []Deployment{d})
		if err != nil || len(chs) != 1 {
			t.Fatalf("Plan = %+v, %v", chs, err)
		}
		return chs[0]
	}
	if ch := plan(v1); ch.Start+ch.Replace+ch.Remove != 0 || ch.Running[v1.Version()] != 6 {
		t.Fatalf("nothing to do: %+v", ch)
	}
	v2 := web(6, "2")
	if ch := plan(v2); ch.Start != 6 || ch.Replace != 6 || ch.Remove != 0 || len(ch.Placed) != 6 || ch.Version != v2.Version() {
		t.Fatalf("an upgrade: %+v", ch)
	}
	if ch := plan(web(4, "1")); ch.Remove != 2 || ch.Start != 0 {
		t.Fatalf("scaling down: %+v", ch)
	}
	if ch := plan(web(40, "1")); ch.Start != 34 || len(ch.Unplaced) != 1 || ch.Unplaced[0].Count+len(ch.Placed) != 34 {
		t.Fatalf("more than fits: %+v", ch)
	}
	if running, total := jobReplicas(t, cl, "web"); total != 6 || len(running[v1.Version()]) != 6 {
		t.Fatalf("Plan changed the cluster: %v, %d", running, total)
	}
	if _, err := c.Plan(ctx, []Deployment{web(-1, "1")}); !errors.Is(err, errcode.InvalidArgument) {
		t.Fatalf("Plan of an invalid deployment: %v", err)
	}
}
