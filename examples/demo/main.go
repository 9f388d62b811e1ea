// Command demo runs Muster's main job on one machine. As root it builds
// three simulated servers (network namespaces), runs a real muster-agent
// with the LXC driver on each, joins them to a cluster with one-time
// tokens (each bound to its server's name and address, and passed in a
// file, never on the command line), builds the offline busybox base
// image and distributes it, creates and starts containers across the
// servers, execs in one, moves a running container to another server,
// prints a cluster-wide table, rotates certificates under load and revokes
// a server (on loopback, in this process), and cleans everything up.
// Without root it says what it needs and runs the same flow on in-memory
// servers.
//
//	demo -agent bin/muster-agent
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/musterkit/muster/container"
	"github.com/musterkit/muster/container/image"
	"github.com/musterkit/muster/container/memcontainer"
	"github.com/musterkit/muster/discovery"
	"github.com/musterkit/muster/discovery/dnsfront"
	"github.com/musterkit/muster/discovery/memdiscovery"
	"github.com/musterkit/muster/ha"
	"github.com/musterkit/muster/internal/fleet"
	lbdriver "github.com/musterkit/muster/lb/driver"
	"github.com/musterkit/muster/network"
	netdriver "github.com/musterkit/muster/network/driver"
	"github.com/musterkit/muster/network/memnetwork"
	"github.com/musterkit/muster/storage"
)

func main() {
	agentBin := flag.String("agent", "bin/muster-agent", "the muster-agent program the servers run")
	flag.Parse()
	log.SetFlags(0)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *agentBin); err != nil {
		log.Fatal("demo failed: ", err)
	}
}

func run(ctx context.Context, agentBin string) error {
	e, cleanup, err := servers(ctx, agentBin)
	if err != nil {
		return err
	}
	defer func() {
		step("cleaning up: containers, agents, namespaces")
		if err := cleanup(); err != nil {
			log.Print("cleanup: ", err)
		}
	}()
	return flow(ctx, e)
}

// env is what the flow runs on: the servers' containers and networks, and
// whether the servers carry real packets.
type env struct {
	containers *container.Cluster
	networks   *network.Fabric
	real       bool
	fleet      *fleet.Fleet // the servers with their agents, when real
}

// servers returns three servers: real ones as root, in-memory otherwise.
func servers(ctx context.Context, agentBin string) (*env, func() error, error) {
	netDir, err := os.MkdirTemp("", "muster-demo-networks-")
	if err != nil {
		return nil, nil, err
	}
	fabric, err := network.Open(ctx, netDir, nil)
	if err != nil {
		return nil, nil, err
	}
	if os.Geteuid() != 0 {
		fmt.Println("Not root: the real demo needs root (network namespaces, LXC containers, VXLAN) and")
		fmt.Println("the Debian packages lxc, lxc-dev, busybox-static and iproute2 (make demo installs them).")
		fmt.Println("Running the same flow on three in-memory servers instead.")
		cl := container.NewCluster(nil)
		for i, name := range []string{"s0", "s1", "s2"} {
			fabric.AddServer(ctx, name, network.Local{Driver: memnetwork.New(nil)}, netip.AddrFrom4([4]byte{198, 18, 0, byte(i + 1)}))
			d := memcontainer.New(&memcontainer.Options{Hostname: name, Bridges: []string{memnetwork.BridgeName(demoNetwork), memnetwork.BridgeName(secureNetwork)}})
			cl.AddServer(name, container.NewServer(d, nil))
		}
		return &env{containers: cl, networks: fabric}, func() error { return os.RemoveAll(netDir) }, nil
	}
	if _, err := os.Stat(agentBin); err != nil {
		return nil, nil, fmt.Errorf("the agent program: %w (run make demo, or go build -o bin/ ./examples/...)", err)
	}
	step("starting 3 simulated servers, each a network namespace running muster-agent (LXC driver)")
	agentLog, err := os.CreateTemp("", "muster-demo-agents-*.log")
	if err != nil {
		return nil, nil, err
	}
	f, err := fleet.Start(ctx, 3, fleet.Options{AgentBinary: agentBin, AgentLog: agentLog, Networks: []string{"vxlan", "wireguard"}, Storage: []string{"gluster"}})
	if err != nil {
		return nil, nil, err
	}
	for _, s := range f.Servers {
		fmt.Printf("  %s  namespace %-14s agent https://%s (joined with a one-time token bound to its name and address)\n", s.Name, s.Host.Netns, s.Addr)
		if err := fabric.AddServer(ctx, s.Name, s.Client, s.Host.Addr); err != nil {
			return nil, nil, errors.Join(err, f.Close())
		}
	}
	fmt.Printf("  agents log to %s\n", agentLog.Name())
	cleanup := func() error { return errors.Join(f.Close(), os.RemoveAll(netDir)) }
	return &env{containers: f.Cluster, networks: fabric, real: true, fleet: f}, cleanup, nil
}

