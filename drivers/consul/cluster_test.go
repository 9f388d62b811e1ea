package consul

import (
	"context"
	"fmt"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/musterkit/muster/discovery/driver"
	"github.com/musterkit/muster/internal/consultest"
	"github.com/musterkit/muster/roottest"
	"github.com/musterkit/muster/testhost"
)

// TestClusterSurvivesAServer runs a 3-server Consul cluster, one server
// per test host, kills the leader, and checks that the others elect a new
// one and keep answering and registering; the time without answers is
// logged.
func TestClusterSurvivesAServer(t *testing.T) {
	cmds, drivers := startServers(t)
	ctx := context.Background()
	var any *Driver
	for _, d := range drivers {
		any = d
	}
	leader, err := any.Client().Status().Leader() // "addr:8300"
	if err != nil {
		t.Fatal(err)
	}
	leaderHTTP := leader[:len(leader)-len("8300")] + "8500"
	var survivor *Driver
	for addr, d := range drivers {
		if addr != leaderHTTP {
			survivor = d
		}
	}
	inst := &driver.Instance{ID: "db-1", Service: "db", Address: "198.19.0.5", Port: 5432}
	if err := survivor.Register(ctx, inst); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	if err := cmds[leaderHTTP].Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmds[leaderHTTP].Wait()
	var outage time.Duration
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		es, err := survivor.Resolve(ctx, driver.Query{Service: "db"})
		if err == nil && len(es) == 1 && es[0].ID == "db-1" {
			outage = time.Since(killed)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no answer a minute after the leader %s was killed: %v, %v", leader, es, err)
		}
	}
	t.Logf("leader %s killed: answers again after %v", leader, outage.Round(time.Millisecond))
	if err := survivor.Register(ctx, &driver.Instance{ID: "db-2", Service: "db", Address: "198.19.0.6", Port: 5432}); err != nil {
		t.Fatalf("registering after the leader died: %v", err)
	}
	for addr, d := range drivers {
		if addr == leaderHTTP {
			continue
		}
		es, err := d.Resolve(ctx, driver.Query{Service: "db"})
		if err != nil || len(es) != 2 {
			t.Fatalf("%s after the failover: %v, %v", addr, es, err)
		}
	}
}

// startServers runs a 3-server Consul cluster, one server per test host,
// and returns each server's process and a driver of it, by HTTP address.
func startServers(t *testing.T) (map[string]*exec.Cmd, map[string]*Driver) {
	t.Helper()
	roottest.Require(t, roottest.Binary("consul"), roottest.Kernel(roottest.Veth))
	c := testhost.New(t, 3)
	var joins []string
	for _, h := range c.Hosts {
		joins = append(joins, "-retry-join", h.Addr.String())
	}
	cmds := map[string]*exec.Cmd{}
	for i, h := range c.Hosts {
		args := append([]string{"agent", "-server", "-bootstrap-expect", "3", "-node", fmt.Sprint("s", i),
			"-bind", h.Addr.String(), "-client", h.Addr.String(), "-data-dir", t.TempDir(),
			"-dns-port", "-1", "-grpc-port", "-1", "-hcl", "performance { raft_multiplier = 1 }"}, joins...)
		cmd := h.Command(context.Background(), "consul", args...)
		log := &consultest.Log{}
		cmd.Stdout, cmd.Stderr = log, log
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds[h.Addr.String()+":8500"] = cmd
		t.Cleanup(func() {
			if cmd.ProcessState == nil {
				cmd.Process.Kill()
				cmd.Wait()
			}
			if t.Failed() {
				t.Logf("consul on %s logged:\n%s", h.Name, log.String())
			}
		})
	}
	drivers := map[string]*Driver{}
	for addr := range cmds {
		for deadline := time.Now().Add(time.Minute); ; time.Sleep(200 * time.Millisecond) {
			d, err := Open(context.Background(), &Options{Address: addr})
			if err == nil {
				drivers[addr] = d
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("consul at %s has no leader after a minute: %v", addr, err)
			}
		}
	}
	return cmds, drivers
}
