// Package tcplb is a small layer-4 load balancer that runs inside the
// calling process: the worked example of a Muster driver written in its own
// module. It implements github.com/musterkit/muster/lb/driver.Driver and
// passes the SDK's public suites (lb/drivertest).
//
// Each TCP frontend is a listener on its address and port. Every connection
// it accepts is proxied, byte for byte, to one server of its pool, picked
// among the usable servers (Ready and not failing their health check; the
// backup servers only while no other is usable) by the pool's algorithm:
//
//   - RoundRobin and Weighted: smooth weighted round robin (Nginx's), the
//     same for both here; weights may change at run time in both.
//   - LeastConnections: the fewest open connections relative to the
//     weight; ties are broken by weighted round robin.
//   - SourceHash: weighted rendezvous hashing of the client's IP address,
//     so a client keeps its server while that server is usable, and only
//     the clients of a server that leaves move.
//
// A server that refuses a connection or does not accept it within
// Options.ConnectTimeout is skipped for the next pick, so a dead server
// costs no client connection while another is usable.
//
// Server states: Drain takes no new connections and lets its open ones
// finish; Maintenance takes none and ends its open ones, as does removing
// a server from its pool (or changing its address or port).
//
// Health checks are active: a TCP check connects, an HTTP check sends
// GET Path and expects ExpectStatus (or any 2xx or 3xx). Servers start up;
// Fall consecutive failures take one down and Rise successes bring it back.
// What a check found survives configuration changes that keep the server
// (pool, name, address and port) and its check.
//
// Changes take effect in place, without a restart: Apply binds the
// listeners of new frontends first (if one fails, it closes those and the
// running configuration stays), then swaps the configuration; a frontend
// whose address and port did not change keeps its listener, a removed
// frontend's listener closes and its open connections finish. Applying an
// equal configuration changes nothing. Server operations are runtime
// changes. Reloads counts the Apply calls that changed the configuration.
//
// Server DNS names are resolved at every connection. Layer 7 (HTTP
// frontends, routes, redirects, headers), TLS and raw snippets are
// errcode.Unimplemented, as Capabilities says.
//
// It needs no privileges, except to bind ports below 1024
// (CAP_NET_BIND_SERVICE), and no host packages.
package tcplb

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"math"
	"net"
	"net/http"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/lb/driver"
)

var _ driver.Driver = (*Driver)(nil)

// Options configures Open. A nil *Options means the defaults.
type Options struct {
	// Do runs fn in the network namespace where the balancer listens,
	// connects to its servers and probes them: testhost.Host.Do, or
	// namespace.Runner for a namespace handle. Nil runs fn as it is, in
	// the calling goroutine's namespace.
	Do func(fn func() error) error
	// ConnectTimeout bounds a connection attempt to a server (a health
	// check's, also by the check's Timeout); 0 means 3s.
	ConnectTimeout time.Duration
}

// Driver is one in-process balancer. It is safe for concurrent use.
type Driver struct {
	do      func(func() error) error
	timeout time.Duration
	ctx     context.Context // ended by Close: ends dials and checks
	cancel  context.CancelFunc
	wg      sync.WaitGroup // accept loops, connections, checks

	mu        sync.Mutex
	cfg       *driver.Config // normalized, in force
	closed    bool
	reloads   int
	listeners map[string]net.Listener // by bind address (host:port)
	servers   map[string]*server      // by serverKey
	pools     map[string]*pool
}

// pool is a pool's servers in configuration order and its algorithm.
type pool struct {
	alg     driver.Algorithm
	servers []*server
}

// server is one server of a pool, with its counters and open connections.
// Its fields are guarded by Driver.mu, except key and addr, which never
// change.
type server struct {
	key       string // serverKey
	addr      string // host:port
	cfg       driver.Server
	check     driver.HealthCheck // zero: unchecked
	stopCheck context.CancelFunc
	down      bool
	cur       int // smooth weighted round robin
	active    int64
	total     int64
	conns     map[*conn]bool
}

