package consul

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/musterkit/muster/container"
	"github.com/musterkit/muster/container/driver"
	"github.com/musterkit/muster/container/drivertest"
	"github.com/musterkit/muster/container/memcontainer"
	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/internal/consultest"
	"github.com/musterkit/muster/schedule"
	"github.com/musterkit/muster/schedule/storetest"
)

func TestScheduleStore(t *testing.T) {
	consultest.Require(t)
	d := startDevAgent(t)
	s, err := d.ScheduleStore("muster/schedule")
	if err != nil {
		t.Fatal(err)
	}
	storetest.Run(t, s)
	if _, err := d.ScheduleStore("/abs"); !errors.Is(err, errcode.InvalidArgument) {
		t.Fatalf("an absolute prefix: %v", err)
	}
}

// counting is a memory server that counts the containers created on it.
type counting struct {
	*memcontainer.Driver
	creates *atomic.Int32
}

func (c counting) Create(ctx context.Context, spec *driver.Spec) (*driver.Info, error) {
	c.creates.Add(1)
	return c.Driver.Create(ctx, spec)
}

// TestTwoControllers: two controllers of one cluster, each through its own
// server of a 3-server Consul cluster, contend for the leader lock; only
// the leader acts. The leader's Consul server is killed half way through a
// deployment: the other takes over and finishes it, and across the
// handover no replica is created twice and none is missing (the creates
// are counted), and the deposed leader acts no more.
func TestTwoControllers(t *testing.T) {
	cmds, drivers := startServers(t)
	var addrs []string
	for addr := range drivers {
		addrs = append(addrs, addr)
	}
	m, blob := drivertest.BaseImage(t)
	cl := container.NewCluster(nil)
	var creates atomic.Int32
	for i := range 3 {
		d := memcontainer.New(&memcontainer.Options{Hostname: fmt.Sprint("m", i), CPUs: 4, MemoryBytes: 8 << 30})
		if _, err := d.PutImage(context.Background(), m, bytes.NewReader(blob)); err != nil {
			t.Fatal(err)
		}
		cl.AddServer(fmt.Sprint("m", i), container.NewServer(counting{d, &creates}, nil))
	}
	store, err := drivers[addrs[0]].ScheduleStore("muster/schedule")
	if err != nil {
		t.Fatal(err)
	}
	web := &schedule.Deployment{Job: schedule.Job{Name: "web", Replicas: 6, Resources: schedule.Resources{MilliCPU: 500}}, Image: "base"}
	if err := store.Put(context.Background(), web); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type contender struct {
		name    string
		actions atomic.Int32
		killed  atomic.Bool // its Consul server was killed
		after   atomic.Int32
	}
	var (
		mu      sync.Mutex
		leaders []string
		wg      sync.WaitGroup
	)
	// run contends for the lock through the Consul server at addr, leads
	// until it loses it, and contends again, until the test ends.
	run := func(k *contender, addr string) {
		defer wg.Done()
		d := drivers[addr]
		s, _ := d.ScheduleStore("muster/schedule")
		for ctx.Err() == nil {
			lead, err := d.Lock(ctx, "muster/schedule/leader", &LockOptions{Holder: k.name, TTL: 10 * time.Second})
			if err != nil {
				time.Sleep(200 * time.Millisecond) // an election, or a dead server
				continue
			}
			mu.Lock()
			leaders = append(leaders, k.name)
			mu.Unlock()
			c := schedule.NewController(cl, &schedule.ControllerOptions{Store: s, Fence: lead.Fence, Events: func(ev schedule.Event) {
				k.actions.Add(1)
				if k.killed.Load() {
					k.after.Add(1)
				}
				// Half way through, the first leader's Consul server dies.
				if k.actions.Load() == 3 && k.name == "a" {
					k.killed.Store(true)
					cmds[addr].Process.Signal(syscall.SIGKILL)
					cmds[addr].Wait()
				}
			}})
			leading, stop := context.WithCancel(ctx)
			go func() {
				select {
				case <-lead.Lost:
				case <-leading.Done():
				}
				stop()
			}()
			c.Run(leading, 100*time.Millisecond)
			stop()
		}
	}
	a, b := &contender{name: "a"}, &contender{name: "b"}
	wg.Add(2)
	go run(a, addrs[1])
	time.Sleep(500 * time.Millisecond) // a takes the lock first
	go run(b, addrs[2])

	started := time.Now()
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(100 * time.Millisecond) {
		if st, _ := store.Stable(context.Background(), "web"); st != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no controller converged the deployment: leaders %v, %d creates", leaders, creates.Load())
		}
	}
	t.Logf("converged %v after the start, with leaders %v", time.Since(started).Round(time.Millisecond), leaders)
	cancel()
	wg.Wait()
	if len(leaders) != 2 || leaders[0] != "a" || leaders[1] != "b" {
		t.Fatalf("leaders %v; want a, then b", leaders)
	}
	if n := a.after.Load(); n != 0 {
		t.Fatalf("a acted %d times after its Consul server died", n)
	}
	all, _ := cl.Containers(context.Background())
	if creates.Load() != 6 || len(all) != 6 {
		t.Fatalf("%d creates, %d containers; want 6 of each (none repeated, none lost)", creates.Load(), len(all))
	}
}
