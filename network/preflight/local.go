package preflight

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/musterkit/muster/errcode"
)

const (
	// banner is what a TCP responder writes, so that a prober knows it
	// reached a responder and not some other service on the port.
	banner = "muster-preflight\n"
	// minPacket is the smallest path MTU a probe asks about: IPv4's
	// minimum datagram that every link must carry.
	minPacket = 576
	// tries and wait bound each UDP exchange: a size that gets no answer
	// after tries sends, wait apart, did not cross.
	tries = 3
	wait  = 200 * time.Millisecond
	// maxTTL bounds how long responders stay open.
	maxTTL = 5 * time.Minute
)

// Local is the Server of the machine (or network namespace) it runs in.
// It is what an agent serves and what tests use directly.
type Local struct {
	do func(func() error) error

	mu         sync.Mutex
	responders map[string]*responder
}

var _ Server = (*Local)(nil)

// NewLocal returns the Server of the namespace do runs in: do runs fn on a
// locked OS thread inside the server's network namespace, as
// testhost.Host.Do does (sockets keep the namespace they were opened in).
// A nil do means the calling process's namespace.
func NewLocal(do func(func() error) error) *Local {
	if do == nil {
		do = func(fn func() error) error { return fn() }
	}
	return &Local{do: do, responders: map[string]*responder{}}
}

// responder is one Respond call's open sockets.
type responder struct {
	closers []io.Closer
	timer   *time.Timer
	wg      sync.WaitGroup
}

func (r *responder) close() {
	r.timer.Stop()
	for _, c := range r.closers {
		c.Close()
	}
	r.wg.Wait()
}

// Respond implements Server.
func (l *Local) Respond(ctx context.Context, req *RespondRequest) (*Responder, error) {
	if err := req.validate(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ttl := req.TTL
	if ttl <= 0 || ttl > maxTTL {
		ttl = maxTTL
	}
	r := &responder{}
	out := &Responder{}
	err := l.do(func() error {
		probe, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(req.Addr, 0)))
		if err != nil {
			return bindErr(req.Addr, Port{Proto: UDP}, err)
		}
		r.closers = append(r.closers, probe)
		out.ProbePort = uint16(probe.LocalAddr().(*net.UDPAddr).Port)
		r.wg.Go(func() { echo(probe) })
		for _, p := range req.Ports {
			ap := netip.AddrPortFrom(req.Addr, p.Number)
			var c io.Closer
			if p.Proto == UDP {
				u, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(ap))
				if err == nil {
					r.wg.Go(func() { echo(u) })
					c = u
				}
				err = inUse(err, ap, p)
				if err != nil {
					return err
				}
			} else {
				t, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(ap))
				if err == nil {
					r.wg.Go(func() { greet(t) })
					c = t
				}
				if err = inUse(err, ap, p); err != nil {
					return err
				}
			}
			if c == nil {
				out.InUse = append(out.InUse, p)
				continue
			}
			r.closers = append(r.closers, c)
		}
		return nil
	})
	if err != nil {
		for _, c := range r.closers {
			c.Close()
		}
		r.wg.Wait()
		return nil, err
	}
	var id [8]byte
	rand.Read(id[:])
	out.ID = hex.EncodeToString(id[:])
	l.mu.Lock()
	l.responders[out.ID] = r
	r.timer = time.AfterFunc(ttl, func() { l.StopResponding(context.Background(), out.ID) })
	l.mu.Unlock()
	return out, nil
}

// inUse returns nil for a port another socket holds (the caller reports
// it), and err otherwise.
func inUse(err error, ap netip.AddrPort, p Port) error {
	if err == nil || errors.Is(err, syscall.EADDRINUSE) {
		return nil
	}
	return bindErr(ap.Addr(), p, err)
}

func bindErr(a netip.Addr, p Port, err error) error {
	return errcode.Syscall(err, "preflight: listening on %s %s", a, p)
}

// echo answers every datagram on c with its first 8 bytes (the prober's
// nonce) and its length, until c is closed.
func echo(c *net.UDPConn) {
	buf := make([]byte, 65536)
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		if n < 8 {
			continue
		}
		var ack [12]byte
		copy(ack[:8], buf[:8])
		binary.BigEndian.PutUint32(ack[8:], uint32(n))
		c.WriteToUDPAddrPort(ack[:], from)
	}
}

// greet writes the banner to every connection on l, until l is closed.
func greet(l *net.TCPListener) {
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, banner)
		c.Close()
	}
}

// StopResponding implements Server.
func (l *Local) StopResponding(ctx context.Context, id string) error {
	l.mu.Lock()
	r := l.responders[id]
	delete(l.responders, id)
	l.mu.Unlock()
	if r == nil {
		return errcode.New(errcode.NotFound, "preflight: no responder %q", id)
	}
	r.close()
	return nil
}