// conn is a proxied connection; end closes both sides.
type conn struct{ client, upstream net.Conn }

func (c *conn) end() {
	c.client.Close()
	c.upstream.Close()
}

// Open returns an empty balancer. errcode.InvalidArgument for a negative
// ConnectTimeout.
func Open(ctx context.Context, opts *Options) (*Driver, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if opts == nil {
		opts = &Options{}
	}
	if opts.ConnectTimeout < 0 {
		return nil, errcode.New(errcode.InvalidArgument, "tcplb: connect timeout %v is negative", opts.ConnectTimeout)
	}
	d := &Driver{
		do: opts.Do, timeout: opts.ConnectTimeout,
		cfg: &driver.Config{}, listeners: map[string]net.Listener{},
		servers: map[string]*server{}, pools: map[string]*pool{},
	}
	if d.timeout == 0 {
		d.timeout = 3 * time.Second
	}
	if d.do == nil {
		d.do = func(fn func() error) error { return fn() }
	}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	return d, nil
}

// Capabilities says what an in-process layer-4 proxy does: active health
// checks, runtime server changes, drain and per-server connection counts;
// no HTTP, no TLS, no raw snippets.
func (d *Driver) Capabilities() driver.Capabilities {
	return driver.Capabilities{ActiveHealthChecks: true, RuntimeAPI: true, SessionStats: true, Drain: true}
}

func errClosed() error { return errcode.New(errcode.FailedPrecondition, "tcplb: balancer is closed") }

func bindAddr(f driver.Frontend) string {
	return net.JoinHostPort(f.Address, strconv.Itoa(int(f.Port)))
}

func serverKey(pool string, s driver.Server) string {
	return pool + "/" + s.Name + "/" + net.JoinHostPort(s.Address, strconv.Itoa(int(s.Port)))
}

// Apply implements driver.Driver: see the package documentation for what a
// change does. A frontend that cannot bind is the listen error's errno code
// (EADDRINUSE and EADDRNOTAVAIL are errcode.FailedPrecondition), and the
// message names the address.
func (d *Driver) Apply(ctx context.Context, cfg *driver.Config) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	if err := driver.CheckCapabilities(cfg, d.Capabilities()); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return errClosed()
	}
	if driver.Equal(cfg, d.cfg) {
		return nil
	}
	n := cfg.Normalized()
	opened := map[string]net.Listener{}
	for _, f := range n.Frontends {
		addr := bindAddr(f)
		if d.listeners[addr] != nil {
			continue
		}
		var l net.Listener
		err := d.do(func() (err error) { l, err = net.Listen("tcp", addr); return err })
		if err != nil {
			for _, l := range opened {
				l.Close()
			}
			return errcode.Syscall(err, "tcplb: frontend %q", f.Name)
		}
		opened[addr] = l
	}
	for addr, l := range opened {
		d.listeners[addr] = l
		d.wg.Add(1)
		go d.accept(l, addr)
	}
	d.install(n)
	d.reloads++
	return nil
}

// install makes n, valid and normalized, the configuration in force. The
// caller holds d.mu and has bound n's frontends.
func (d *Driver) install(n *driver.Config) {
	old := d.cfg
	d.cfg = n
	binds := map[string]bool{}
	for _, f := range n.Frontends {
		binds[bindAddr(f)] = true
	}
	for addr, l := range d.listeners {
		if !binds[addr] {
			l.Close()
			delete(d.listeners, addr)
		}
	}
	servers := map[string]*server{}
	d.pools = map[string]*pool{}
	for _, p := range n.Pools {
		op := old.Pool(p.Name)
		changed := op == nil || !reflect.DeepEqual(*op, p)
		var hc driver.HealthCheck
		if p.HealthCheck != nil {
			hc = *p.HealthCheck
		}
		np := &pool{alg: p.Algorithm}
		for _, sc := range p.Servers {
			k := serverKey(p.Name, sc)
			s := d.servers[k]
			if s == nil {
				s = &server{key: k, addr: net.JoinHostPort(sc.Address, strconv.Itoa(int(sc.Port))), conns: map[*conn]bool{}}
			}
			s.cfg = sc
			if changed {
				s.cur = 0
			}
			if s.check != hc {
				d.startCheck(s, hc)
			}
			if sc.State == driver.Maintenance {
				s.endConns()
			}
			servers[k] = s
			np.servers = append(np.servers, s)
		}
		d.pools[p.Name] = np
	}
	for k, s := range d.servers {
		if servers[k] == nil {
			s.stop()
		}
	}
	d.servers = servers
}

