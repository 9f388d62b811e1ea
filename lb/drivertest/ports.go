package drivertest

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/musterkit/muster/internal/freeport"
	"github.com/musterkit/muster/lb/driver"
)

// LoopbackBind is a Harness.Bind for real drivers: 127.0.0.1 and a port
// nothing listened on a moment ago. A process running in parallel can take
// the port before the balancer binds it: apply the config with
// ApplyRebinding.
func LoopbackBind(t *testing.T) (string, uint16) {
	return "127.0.0.1", uint16(freeport.Pick(t, "tcp", "127.0.0.1", 1)[0])
}

// ApplyRebinding applies c to d. If the balancer fails because the address
// of a frontend of c is in use (its error names the address, see
// freeport.Taken: a process running in parallel took the port bind picked
// before the balancer bound it), those frontends get new addresses and
// ports from bind and c is applied again, up to freeport.Tries times. c is
// changed in place, so that it says what was applied.
func ApplyRebinding(ctx context.Context, t *testing.T, d driver.Driver, c *driver.Config, bind func(*testing.T) (string, uint16)) error {
	t.Helper()
	return freeport.Retry(t, func() error {
		err := d.Apply(ctx, c)
		if err == nil || c == nil {
			return err
		}
		var taken []string
		for i := range c.Frontends {
			f := &c.Frontends[i]
			if a := net.JoinHostPort(f.Address, strconv.Itoa(int(f.Port))); freeport.Taken(err.Error(), a) {
				taken = append(taken, a)
				f.Address, f.Port = bind(t)
			}
		}
		if len(taken) > 0 {
			return fmt.Errorf("%w: frontend addresses %s: %w", freeport.ErrInUse, strings.Join(taken, ", "), err)
		}
		return err
	})
}

// RunTakenPortTest checks ApplyRebinding on the balancers open returns
// (fresh ones, that bind on loopback): the port picked for a frontend is
// taken by another socket before the balancer binds it, as by a process
// running in parallel; the balancer fails naming the address, and the
// config is applied again with another port, where the balancer serves.
func RunTakenPortTest(t *testing.T, open func(*testing.T) driver.Driver) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	defer backend.Close()
	var picks [][]int
	p := &freeport.Picker{AfterPick: func(ports []int) {
		if len(picks) == 0 {
			freeport.Hold(t, "tcp", "127.0.0.1", ports[0])
		}
		picks = append(picks, ports)
	}}
	bind := func(t *testing.T) (string, uint16) { return "127.0.0.1", uint16(p.Pick(t, "tcp", "127.0.0.1", 1)[0]) }
	addr, port := bind(t)
	cfg := &driver.Config{
		Pools: []driver.Pool{{Name: "web", Servers: []driver.Server{
			{Name: "a", Address: "127.0.0.1", Port: uint16(backend.Listener.Addr().(*net.TCPAddr).Port)}}}},
		Frontends: []driver.Frontend{{Name: "www", Protocol: driver.HTTP, Address: addr, Port: port, DefaultPool: "web"}},
	}
	d := open(t)
	if err := ApplyRebinding(ctx(t), t, d, cfg, bind); err != nil {
		t.Fatal(err)
	}
	fe := cfg.Frontends[0]
	if len(picks) != 2 || fe.Port == port || int(fe.Port) != picks[1][0] {
		t.Fatalf("picks %v, frontend on %s:%d; want the second pick after the first was taken", picks, fe.Address, fe.Port)
	}
	if got, err := d.Config(ctx(t)); err != nil || !driver.Equal(got, cfg) {
		t.Fatalf("Config = %s, %v; want %s", show(got), err, show(cfg))
	}
	url := fmt.Sprintf("http://%s/", net.JoinHostPort(fe.Address, strconv.Itoa(int(fe.Port))))
	c := &http.Client{}
	defer c.CloseIdleConnections()
	if body, err := Get(c, url); err != nil || body != "ok" {
		t.Fatalf("GET %s = %q, %v", url, body, err)
	}
}
