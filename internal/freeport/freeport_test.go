package freeport

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"syscall"
	"testing"
)

const ip = "127.0.0.1"

func addr(port int) string { return net.JoinHostPort(ip, strconv.Itoa(port)) }

func TestPick(t *testing.T) {
	for _, network := range []string{"tcp", "udp", "tcp+udp"} {
		t.Run(network, func(t *testing.T) {
			var hooked []int
			p := &Picker{AfterPick: func(ports []int) { hooked = ports }}
			ports := p.Pick(t, network, ip, 4)
			if len(ports) != 4 || !slices.Equal(hooked, ports) {
				t.Fatalf("ports %v, AfterPick saw %v", ports, hooked)
			}
			if s := slices.Compact(slices.Sorted(slices.Values(ports))); len(s) != 4 {
				t.Fatalf("ports %v are not distinct", ports)
			}
			for _, port := range ports {
				if network != "udp" {
					Hold(t, "tcp", ip, port)
				}
				if network != "tcp" {
					Hold(t, "udp", ip, port)
				}
			}
		})
	}
}

func TestListenTCPUDP(t *testing.T) {
	l, c, err := ListenTCPUDP(ip)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	defer c.Close()
	if l.Addr().(*net.TCPAddr).Port != c.LocalAddr().(*net.UDPAddr).Port {
		t.Fatalf("TCP %v, UDP %v", l.Addr(), c.LocalAddr())
	}
}

// TestTaken checks the detection on what the daemons print when a port is
// in use, and that it names the very address.
func TestTaken(t *testing.T) {
	const a = "127.0.0.1:4511"
	for _, tc := range []struct {
		text string
		want bool
	}{
		{"listen tcp 127.0.0.1:4511: bind: address already in use", true},
		{`Failed to start UDP listener on "127.0.0.1" port 4511: listen udp 127.0.0.1:4511: bind: address already in use`, true},
		{"[ALERT]    (7) : Starting frontend www: cannot bind socket (Address already in use) [127.0.0.1:4511]", true},
		{"haproxy exited at start:\n[ALERT] x\n[ALERT] cannot bind socket (Address already in use) [127.0.0.1:4511]\n", true},
		{"nginx: [emerg] bind() to 127.0.0.1:4511 failed (98: Address already in use)", true},
		{"listen tcp 127.0.0.1:45111: bind: address already in use", false},
		{"listen tcp 127.0.0.1:14511: bind: address already in use", false},
		{"listen tcp 10.127.0.0.1:4511: bind: address already in use", false},
		{"listen tcp 127.0.0.1:4511: bind: cannot assign requested address", false},
		{"frontend on 127.0.0.1:4511\nlisten tcp 127.0.0.1:9: bind: address already in use", false},
		{"", false},
	} {
		if got := Taken(tc.text, a); got != tc.want {
			t.Errorf("Taken(%q) = %v, want %v", tc.text, got, tc.want)
		}
	}
}

func TestRetry(t *testing.T) {
	other := errors.New("other")
	for _, tc := range []struct {
		name  string
		errs  []error
		calls int
		want  error
	}{
		{"at once", []error{nil}, 1, nil},
		{"after a collision", []error{ErrInUse, nil}, 2, nil},
		{"another error is not retried", []error{other, nil}, 1, other},
		{"bounded", []error{ErrInUse, fmt.Errorf("x: %w", ErrInUse), ErrInUse, nil}, Tries, ErrInUse},
	} {
		t.Run(tc.name, func(t *testing.T) {
			calls := 0
			err := Retry(t, func() error { calls++; return tc.errs[calls-1] })
			if calls != tc.calls || !errors.Is(err, tc.want) || (tc.want == nil && err != nil) {
				t.Fatalf("%d calls, %v; want %d, %v", calls, err, tc.calls, tc.want)
			}
		})
	}
}

// TestHoldMakesTaken: a port held as a parallel test would is refused to
// the next binder with an error that Taken recognizes.
func TestHoldMakesTaken(t *testing.T) {
	port := Pick(t, "tcp", ip, 1)[0]
	Hold(t, "tcp", ip, port)
	_, err := net.Listen("tcp", addr(port))
	if !errors.Is(err, syscall.EADDRINUSE) || !Taken(err.Error(), addr(port)) {
		t.Fatalf("listening on a held port: %v", err)
	}
}

func TestReserve(t *testing.T) {
	r := Reserve(t, ip)
	if r.Addr() != addr(r.Port()) {
		t.Fatalf("Addr %s, Port %d", r.Addr(), r.Port())
	}
	refused := func(what string) {
		t.Helper()
		c, err := net.Dial("tcp", r.Addr())
		if err == nil {
			c.Close()
			t.Fatalf("%s: a connection was accepted", what)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("%s: %v, want refused", what, err)
		}
	}
	taken := func(what string) {
		t.Helper()
		for _, a := range []string{r.Addr(), net.JoinHostPort("0.0.0.0", strconv.Itoa(r.Port()))} {
			if l, err := net.Listen("tcp", a); err == nil {
				l.Close()
				t.Fatalf("%s: another listener bound %s", what, a)
			}
		}
	}
	refused("reserved")
	taken("reserved")
	for i := range 2 {
		l, err := r.Listen()
		if err != nil {
			t.Fatal(err)
		}
		c, err := net.Dial("tcp", r.Addr())
		if err != nil {
			t.Fatalf("listening (%d): %v", i, err)
		}
		c.Close()
		taken("listening")
		l.Close()
		refused("after the listener closed")
		taken("after the listener closed")
	}
}