func (s *server) endConns() {
	for c := range s.conns {
		c.end()
	}
}

// stop ends the server's check and connections.
func (s *server) stop() {
	if s.stopCheck != nil {
		s.stopCheck()
		s.stopCheck = nil
	}
	s.endConns()
}

// startCheck replaces s's health check by hc (none if hc is zero). The
// caller holds d.mu.
func (d *Driver) startCheck(s *server, hc driver.HealthCheck) {
	if s.stopCheck != nil {
		s.stopCheck()
		s.stopCheck = nil
	}
	s.check = hc
	if hc.Type == "" {
		s.down = false
		return
	}
	ctx, cancel := context.WithCancel(d.ctx)
	s.stopCheck = cancel
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		d.checkLoop(ctx, s, hc)
	}()
}

// checkLoop probes s every interval until ctx ends, moving it down after
// Fall failures in a row and up after Rise successes.
func (d *Driver) checkLoop(ctx context.Context, s *server, hc driver.HealthCheck) {
	tick := time.NewTicker(hc.Interval)
	defer tick.Stop()
	ok, fail := 0, 0
	for {
		healthy := d.probe(ctx, s.addr, hc)
		if ctx.Err() != nil {
			return
		}
		d.mu.Lock()
		if healthy {
			ok, fail = ok+1, 0
		} else {
			ok, fail = 0, fail+1
		}
		if s.down && ok >= hc.Rise {
			s.down = false
		} else if !s.down && fail >= hc.Fall {
			s.down = true
		}
		d.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// probe runs one check of the server at addr within hc.Timeout.
func (d *Driver) probe(ctx context.Context, addr string, hc driver.HealthCheck) bool {
	ctx, cancel := context.WithTimeout(ctx, hc.Timeout)
	defer cancel()
	c, err := d.dial(ctx, addr)
	if err != nil {
		return false
	}
	defer c.Close()
	if hc.Type == driver.TCPCheck {
		return true
	}
	deadline, _ := ctx.Deadline()
	c.SetDeadline(deadline)
	// Path and addr passed Config.Validate: they need no escaping.
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", hc.Path, addr); err != nil {
		return false
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return false
	}
	resp.Body.Close()
	if hc.ExpectStatus != 0 {
		return resp.StatusCode == hc.ExpectStatus
	}
	return resp.StatusCode >= 200 && resp.StatusCode < 400
}

func (d *Driver) dial(ctx context.Context, addr string) (c net.Conn, err error) {
	dialer := net.Dialer{Timeout: d.timeout}
	err = d.do(func() error { c, err = dialer.DialContext(ctx, "tcp", addr); return err })
	return c, err
}

// accept serves the listener bound at addr until it is closed.
func (d *Driver) accept(l net.Listener, addr string) {
	defer d.wg.Done()
	for {
		c, err := l.Accept()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil { // out of file descriptors, for example
			time.Sleep(10 * time.Millisecond)
			continue
		}
		d.mu.Lock()
		if d.closed {
			d.mu.Unlock()
			c.Close()
			return
		}
		d.wg.Add(1)
		d.mu.Unlock()
		go func() {
			defer d.wg.Done()
			d.serve(addr, c)
		}()
	}
}

// serve proxies client, accepted at bind, to a server of the frontend's
// pool, trying the next pick if a server cannot be reached.
func (d *Driver) serve(bind string, client net.Conn) {
	var src netip.Addr
	if a, ok := client.RemoteAddr().(*net.TCPAddr); ok {
		src = a.AddrPort().Addr().Unmap()
	}
	var tried []*server
	for {
		s := d.pick(bind, src, tried)
		if s == nil {
			client.Close()
			return
		}
		up, err := d.dial(d.ctx, s.addr)
		if err != nil {
			d.release(s, nil)
			tried = append(tried, s)
			continue
		}
		c := &conn{client: client, upstream: up}
		if !d.attach(s, c) {
			c.end()
			return
		}
		pipe(client, up)
		d.release(s, c)
		return
	}
}

// pick chooses a server for a connection from src to the frontend bound
// at bind, skipping those tried, and counts the connection on it.
func (d *Driver) pick(bind string, src netip.Addr, tried []*server) *server {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	i := slices.IndexFunc(d.cfg.Frontends, func(f driver.Frontend) bool { return bindAddr(f) == bind })
	if i < 0 {
		return nil // the frontend was removed
	}
	s := d.pools[d.cfg.Frontends[i].DefaultPool].pick(src, tried)
	if s != nil {
		s.active++
	}
	return s
}

// attach registers c on s, which pick chose, unless s has left its pool or
// gone into maintenance meanwhile.
func (d *Driver) attach(s *server, c *conn) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed || s.cfg.State == driver.Maintenance || d.servers[s.key] != s {
		s.active--
		return false
	}
	s.total++
	s.conns[c] = true
	return true
}