// demoNetwork is the VXLAN network the demo's containers share;
// secureNetwork the encrypted one (VXLAN over WireGuard).
const (
	demoNetwork   = "demo"
	secureNetwork = "secure"
)

func flow(ctx context.Context, e *env) error {
	cl := e.containers
	step("building the base image offline from Debian's busybox-static")
	dir, err := os.MkdirTemp("", "muster-demo-images-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	store, err := image.OpenStore(dir, nil)
	if err != nil {
		return err
	}
	base, err := image.BuildBase(ctx, store, "base", nil)
	if err != nil {
		return err
	}
	fmt.Printf("  base  %s  %.1f MiB\n", base.Digest[:19], float64(base.Size)/(1<<20))

	step("distributing the image: to s0, then from s0 to the other servers")
	s0, _ := cl.Server("s0")
	if err := putImage(ctx, store, s0, "s0"); err != nil {
		return err
	}
	for _, to := range []string{"s1", "s2"} {
		bar := progressbar.DefaultBytes(base.Size, "  base s0 -> "+to)
		_, err := cl.CopyImage(ctx, "base", "s0", to, &container.ImageCopyOptions{Progress: func(ev container.ImageEvent) { bar.Set64(ev.Bytes) }})
		bar.Finish()
		if err != nil {
			return err
		}
	}

	spec := &network.Spec{ID: demoNetwork, Mode: netdriver.VXLAN, Subnet: netip.MustParsePrefix("198.19.128.0/24"), VNI: 100}
	if err := preflight(ctx, e, spec); err != nil {
		return err
	}
	step("building a VXLAN network across the servers (unicast, no multicast)")
	sts, err := e.networks.Ensure(ctx, spec)
	if err != nil {
		return err
	}
	for _, st := range sts {
		fmt.Printf("  %-12s bridge %s  %v  MTU %d  peers %d\n", st.Spec.Underlay, st.Bridge, st.Spec.Local, st.MTU, len(st.Peers))
	}

	step("creating and starting containers across the servers")
	placements := []struct{ name, server string }{{"web-1", "s0"}, {"web-2", "s1"}, {"db", "s2"}}
	for _, p := range placements {
		srv, err := cl.Server(p.server)
		if err != nil {
			return err
		}
		began := time.Now()
		n, err := e.networks.Attach(ctx, demoNetwork, p.server, p.name)
		if err != nil {
			return err
		}
		_, err = srv.Create(ctx, &container.Spec{
			Name:     p.name,
			Image:    "base",
			Limits:   container.Limits{MemoryBytes: 64 << 20, MilliCPU: 500, Pids: 100},
			Networks: []container.Network{n},
			Labels:   labels(p.name),
		})
		if err != nil {
			return err
		}
		if err := srv.Start(ctx, p.name); err != nil {
			return err
		}
		fmt.Printf("  %-6s on %s  %v  created and started in %v\n", p.name, p.server, n.Address, time.Since(began).Round(time.Millisecond))
	}

	step("exec in web-1: write a file, read the hostname")
	if err := exec(ctx, s0, "web-1", "state written on s0\n", "tee", "/root/state"); err != nil {
		return err
	}
	if err := exec(ctx, s0, "web-1", "", "hostname"); err != nil {
		return err
	}
	if err := talk(ctx, e, demoNetwork, "web-1", "s0", "db", "s2"); err != nil {
		return err
	}
	if err := table(ctx, cl); err != nil {
		return err
	}

	step("moving web-1 from s0 to s1 while it runs (stop, stream, import, start)")
	bar := progressbar.DefaultBytes(-1, "  web-1 s0 -> s1")
	_, err = cl.Move(ctx, "web-1", "s0", "s1", &container.TransferOptions{Progress: func(e container.Event) {
		bar.Describe(fmt.Sprintf("  web-1 s0 -> s1: %-8s", e.Phase))
		bar.Set64(e.Bytes)
	}})
	bar.Finish()
	fmt.Println()
	if err != nil {
		return err
	}
	s1, _ := cl.Server("s1")
	step("web-1 on s1 still has its file")
	if err := exec(ctx, s1, "web-1", "", "cat", "/root/state"); err != nil {
		return err
	}
	if err := talk(ctx, e, demoNetwork, "web-1", "s1", "db", "s2"); err != nil {
		return err
	}
	if err := table(ctx, cl); err != nil {
		return err
	}
	servers, err := balance(ctx, e)
	if err != nil {
		return err
	}
	if err := highlyAvailable(ctx, e, servers); err != nil {
		return err
	}
	if err := discover(ctx, e); err != nil {
		return err
	}
	if err := secure(ctx, e); err != nil {
		return err
	}
	if e.real {
		if err := share(ctx, e); err != nil {
			return err
		}
		if err := job(ctx, e); err != nil {
			return err
		}
	}
	return rotateAndRevoke(ctx)
}

// share puts a GlusterFS volume replicated over s0 and s1 into a
// container on each: what one writes, the other reads.
func share(ctx context.Context, e *env) error {
	step("shared storage: a GlusterFS volume replicated over s0 and s1 (glusterd on each, through its agent)")
	pools := e.fleet.Storage
	if err := pools.Create(ctx, storage.PoolSpec{Name: "shared", Kind: "gluster", Servers: []string{"s0", "s1"}, Layout: storage.Layout{Kind: storage.Replicate, Copies: 2}}); err != nil {
		return err
	}
	if err := pools.CreateVolume(ctx, "shared", storage.Volume{Name: "data"}); err != nil {
		return err
	}
	for _, srv := range []string{"s0", "s1"} {
		path, err := pools.Mount(ctx, srv, "shared", "data", nil)
		if err != nil {
			return err
		}
		fmt.Printf("  %s mounted shared/data at %s\n", srv, path)
		name := "files-" + srv
		s, _ := e.containers.Server(srv)
		if _, err := s.Create(ctx, &container.Spec{Name: name, Image: "base", Mounts: []container.Mount{{Volume: "shared/data", Target: "/data"}}}); err != nil {
			return err
		}
		if err := s.Start(ctx, name); err != nil {
			return err
		}
	}
	step("files-s0 (on s0) writes /data/greeting; files-s1 (on s1) reads it")
	s0, _ := e.containers.Server("s0")
	s1, _ := e.containers.Server("s1")
	if err := exec(ctx, s0, "files-s0", "", "sh", "-c", "echo hello from s0 > /data/greeting"); err != nil {
		return err
	}
	if err := exec(ctx, s1, "files-s1", "", "cat", "/data/greeting"); err != nil {
		return err
	}
	st, err := pools.Status(ctx, "shared")
	if err != nil {
		return err
	}
	w := tabwriter.NewWriter(os.Stdout, 2, 0, 2, ' ', 0)
	fmt.Fprintln(w, "  VOLUME\tHEALTH\tSOURCE\tMOUNTED ON")
	for _, v := range st.Volumes {
		var on []string
		for srv, ms := range st.Mounts {
			for _, m := range ms {
				if m.Volume == v.Name && m.Healthy {
					on = append(on, srv)
				}
			}
		}
		slices.Sort(on)
		fmt.Fprintf(w, "  %s\t%s\t%s\t%s\n", v.Name, v.Health, v.Source, strings.Join(on, ", "))
	}
	return w.Flush()
}

// labels are a demo container's labels: its app, and for db the service
// it offers (discovery.LabelService), which the publisher registers.
func labels(name string) map[string]string {
	l := map[string]string{"app": strings.TrimRight(name, "-0123456789")}
	if name == "db" {
		l[discovery.LabelService], l[discovery.LabelPort] = "mysql", "3306"
	}
	return l
}

// highlyAvailable deploys, in one call through the agents, a pair of
// HAProxy balancers on s0 and s1 behind a floating IP (keepalived, 100 ms
// advertisements) in front of servers, then kills s0's HAProxy: the
// address moves to s1 and the service stays reachable.
func highlyAvailable(ctx context.Context, e *env, servers []lbdriver.Server) error {
	step("high availability: HAProxy on s0 and s1 behind one floating IP (keepalived), deployed in one call")
	if !e.real {
		fmt.Println("  (in-memory servers run no keepalived)")
		return nil
	}
	s0, s1 := e.fleet.Servers[0], e.fleet.Servers[1]
	a4 := s0.Host.Addr.As4()
	a4[3] = 200
	vip := netip.AddrFrom4(a4)
	member := func(s *fleet.Server) ha.PairMember {
		return ha.PairMember{Name: s.Name, Interface: s.Host.Link, Address: s.Host.Addr,
			HA: s.Client.FloatingIP("keepalived", "edge"), LB: s.Client.Balancer("haproxy", "edge")}
	}
	g, err := ha.DeployPair(ctx, ha.Spec{Name: "edge", VirtualRouterID: 62, Addresses: []netip.Addr{vip}, AdvertInterval: 100 * time.Millisecond},
		&lbdriver.Config{
			Frontends: []lbdriver.Frontend{{Name: "http", Protocol: lbdriver.HTTP, Address: "0.0.0.0", Port: 8081, DefaultPool: "web"}},
			Pools:     []lbdriver.Pool{{Name: "web", Servers: servers}},
		}, member(s0), member(s1), nil)
	if err != nil {
		return err
	}
	defer g.Close()
	url := fmt.Sprintf("http://%s:8081/", vip)
	client := &http.Client{Timeout: 500 * time.Millisecond}
	served := func() (string, bool) {
		resp, err := client.Get(url)
		if err != nil {
			return err.Error(), false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return strings.TrimSpace(string(b)), resp.StatusCode == http.StatusOK
	}
	waitServed := func() (string, error) {
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			if body, ok := served(); ok {
				return body, nil
			} else if time.Now().After(deadline) {
				return "", fmt.Errorf("%s not served: %s", url, body)
			}
		}
	}
	body, err := waitServed()
	if err != nil {
		return err
	}
	fmt.Printf("  floating IP %v held by %v; GET %s -> %s\n", vip, g.Status(ctx).Holders, url, body)
	b, err := os.ReadFile(filepath.Join(s0.Dir, "balancers", "edge", "haproxy.pid"))
	if err != nil {
		return err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return err
	}
	step("killing s0's HAProxy: keepalived's check fails, s1 takes the floating IP over")
	killed := time.Now()
	if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil {
		return err
	}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if h := g.Status(ctx).Holders; len(h) == 1 && h[0] == s1.Name {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("s1 did not take the floating IP over: holders %v", g.Status(ctx).Holders)
		}
	}
	if body, err = waitServed(); err != nil {
		return err
	}
	fmt.Printf("  floating IP now held by %v, served again after %v; GET -> %s\n", g.Status(ctx).Holders, time.Since(killed).Round(10*time.Millisecond), body)
	return nil
}