// Probe implements Server.
func (l *Local) Probe(ctx context.Context, req *ProbeRequest) (*ProbeResult, error) {
	if err := req.validate(); err != nil {
		return nil, err
	}
	res := &ProbeResult{}
	var conn *net.UDPConn
	var linkMTU int
	err := l.do(func() error {
		var err error
		if linkMTU, err = mtuOf(req.From); err != nil {
			return err
		}
		conn, err = net.DialUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(req.From, 0)),
			net.UDPAddrFromAddrPort(netip.AddrPortFrom(req.To, req.ProbePort)))
		if err != nil {
			return errcode.New(errcode.FailedPrecondition, "preflight: probing %s from %s: %w", req.To, req.From, err)
		}
		return dontFragment(conn, req.From.Is6())
	})
	if err != nil {
		if conn != nil {
			conn.Close()
		}
		return nil, err
	}
	defer conn.Close()
	header := 28 // IPv4 20 + UDP 8
	if req.From.Is6() {
		header = 48
	}
	start := time.Now()
	if !exchange(ctx, conn, minPacket-header) {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		return res, nil // unreachable: the rest cannot be measured
	}
	res.Reachable, res.RTT = true, time.Since(start)
	// The largest size that crosses, from the link's MTU down: most
	// paths carry it, so one exchange usually settles it.
	lo, hi := minPacket, linkMTU
	if exchange(ctx, conn, hi-header) {
		lo = hi
	}
	for hi-lo > 1 {
		mid := (lo + hi) / 2
		if exchange(ctx, conn, mid-header) {
			lo = mid
		} else {
			hi = mid
		}
	}
	res.PathMTU = lo
	for _, p := range req.Ports {
		pr := PortResult{Port: p}
		err := l.do(func() error {
			pr.Reachable = reachPort(ctx, req.From, netip.AddrPortFrom(req.To, p.Number), p.Proto)
			return nil
		})
		if err != nil {
			return nil, err
		}
		res.Ports = append(res.Ports, pr)
	}
	return res, ctx.Err()
}

// exchange sends a datagram of payload bytes on c and reports whether its
// echo came back, trying a few times.
func exchange(ctx context.Context, c *net.UDPConn, payload int) bool {
	if payload < 12 {
		payload = 12
	}
	msg := make([]byte, payload)
	rand.Read(msg[:8])
	ack := make([]byte, 64)
	for range tries {
		if ctx.Err() != nil {
			return false
		}
		if _, err := c.Write(msg); err != nil {
			// EMSGSIZE: larger than the link or a path MTU the kernel
			// learnt; a refused port shows up here too.
			time.Sleep(wait / 4)
			continue
		}
		c.SetReadDeadline(time.Now().Add(wait))
		for {
			n, err := c.Read(ack)
			if err != nil {
				break
			}
			if n == 12 && string(ack[:8]) == string(msg[:8]) && binary.BigEndian.Uint32(ack[8:]) == uint32(payload) {
				return true
			}
		}
	}
	return false
}

// reachPort reports whether a responder answers at to over proto, from
// address from. Call it inside the server's namespace.
func reachPort(ctx context.Context, from netip.Addr, to netip.AddrPort, proto Proto) bool {
	if proto == TCP {
		d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(from, 0))}
		c, err := d.DialContext(ctx, "tcp", to.String())
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		got := make([]byte, len(banner))
		_, err = io.ReadFull(c, got)
		return err == nil && string(got) == banner
	}
	c, err := net.DialUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(from, 0)), net.UDPAddrFromAddrPort(to))
	if err != nil {
		return false
	}
	defer c.Close()
	return exchange(ctx, c, 64)
}

// dontFragment sets DF on c's packets: a datagram larger than the path
// is dropped (or refused with EMSGSIZE), never fragmented.
func dontFragment(c *net.UDPConn, ipv6 bool) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = raw.Control(func(fd uintptr) {
		if ipv6 {
			serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IPV6, syscall.IPV6_MTU_DISCOVER, syscall.IP_PMTUDISC_DO)
		} else {
			serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, syscall.IP_MTU_DISCOVER, syscall.IP_PMTUDISC_DO)
		}
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("preflight: setting DF: %w", err)
	}
	return nil
}

// mtuOf returns the MTU of the link holding address a, in the calling
// thread's namespace. A loopback link holds every address of its prefixes
// (the kernel answers all of 127.0.0.0/8 there).
func mtuOf(a netip.Addr) (int, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return 0, errcode.New(errcode.Internal, "preflight: listing links: %w", err)
	}
	for _, ifc := range ifs {
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, ad := range addrs {
			if n, ok := ad.(*net.IPNet); ok {
				ip, ok := netip.AddrFromSlice(n.IP)
				ones, _ := n.Mask.Size()
				if ok && (ip.Unmap() == a || ifc.Flags&net.FlagLoopback != 0 && netip.PrefixFrom(ip.Unmap(), ones).Contains(a)) {
					return ifc.MTU, nil
				}
			}
		}
	}
	return 0, errcode.New(errcode.FailedPrecondition, "preflight: no link of this server holds %s", a)
}
