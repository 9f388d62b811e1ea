package agent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/musterkit/muster/agent/pki"
	"github.com/musterkit/muster/errcode"
)

// badToken is a well-formed token the Authority never made.
func badToken(fingerprint string) string {
	return "muster1." + strings.Repeat("A", 43) + "." + fingerprint
}

// srcAddr returns the loopback address 127.<b>.<n/250>.<n%250+1>: every
// connection of a test from its own source, as from a server of its own.
func srcAddr(b, n int) string {
	return fmt.Sprintf("127.%d.%d.%d", b, n/250, n%250+1)
}

// dialFrom opens a TCP connection to addr from the loopback address src.
func dialFrom(src, addr string) (net.Conn, error) {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	return d.Dial("tcp", addr)
}

// closedWithin reads c until the server closes it and reports how long
// that took from start; an error if c was still open at giveUp.
func closedWithin(c net.Conn, start, giveUp time.Time) (time.Duration, error) {
	c.SetReadDeadline(giveUp)
	_, err := io.Copy(io.Discard, c)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return 0, fmt.Errorf("still open after %v", giveUp.Sub(start).Round(time.Millisecond))
	}
	return time.Since(start), nil
}

// request sends a join request for token and csr on c, an HTTP/1.1
// connection it leaves open (kept alive unless the server closes it), and
// reads the reply.
func request(c net.Conn, url, token string, csr []byte) (*http.Response, error) {
	body, err := json.Marshal(map[string]any{"token": token, "csr": csr})
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	if err := req.Write(c); err != nil {
		return nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), req)
	if err != nil {
		return nil, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp, nil
}