// discover publishes the labelled containers of s2 into the embedded
// registry, serves it as DNS on s0's address on the demo network, and has
// web-1 resolve mysql.service.muster with its own resolver (nslookup).
func discover(ctx context.Context, e *env) error {
	step("service discovery: s2's labelled containers published into the embedded registry")
	reg, err := discovery.New(memdiscovery.New(nil), nil)
	if err != nil {
		return err
	}
	defer reg.Close()
	s2, err := e.containers.Server("s2")
	if err != nil {
		return err
	}
	pub, err := discovery.NewPublisher(reg, "s2", s2, nil)
	if err != nil {
		return err
	}
	if err := pub.Sync(ctx); err != nil {
		return err
	}
	es, err := reg.Resolve(ctx, "mysql", "")
	if err != nil {
		return err
	}
	for _, en := range es {
		fmt.Printf("  mysql: %s at %s:%d (%s)\n", en.ID, en.Address, en.Port, en.Health)
	}
	if !e.real {
		fmt.Println("  (in-memory servers run no DNS clients)")
		return nil
	}
	sts, err := e.networks.Status(ctx, demoNetwork)
	if err != nil {
		return err
	}
	dnsAddr := net.JoinHostPort(sts[0].Spec.Local.Addr().String(), "53")
	front, err := dnsfront.New(reg.Driver(), nil)
	if err != nil {
		return err
	}
	var udp net.PacketConn
	var tcp net.Listener
	err = e.fleet.Servers[0].Host.Do(func() error {
		var err error
		if udp, err = net.ListenPacket("udp", dnsAddr); err != nil {
			return err
		}
		tcp, err = net.Listen("tcp", dnsAddr)
		return err
	})
	if err != nil {
		return err
	}
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	go front.Serve(sctx, udp, tcp)
	step("web-1 (on s1) resolves mysql.service.muster through the DNS front on " + dnsAddr)
	s1, _ := e.containers.Server("s1")
	return exec(ctx, s1, "web-1", "", "nslookup", "mysql.service.muster", sts[0].Spec.Local.Addr().String())
}