// release uncounts a connection on s (c is nil for one never attached).
func (d *Driver) release(s *server, c *conn) {
	d.mu.Lock()
	defer d.mu.Unlock()
	s.active--
	delete(s.conns, c)
}

// pipe copies both ways until both directions end, passing a half close
// on; an error in either direction closes both.
func pipe(a, b net.Conn) {
	done := make(chan struct{})
	cp := func(dst, src net.Conn) {
		if _, err := io.Copy(dst, src); err != nil {
			a.Close()
			b.Close()
		} else if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
	}
	go func() {
		defer close(done)
		cp(b, a)
	}()
	cp(a, b)
	<-done
	a.Close()
	b.Close()
}

// pick chooses among the usable servers not in skip (the backups if no
// other is usable) by the pool's algorithm; nil if none is usable.
func (p *pool) pick(src netip.Addr, skip []*server) *server {
	if p == nil {
		return nil
	}
	var up []*server
	for _, backup := range []bool{false, true} {
		for _, s := range p.servers {
			if s.cfg.Backup == backup && s.cfg.State == driver.Ready && !s.down && !slices.Contains(skip, s) {
				up = append(up, s)
			}
		}
		if len(up) > 0 {
			break
		}
	}
	if len(up) == 0 {
		return nil
	}
	switch p.alg {
	case driver.LeastConnections:
		var least []*server
		for _, s := range up {
			if len(least) > 0 {
				// Compare active/weight without division.
				x, y := s.active*int64(least[0].cfg.Weight), least[0].active*int64(s.cfg.Weight)
				if x > y {
					continue
				}
				if x < y {
					least = least[:0]
				}
			}
			least = append(least, s)
		}
		return roundRobin(least)
	case driver.SourceHash:
		return rendezvous(up, src)
	}
	return roundRobin(up)
}

// roundRobin is smooth weighted round robin: every server gains its weight,
// the one with the most wins and loses the total.
func roundRobin(ss []*server) *server {
	var best *server
	total := 0
	for _, s := range ss {
		s.cur += s.cfg.Weight
		total += s.cfg.Weight
		if best == nil || s.cur > best.cur {
			best = s
		}
	}
	best.cur -= total
	return best
}