// The join server needs no client certificate, so a stranger can open
// connections and hold them. Each kind is closed within the timeout that
// bounds it: 50 clients trickling a body at a byte a second, 50 kept alive
// after a refused join, connections that finish the TLS handshake and send
// nothing, connections that never start it, and one kept alive after a
// successful join. Every one comes from its own loopback address, so the
// per-source cap (its own test) closes none of them. Meanwhile a server
// with a token joins.
func TestJoinServerClosesSlowAndIdleConnections(t *testing.T) {
	cl := newCluster(t, nil)
	lim := pki.JoinLimits{
		ReadHeaderTimeout: 2 * time.Second, // also bounds the TLS handshake
		ReadTimeout:       3 * time.Second,
		WriteTimeout:      3 * time.Second,
		IdleTimeout:       time.Second,
		FailureBurst:      1000,
	}
	rig := serveAuthority(t, cl.ca, &pki.AuthorityOptions{Limits: lim})
	const slack = 2 * time.Second // a loaded, shared machine under -race
	giveUp := time.Now().Add(30 * time.Second)

	type result struct {
		kind  string
		bound time.Duration
		took  time.Duration
		err   error
	}
	var (
		mu      sync.Mutex
		results []result
		wg      sync.WaitGroup
		n       atomic.Int32
		// Handshakes wait for a slot, so that their CPU time does not count
		// against the handshake timeout being tested.
		handshakes = make(chan struct{}, 8)
	)
	record := func(kind string, bound, took time.Duration, err error) {
		mu.Lock()
		defer mu.Unlock()
		results = append(results, result{kind, bound, took, err})
	}
	// tlsConn connects from a source of its own and completes the handshake.
	tlsConn := func() (*tls.Conn, error) {
		handshakes <- struct{}{}
		defer func() { <-handshakes }()
		raw, err := dialFrom(srcAddr(10, int(n.Add(1))), rig.addr)
		if err != nil {
			return nil, err
		}
		c := tls.Client(raw, rig.tlsConfig())
		if err := c.Handshake(); err != nil {
			raw.Close()
			return nil, fmt.Errorf("handshake: %w", err)
		}
		return c, nil
	}
	run := func(kind string, bound time.Duration, count int, f func() (net.Conn, time.Time, error)) {
		for range count {
			wg.Go(func() {
				c, start, err := f()
				if err != nil {
					record(kind, bound, 0, err)
					return
				}
				defer c.Close()
				took, err := closedWithin(c, start, giveUp)
				record(kind, bound, took, err)
			})
		}
	}

	// 50 trickle a body at a byte a second: ReadTimeout from the request's start.
	run("trickling body", lim.ReadTimeout, 50, func() (net.Conn, time.Time, error) {
		c, err := tlsConn()
		if err != nil {
			return nil, time.Time{}, err
		}
		start := time.Now()
		if _, err := io.WriteString(c, "POST /join HTTP/1.1\r\nHost: join\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"); err != nil {
			return nil, start, err
		}
		go func() {
			for range 60 {
				time.Sleep(time.Second)
				if _, err := c.Write([]byte(" ")); err != nil {
					return
				}
			}
		}()
		return c, start, nil
	})
	// 50 keep their connection after a refused join: it is closed after the reply.
	run("kept alive after a 403", lim.IdleTimeout, 50, func() (net.Conn, time.Time, error) {
		c, err := tlsConn()
		if err != nil {
			return nil, time.Time{}, err
		}
		resp, err := request(c, rig.url, badToken(cl.ca.Fingerprint()), csrFor(t, "node9"))
		if err != nil {
			return nil, time.Time{}, err
		}
		if resp.StatusCode != http.StatusForbidden {
			return nil, time.Time{}, fmt.Errorf("status %s, want 403", resp.Status)
		}
		return c, time.Now(), nil
	})
	// 10 finish the handshake and send nothing: ReadHeaderTimeout.
	run("silent after the handshake", lim.ReadHeaderTimeout, 10, func() (net.Conn, time.Time, error) {
		c, err := tlsConn()
		return c, time.Now(), err
	})
	// 10 never start the handshake: it is bounded by the least timeout.
	run("no handshake", lim.ReadHeaderTimeout, 10, func() (net.Conn, time.Time, error) {
		c, err := dialFrom(srcAddr(10, int(n.Add(1))), rig.addr)
		return c, time.Now(), err
	})
	// One keeps its connection after a successful join: IdleTimeout.
	token, err := rig.a.NewToken("node1", time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	run("kept alive after a join", lim.IdleTimeout, 1, func() (net.Conn, time.Time, error) {
		c, err := tlsConn()
		if err != nil {
			return nil, time.Time{}, err
		}
		resp, err := request(c, rig.url, token, csrFor(t, "node1"))
		if err != nil {
			return nil, time.Time{}, err
		}
		if resp.StatusCode != http.StatusOK || resp.Close {
			return nil, time.Time{}, fmt.Errorf("status %s, close %v; want 200, kept alive", resp.Status, resp.Close)
		}
		return c, time.Now(), nil
	})

	// A server with a token joins meanwhile.
	good, err := rig.a.NewToken("node2", time.Hour, &pki.TokenOptions{IPs: loopback})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if _, err := pki.Join(context.Background(), rig.url, good, "node2", loopback); err != nil {
		t.Errorf("a join during the attack: %v", err)
	}
	wg.Wait()

	byKind := map[string][]time.Duration{}
	for _, r := range results {
		if r.err != nil {
			t.Errorf("%s: %v", r.kind, r.err)
			continue
		}
		if r.took > r.bound+slack {
			t.Errorf("%s: closed after %v; the bound is %v (+%v slack)", r.kind, r.took.Round(time.Millisecond), r.bound, slack)
		}
		byKind[r.kind] = append(byKind[r.kind], r.took)
	}
	for kind, took := range byKind {
		slowest := took[0]
		for _, d := range took {
			slowest = max(slowest, d)
		}
		t.Logf("%s: %d closed, the last after %v", kind, len(took), slowest.Round(time.Millisecond))
	}
	if len(results) != 121 {
		t.Fatalf("%d connections, want 121", len(results))
	}
}

// Connections from one source beyond MaxConnsPerSource are closed at once;
// other sources are not affected, and a closed one frees its place.
func TestJoinServerCapsConnectionsPerSource(t *testing.T) {
	cl := newCluster(t, nil)
	const max = 3
	rig := serveAuthority(t, cl.ca, &pki.AuthorityOptions{Limits: pki.JoinLimits{MaxConnsPerSource: max, ReadHeaderTimeout: 20 * time.Second}})
	src, other := srcAddr(20, 0), srcAddr(20, 1)
	open := func(t *testing.T, from string) net.Conn {
		t.Helper()
		c, err := dialFrom(from, rig.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	// stillOpen reports whether the server keeps c open for a moment.
	stillOpen := func(c net.Conn) bool {
		_, err := closedWithin(c, time.Now(), time.Now().Add(300*time.Millisecond))
		return err != nil
	}
	var kept []net.Conn
	for range max {
		kept = append(kept, open(t, src))
	}
	for i := range 5 {
		c := open(t, src)
		took, err := closedWithin(c, time.Now(), time.Now().Add(5*time.Second))
		if err != nil || took > time.Second {
			t.Fatalf("connection %d from %s, over the cap of %d: closed after %v, %v; want at once", max+i+1, src, max, took, err)
		}
	}
	for i, c := range kept {
		if !stillOpen(c) {
			t.Fatalf("connection %d from %s, within the cap, was closed", i+1, src)
		}
	}
	if c := open(t, other); !stillOpen(c) {
		t.Fatalf("a connection from %s was closed: the cap is per source", other)
	}
	// A closed connection frees its place.
	kept[0].Close()
	deadline := time.Now().Add(5 * time.Second)
	for !stillOpen(open(t, src)) {
		if time.Now().After(deadline) {
			t.Fatal("closing a connection did not free its place")
		}
	}
	if logs := rig.logs.String(); !strings.Contains(logs, "too many open from one source") {
		t.Fatalf("no WARN line for the connections over the cap:\n%s", logs)
	}
}

// Failed joins from a source are throttled: after FailureBurst of them,
// its joins are refused without their tokens being looked at, even a
// valid one (which stays unspent), until the bucket refills. Other sources
// join meanwhile. The WARN lines are rate-limited: one with details, then
// a summary per interval with the count.
func TestJoinServerThrottlesFailedJoins(t *testing.T) {
	cl := newCluster(t, nil)
	var later atomic.Int64 // how far the Authority's clock is ahead
	const burst, tries = 3, 20
	interval := time.Second
	rig := serveAuthority(t, cl.ca, &pki.AuthorityOptions{
		Now:    func() time.Time { return time.Now().Add(time.Duration(later.Load())) },
		Limits: pki.JoinLimits{FailureBurst: burst, FailureRefill: time.Hour, WarnInterval: interval},
	})
	attacker := rig.client(srcAddr(30, 0))
	start := time.Now()
	var unknown, throttled int
	for range tries {
		_, resp, err := rig.post(t, attacker, badToken(cl.ca.Fingerprint()), csrFor(t, "node1"))
		switch {
		case !errors.Is(err, errcode.PermissionDenied):
			t.Fatalf("a bad token: got %v, want PermissionDenied", err)
		case strings.Contains(err.Error(), "unknown, expired or used"):
			unknown++
		case strings.Contains(err.Error(), "too many failed joins from 127.30.0.1; try again in"):
			throttled++
			if resp.Header.Get("Retry-After") == "" {
				t.Fatal("a throttled join's reply has no Retry-After")
			}
		default:
			t.Fatalf("a bad token: %v", err)
		}
	}
	if unknown != burst || throttled != tries-burst {
		t.Fatalf("of %d bad tokens, %d were looked at and %d throttled; want %d and %d", tries, unknown, throttled, burst, tries-burst)
	}
	// A valid token from the throttled source is refused, and not spent.
	token, err := rig.a.NewToken("node1", time.Hour, &pki.TokenOptions{IPs: loopback})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := rig.post(t, attacker, token, csrFor(t, "node1", "127.0.0.1")); !errors.Is(err, errcode.PermissionDenied) || !strings.Contains(err.Error(), "too many failed joins") {
		t.Fatalf("a valid token from a throttled source: got %v, want PermissionDenied (throttled)", err)
	}
	elapsed := time.Since(start)
	// Another source joins with it.
	if _, err := pki.Join(context.Background(), rig.url, token, "node1", loopback); err != nil {
		t.Fatalf("a join from another source: %v", err)
	}
	// The bucket refills: the source's next bad token is looked at again.
	later.Store(int64(time.Hour))
	if _, _, err := rig.post(t, attacker, badToken(cl.ca.Fingerprint()), csrFor(t, "node1")); !errors.Is(err, errcode.PermissionDenied) || !strings.Contains(err.Error(), "unknown") {
		t.Fatalf("after the refill: got %v, want the token looked at", err)
	}

	// The log: tries+1 refusals before the refill, in one detailed line and
	// summaries that count the rest, at most one line per interval.
	time.Sleep(interval + 500*time.Millisecond) // the last summary is due
	logs := rig.logs.String()
	detailed := strings.Count(logs, `msg="join refused"`)
	counted := 0
	for _, m := range regexp.MustCompile(`refused_joins=(\d+)`).FindAllStringSubmatch(logs, -1) {
		n, _ := strconv.Atoi(m[1])
		counted += n
	}
	summaries := strings.Count(logs, "join refusals (summary)")
	lines := detailed + summaries
	maxLines := 2 + int(elapsed/interval) + 2 // the first, one per interval, the refill's and the last summary
	if detailed+counted != tries+2 || summaries == 0 || lines > maxLines {
		t.Fatalf("%d refusals logged in %d detailed lines and %d summaries counting %d; want %d refusals in at most %d lines:\n%s",
			tries+2, detailed, summaries, counted, tries+2, maxLines, logs)
	}
	t.Logf("%d refusals in %v: %d log lines", tries+2, elapsed.Round(time.Millisecond), lines)
}

// A join request's body is bounded (MaxBody): an announced or a chunked
// body over it is refused (413, InvalidArgument) naming the bound, without
// being read to its end.
func TestJoinServerBoundsTheBody(t *testing.T) {
	cl := newCluster(t, nil)
	rig := serveAuthority(t, cl.ca, &pki.AuthorityOptions{Limits: pki.JoinLimits{MaxBody: 4096, FailureBurst: 100}})
	for _, header := range []string{"Content-Length: 1048576", "Transfer-Encoding: chunked"} {
		raw, err := dialFrom("127.0.0.1", rig.addr)
		if err != nil {
			t.Fatal(err)
		}
		c := tls.Client(raw, rig.tlsConfig())
		defer c.Close()
		// The body goes on while the reply is read, as the server may
		// answer and close before it has all been sent.
		go func() {
			if _, err := io.WriteString(c, "POST /join HTTP/1.1\r\nHost: join\r\nContent-Type: application/json\r\n"+header+"\r\n\r\n"); err != nil {
				return
			}
			chunk := bytes.Repeat([]byte(" "), 16<<10)
			if strings.HasPrefix(header, "Transfer") {
				chunk = append(append([]byte(fmt.Sprintf("%x\r\n", len(chunk))), chunk...), "\r\n"...)
			}
			for range 64 {
				if _, err := c.Write(chunk); err != nil {
					return
				}
			}
		}()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("%s: %v", header, err)
		}
		var s struct{ Code, Message string }
		json.NewDecoder(resp.Body).Decode(&s)
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestEntityTooLarge || s.Code != errcode.InvalidArgument.String() || !strings.Contains(s.Message, "over 4096 bytes") {
			t.Fatalf("a 1 MiB body (%s): %s %+v; want invalid argument naming the bound", header, resp.Status, s)
		}
	}
}
