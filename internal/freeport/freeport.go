// Package freeport picks free ports for tests, and has a start that failed
// because a test running in parallel took its port (between the pick and
// the bind) made again on other ports.
//
// A picked port is free only at the moment it is picked: the socket that
// found it is closed so that the daemon under test can bind it. So:
//
//   - a server of our own (Go code in the test process) gets the listener
//     itself, not its port: net.Listen on port 0, or ListenTCPUDP;
//   - a daemon we start (HAProxy, Nginx, Consul, an agent program) is
//     started through Retry: each try picks its ports, and reports a start
//     that failed because one of them was taken as ErrInUse, found
//     precisely with Taken in the daemon's own error output (or, for a
//     responder, in its report that another socket holds the port);
//   - a port that must stay the test's while nothing listens on it (to be
//     refused, or to go down and up again) is Reserved.
//
// Tests of the retries take a picked port through Picker.AfterPick with
// Hold, as a test running in parallel could.
package freeport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// Tries bounds the starts Retry makes.
const Tries = 3

// ErrInUse marks a start that failed because a port picked for it was
// taken before it was bound.
var ErrInUse = errors.New("a port picked for the test was taken before it was bound")

// Picker picks ports. A nil *Picker picks without a hook.
type Picker struct {
	// AfterPick, if set, is called with the ports of every pick before
	// Pick returns them.
	AfterPick func(ports []int)
}

// Pick is (*Picker)(nil).Pick.
func Pick(t testing.TB, network, ip string, n int) []int {
	t.Helper()
	return (*Picker)(nil).Pick(t, network, ip, n)
}

// Pick returns n distinct ports of ip (an address of the calling process's
// network namespace) that no socket of network held a moment ago: network
// is "tcp", "udp", or "tcp+udp" (both, for daemons that serve both on one
// port, like Serf).
func (p *Picker) Pick(t testing.TB, network, ip string, n int) []int {
	t.Helper()
	ports, err := pick(network, ip, n)
	if err != nil {
		t.Fatalf("freeport: pick %d %s ports of %s: %v", n, network, ip, err)
	}
	if p != nil && p.AfterPick != nil {
		p.AfterPick(ports)
	}
	return ports
}

// pick finds the ports, holding each until all are found so that they
// differ.
func pick(network, ip string, n int) ([]int, error) {
	var ports []int
	var held []io.Closer
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for range n {
		var port int
		switch network {
		case "tcp":
			l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
			if err != nil {
				return nil, err
			}
			held, port = append(held, l), l.Addr().(*net.TCPAddr).Port
		case "udp":
			c, err := net.ListenPacket("udp", net.JoinHostPort(ip, "0"))
			if err != nil {
				return nil, err
			}
			held, port = append(held, c), c.LocalAddr().(*net.UDPAddr).Port
		case "tcp+udp":
			l, c, err := ListenTCPUDP(ip)
			if err != nil {
				return nil, err
			}
			held, port = append(held, l, c), l.Addr().(*net.TCPAddr).Port
		default:
			return nil, fmt.Errorf("unknown network %q", network)
		}
		ports = append(ports, port)
	}
	return ports, nil
}

// ListenTCPUDP returns a TCP listener and a UDP socket bound to one port of
// ip, for a server of our own that serves both (DNS). A port whose UDP half
// is taken is left for another, up to 20 times.
func ListenTCPUDP(ip string) (*net.TCPListener, *net.UDPConn, error) {
	var err error
	for range 20 {
		var l net.Listener
		if l, err = net.Listen("tcp", net.JoinHostPort(ip, "0")); err != nil {
			return nil, nil, err
		}
		var c net.PacketConn
		c, err = net.ListenPacket("udp", net.JoinHostPort(ip, strconv.Itoa(l.Addr().(*net.TCPAddr).Port)))
		if err == nil {
			return l.(*net.TCPListener), c.(*net.UDPConn), nil
		}
		l.Close()
		if !errors.Is(err, syscall.EADDRINUSE) {
			break
		}
	}
	return nil, nil, fmt.Errorf("freeport: no port of %s free for both TCP and UDP: %w", ip, err)
}