// rendezvous is weighted rendezvous hashing: the server with the highest
// weight / -ln(hash(src, server)) wins.
func rendezvous(ss []*server, src netip.Addr) *server {
	var best *server
	top := 0.0
	for _, s := range ss {
		h := fnv.New64a()
		h.Write(src.AsSlice())
		h.Write([]byte(s.cfg.Name))
		x := h.Sum64() // mixed by MurmurHash3's finalizer
		x ^= x >> 33
		x *= 0xff51afd7ed558ccd
		x ^= x >> 33
		x *= 0xc4ceb9fe1a85ec53
		x ^= x >> 33
		u := (float64(x>>11) + 0.5) / (1 << 53) // in (0, 1)
		if score := float64(s.cfg.Weight) / -math.Log(u); best == nil || score > top {
			best, top = s, score
		}
	}
	return best
}

// Config implements driver.Driver.
func (d *Driver) Config(ctx context.Context) (*driver.Config, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, errClosed()
	}
	return d.cfg.Normalized(), nil
}

// change applies a server operation (a function of lb/driver.Config) in
// place.
func (d *Driver) change(ctx context.Context, fn func(*driver.Config) (*driver.Config, error)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return errClosed()
	}
	n, err := fn(d.cfg)
	if err != nil {
		return err
	}
	d.install(n)
	return nil
}

// AddServer implements driver.Driver.
func (d *Driver) AddServer(ctx context.Context, pool string, srv driver.Server) error {
	return d.change(ctx, func(c *driver.Config) (*driver.Config, error) { return c.AddServer(pool, srv) })
}

// RemoveServer implements driver.Driver; the server's connections end.
func (d *Driver) RemoveServer(ctx context.Context, pool, name string) error {
	return d.change(ctx, func(c *driver.Config) (*driver.Config, error) { return c.RemoveServer(pool, name) })
}

// SetWeight implements driver.Driver.
func (d *Driver) SetWeight(ctx context.Context, pool, name string, weight int) error {
	return d.change(ctx, func(c *driver.Config) (*driver.Config, error) { return c.SetWeight(pool, name, weight) })
}

// SetState implements driver.Driver.
func (d *Driver) SetState(ctx context.Context, pool, name string, st driver.AdminState) error {
	return d.change(ctx, func(c *driver.Config) (*driver.Config, error) { return c.SetState(pool, name, st) })
}

// Stats implements driver.Driver. CurrentSessions counts open connections
// (and those being connected), TotalConnections those established since
// the server joined its pool.
func (d *Driver) Stats(ctx context.Context) ([]driver.ServerStats, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, errClosed()
	}
	var out []driver.ServerStats
	for _, p := range d.cfg.Pools {
		for _, s := range d.pools[p.Name].servers {
			st := driver.Up
			switch {
			case s.cfg.State == driver.Maintenance:
				st = driver.Maint
			case s.cfg.State == driver.Drain:
				st = driver.Draining
			case s.down:
				st = driver.Down
			}
			out = append(out, driver.ServerStats{Pool: p.Name, Server: s.cfg.Name, State: st, Weight: s.cfg.Weight,
				CurrentSessions: s.active, TotalConnections: s.total})
		}
	}
	slices.SortFunc(out, func(a, b driver.ServerStats) int {
		return strings.Compare(a.Pool+"\x00"+a.Server, b.Pool+"\x00"+b.Server)
	})
	return out, nil
}

// Reloads returns how many Apply calls changed the configuration (the
// conformance suite checks that an equal one changes nothing).
func (d *Driver) Reloads() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.reloads
}

// Close stops the listeners and checks, ends every connection, and waits
// for them to finish. It is safe to call more than once; other calls then
// fail with errcode.FailedPrecondition.
func (d *Driver) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	d.cancel()
	for _, l := range d.listeners {
		l.Close()
	}
	for _, s := range d.servers {
		s.stop()
	}
	d.mu.Unlock()
	d.wg.Wait()
	return nil
}