// balance deploys HAProxy on s2 through its agent, in front of web
// servers (busybox httpd) in web-1 and web-2, sends it requests, and
// returns the web servers.
func balance(ctx context.Context, e *env) ([]lbdriver.Server, error) {
	step("a load balancer: HAProxy deployed on s2 through its agent, in front of web-1 and web-2")
	if !e.real {
		fmt.Println("  (in-memory servers run no HAProxy)")
		return nil, nil
	}
	var servers []lbdriver.Server
	for _, name := range []string{"web-1", "web-2"} {
		srv, err := e.containers.Server("s1") // both live on s1 now
		if err != nil {
			return nil, err
		}
		script := fmt.Sprintf("mkdir -p /www && echo hello from %s > /www/index.html && httpd -p 8080 -h /www", name)
		if code, err := srv.Exec(ctx, name, &container.Process{Args: []string{"sh", "-c", script}}); err != nil || code != 0 {
			return nil, fmt.Errorf("starting httpd in %s: exit %d, %v", name, code, err)
		}
		n, err := e.networks.Attach(ctx, demoNetwork, "s1", name)
		if err != nil {
			return nil, err
		}
		servers = append(servers, lbdriver.Server{Name: name, Address: n.Address.Addr().String(), Port: 8080})
	}
	s2 := e.fleet.Servers[2]
	bal := s2.Client.Balancer("haproxy", "front")
	err := bal.Apply(ctx, &lbdriver.Config{
		Frontends: []lbdriver.Frontend{{Name: "http", Protocol: lbdriver.HTTP, Address: "0.0.0.0", Port: 8080, DefaultPool: "web"}},
		Pools: []lbdriver.Pool{{Name: "web", Algorithm: lbdriver.RoundRobin, Servers: servers,
			HealthCheck: &lbdriver.HealthCheck{Type: lbdriver.HTTPCheck, Interval: time.Second}}},
	})
	if err != nil {
		return nil, err
	}
	url := fmt.Sprintf("http://%s:8080/", s2.Host.Addr)
	get := func() string {
		resp, err := http.Get(url)
		if err != nil {
			return err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return strings.TrimSpace(string(b))
	}
	for range 4 {
		fmt.Printf("  GET %s -> %s\n", url, get())
	}
	step("draining web-2 through the runtime API (no reload): new requests go to web-1")
	if err := bal.SetState(ctx, "web", "web-2", lbdriver.Drain); err != nil {
		return nil, err
	}
	for range 2 {
		fmt.Printf("  GET %s -> %s\n", url, get())
	}
	st, err := bal.Stats(ctx)
	if err != nil {
		return nil, err
	}
	fmt.Println("  SERVER  STATE  WEIGHT  CONNECTIONS")
	for _, s := range st {
		fmt.Printf("  %-7s %-6s %-7d %d\n", s.Server, s.State, s.Weight, s.TotalConnections)
	}
	return servers, nil
}

// preflight checks the underlay between every pair of servers for spec
// and prints what it found.
func preflight(ctx context.Context, e *env, spec *network.Spec) error {
	step("preflight: probing the underlay between every pair of servers for " + string(spec.Mode))
	if !e.real {
		fmt.Println("  (in-memory servers have no underlay to probe)")
		return nil
	}
	r, err := e.networks.Preflight(ctx, spec)
	if err != nil {
		return err
	}
	for _, p := range r.Pairs {
		ports := ""
		for _, pr := range p.Ports {
			ports += fmt.Sprintf("  %s reachable %v", pr.Port, pr.Reachable)
		}
		fmt.Printf("  %s -> %s  rtt %-9v path MTU %d%s\n", p.From, p.To, p.RTT.Round(time.Microsecond), p.PathMTU, ports)
	}
	fmt.Printf("  overlaps: %d; the largest network MTU every path carries: %d\n", len(r.Overlaps), r.MTU)
	return r.Err()
}

// secure builds an encrypted layer-2 network (VXLAN over WireGuard) and
// has two new containers on different servers talk over it.
func secure(ctx context.Context, e *env) error {
	spec := &network.Spec{ID: secureNetwork, Mode: netdriver.VXLANOverWireGuard, Subnet: netip.MustParsePrefix("198.19.129.0/24"), VNI: 101}
	if err := preflight(ctx, e, spec); err != nil {
		return err
	}
	step("building an encrypted layer-2 network: VXLAN inside WireGuard tunnels")
	sts, err := e.networks.Ensure(ctx, spec)
	if err != nil {
		return err
	}
	for _, st := range sts {
		fmt.Printf("  %-12s bridge %s  %v  MTU %d  WireGuard key %s...\n", st.Spec.Underlay, st.Bridge, st.Spec.Local, st.MTU, st.PublicKey[:12])
	}
	for _, p := range []struct{ name, server string }{{"vault", "s0"}, {"api", "s2"}} {
		srv, err := e.containers.Server(p.server)
		if err != nil {
			return err
		}
		n, err := e.networks.Attach(ctx, secureNetwork, p.server, p.name)
		if err != nil {
			return err
		}
		if _, err := srv.Create(ctx, &container.Spec{Name: p.name, Image: "base", Networks: []container.Network{n}}); err != nil {
			return err
		}
		if err := srv.Start(ctx, p.name); err != nil {
			return err
		}
		fmt.Printf("  %-6s on %s  %v\n", p.name, p.server, n.Address)
	}
	if err := talk(ctx, e, secureNetwork, "api", "s2", "vault", "s0"); err != nil {
		return err
	}
	sts, err = e.networks.Status(ctx, secureNetwork)
	if err != nil {
		return err
	}
	for _, st := range sts {
		fmt.Printf("  %-12s WireGuard handshakes with %v\n", st.Spec.Underlay, st.Connected)
	}
	return nil
}

// talk sends a line over TCP on network id from container from to
// container to, on other servers, with busybox nc.
func talk(ctx context.Context, e *env, id, from, fromServer, to, toServer string) error {
	step(fmt.Sprintf("TCP over network %q: %s on %s -> %s on %s", id, from, fromServer, to, toServer))
	if !e.real {
		fmt.Println("  (in-memory servers carry no packets)")
		return nil
	}
	src, _ := e.containers.Server(fromServer)
	dst, _ := e.containers.Server(toServer)
	n, err := e.networks.Attach(ctx, id, toServer, to)
	if err != nil {
		return err
	}
	msg := fmt.Sprintf("hello %s, this is %s\n", to, from)
	got, err := fleet.Talk(ctx, src, from, dst, to, n.Address.Addr(), msg)
	if err != nil {
		return err
	}
	fmt.Printf("  %s (%v) received: %s", to, n.Address.Addr(), got)
	return nil
}

func putImage(ctx context.Context, store *image.Store, srv *container.Server, name string) error {
	m, blob, err := store.Open(ctx, "base")
	if err != nil {
		return err
	}
	defer blob.Close()
	bar := progressbar.DefaultBytes(m.Size, "  base -> "+name)
	_, err = srv.PutImage(ctx, m, io.TeeReader(blob, bar))
	bar.Finish()
	return err
}

func exec(ctx context.Context, srv *container.Server, name, stdin string, args ...string) error {
	fmt.Printf("  $ %s\n", strings.Join(args, " "))
	var out strings.Builder
	code, err := srv.Exec(ctx, name, &container.Process{Args: args, Stdin: strings.NewReader(stdin), Stdout: &out, Stderr: &out})
	if err != nil {
		return err
	}
	for line := range strings.Lines(out.String()) {
		fmt.Print("    ", line)
	}
	if code != 0 {
		return fmt.Errorf("%s exited %d", args[0], code)
	}
	return nil
}

// table prints every container of the cluster, and the servers.
func table(ctx context.Context, cl *container.Cluster) error {
	step("cluster-wide view")
	w := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(w, "  SERVER\tHEALTH\tCPUS\tMEMORY FREE\tCONTAINERS\tRUNNING\tLATENCY")
	for _, s := range cl.Servers(ctx) {
		if !s.Healthy() {
			fmt.Fprintf(w, "  %s\tdown: %v\t\t\t\t\t\n", s.Name, s.Err)
			continue
		}
		h := s.Host
		fmt.Fprintf(w, "  %s\tok\t%d\t%.1f GiB\t%d\t%d\t%v\n", s.Name, h.CPUs, float64(h.MemoryFree)/(1<<30), h.Containers, h.Running, s.Latency.Round(time.Microsecond))
	}
	w.Flush()
	fmt.Println()
	all, err := cl.Containers(ctx)
	fmt.Fprintln(w, "  CONTAINER\tSERVER\tSTATE\tPID\tADDRESSES\tMEMORY\tCPU\tLABELS")
	for _, p := range all {
		var labels []string
		for _, k := range slices.Sorted(maps.Keys(p.Spec.Labels)) {
			labels = append(labels, k+"="+p.Spec.Labels[k])
		}
		fmt.Fprintf(w, "  %s\t%s\t%s\t%d\t%v\t%.1f MiB\t%v\t%s\n", p.Spec.Name, p.Server, p.State, p.PID,
			p.Addresses, float64(p.Usage.MemoryBytes)/(1<<20), p.Usage.CPU.Round(time.Millisecond), strings.Join(labels, ","))
	}
	w.Flush()
	return err
}

func step(msg string) { fmt.Printf("\n== %s\n", msg) }