// Taken reports whether text (a daemon's error output, or an error's
// message) says on one of its lines that addr (host:port) is already in
// use: Go's "bind: address already in use", HAProxy's "cannot bind socket
// (Address already in use) [addr]", Nginx's "bind() to addr failed (98:
// Address already in use)".
func Taken(text, addr string) bool {
	for line := range strings.Lines(text) {
		if strings.Contains(strings.ToLower(line), "already in use") && names(line, addr) {
			return true
		}
	}
	return false
}

// names reports whether line holds addr as a whole address: 127.0.0.1:80
// is not in 127.0.0.1:8080 or 10.127.0.0.1:80.
func names(line, addr string) bool {
	digit := func(s string, i int) bool { return i >= 0 && i < len(s) && s[i] >= '0' && s[i] <= '9' }
	for i := 0; ; {
		j := strings.Index(line[i:], addr)
		if j < 0 {
			return false
		}
		start, end := i+j, i+j+len(addr)
		if !digit(line, end) && !digit(line, start-1) && (start == 0 || line[start-1] != '.') {
			return true
		}
		i = start + 1
	}
}

// Retry calls start until it returns nil or an error that is not ErrInUse,
// at most Tries times, and returns start's last error. start picks its
// ports anew on each call. Every collision is logged to t.
func Retry(t testing.TB, start func() error) error {
	t.Helper()
	for try := 1; ; try++ {
		err := start()
		if err == nil || !errors.Is(err, ErrInUse) || try == Tries {
			return err
		}
		t.Logf("try %d of %d: %v; again on other ports", try, Tries, err)
	}
}

// Hold binds port of ip for network ("tcp", listening, or "udp") until t
// ends, as a test running in parallel could between a pick and a start.
func Hold(t testing.TB, network, ip string, port int) {
	t.Helper()
	addr := net.JoinHostPort(ip, strconv.Itoa(port))
	var c io.Closer
	var err error
	switch network {
	case "tcp":
		c, err = net.Listen("tcp", addr)
	case "udp":
		c, err = net.ListenPacket("udp", addr)
	default:
		err = fmt.Errorf("unknown network %q", network)
	}
	if err != nil {
		t.Fatalf("freeport: hold %s %s: %v", network, addr, err)
	}
	t.Cleanup(func() { c.Close() })
}

// Reserved is a TCP port of ip that is the test's until it ends: a socket
// bound with SO_REUSEPORT, not listening, holds it, so no other socket
// binds it (but one with SO_REUSEPORT of the same user, which Go's
// listeners and the tests' daemons on picked ports never are), and
// connections to it are refused, except while a listener from Listen is
// open.
type Reserved struct {
	ip   string
	port int
}

// Reserve reserves a port of ip (IPv4) until t ends.
func Reserve(t testing.TB, ip string) *Reserved {
	t.Helper()
	a := net.ParseIP(ip).To4()
	if a == nil {
		t.Fatalf("freeport: %q is not an IPv4 address", ip)
	}
	fd, err := reusePortSocket()
	if err == nil {
		sa := &unix.SockaddrInet4{}
		copy(sa.Addr[:], a)
		if err = unix.Bind(fd, sa); err != nil {
			unix.Close(fd)
		}
	}
	if err != nil {
		t.Fatalf("freeport: reserve a port of %s: %v", ip, err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return &Reserved{ip: ip, port: sa.(*unix.SockaddrInet4).Port}
}

func reusePortSocket() (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// Port returns the reserved port.
func (r *Reserved) Port() int { return r.port }

// Addr returns the reserved ip:port.
func (r *Reserved) Addr() string { return net.JoinHostPort(r.ip, strconv.Itoa(r.port)) }

// Listen returns a listener on the reserved port; once it is closed,
// connections are refused again and the port stays reserved.
func (r *Reserved) Listen() (net.Listener, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var err error
		if cerr := c.Control(func(fd uintptr) {
			err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		}); cerr != nil {
			return cerr
		}
		return err
	}}
	return lc.Listen(context.Background(), "tcp", r.Addr())
}
