package agent

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/musterkit/muster/container/driver"
)

// atInfo returns a cluster whose agents log at the default level, Info.
func atInfo(t *testing.T, handshakeLogInterval time.Duration) *cluster {
	cl := newCluster(t, nil)
	cl.serverLogLevel, cl.handshakeLogInterval = slog.LevelInfo, handshakeLogInterval
	return cl
}

// TestAuditAtInfo: at the default log level, every export, import, push,
// pull and exec is logged as it begins, with the caller's certificate
// name, and the outcome of an export (a GET) is logged too.
func TestAuditAtInfo(t *testing.T) {
	ctx := context.Background()
	cl := atInfo(t, 0)
	srcDriver := tinyServer(t)
	src := cl.dial(t, cl.serve(t, srcDriver))
	dst := cl.dial(t, cl.serve(t, tinyServer(t)))

	if _, err := srcDriver.Create(ctx, &driver.Spec{Name: "app", Image: "tiny"}); err != nil {
		t.Fatal(err)
	}
	if err := srcDriver.Start(ctx, "app"); err != nil {
		t.Fatal(err)
	}
	// The tiny image has no programs: the exec ends with 127, not found.
	if code, err := src.Exec(ctx, "app", &driver.Process{Args: []string{"true", "secret-argument"}}); err != nil || code != 127 {
		t.Fatalf("exec: %d, %v; want 127", code, err)
	}
	if err := srcDriver.Stop(ctx, "app", time.Second); err != nil {
		t.Fatal(err)
	}
	var archive bytes.Buffer
	if err := src.Export(ctx, "app", &archive); err != nil {
		t.Fatalf("export: %v", err)
	}
	if _, err := src.Import(ctx, &archive, "copy"); err != nil {
		t.Fatalf("import: %v", err)
	}
	if _, err := src.Push(ctx, "app", dst.Endpoint(), "pushed", nil); err != nil {
		t.Fatalf("push: %v", err)
	}
	if _, err := dst.Pull(ctx, src.Endpoint(), "app", "pulled", nil); err != nil {
		t.Fatalf("pull: %v", err)
	}

	logs := cl.serverLog.String()
	for _, re := range []string{
		`level=INFO msg="agent audit" action=exec peer=cli addr=127\.0\.0\.1:\d+ path=/v1/containers/app/exec program=true\n`,
		`level=INFO msg="agent audit" action=export peer=cli addr=127\.0\.0\.1:\d+ path=/v1/containers/app/export\n`,
		`level=INFO msg="agent call" method=GET path=/v1/containers/app/export peer=cli status=200 `,
		`level=INFO msg="agent audit" action=import peer=cli addr=127\.0\.0\.1:\d+ path=/v1/import/copy\n`,
		`level=INFO msg="agent audit" action=push peer=cli addr=127\.0\.0\.1:\d+ path=/v1/containers/app/push agent=` + regexp.QuoteMeta(dst.Endpoint()) + ` rename=pushed\n`,
		`level=INFO msg="agent audit" action=pull peer=cli addr=127\.0\.0\.1:\d+ path=/v1/pull/app agent=` + regexp.QuoteMeta(src.Endpoint()) + ` rename=pulled\n`,
		// The agents move the container with their own certificates.
		`level=INFO msg="agent audit" action=import peer=agent0 addr=127\.0\.0\.1:\d+ path=/v1/import/pushed\n`,
		`level=INFO msg="agent audit" action=export peer=agent0 addr=127\.0\.0\.1:\d+ path=/v1/containers/app/export\n`,
	} {
		if !regexp.MustCompile(re).MatchString(logs) {
			t.Errorf("no line matching %s in the agents' log:\n%s", re, logs)
		}
	}
	if strings.Contains(logs, "secret-argument") {
		t.Errorf("the exec's arguments were logged:\n%s", logs)
	}
}

// handshakeSummaries returns the counts of the failed-handshake records in
// logs, and fails unless each is a Warn record naming a loopback source.
func handshakeSummaries(t *testing.T, logs string) []int {
	t.Helper()
	var counts []int
	re := regexp.MustCompile(`level=(\w+) msg="agent: TLS handshakes failed" count=(\d+) last_source=(\S+)`)
	for _, m := range re.FindAllStringSubmatch(logs, -1) {
		if m[1] != "WARN" || !strings.HasPrefix(m[3], "127.0.0.1:") {
			t.Fatalf("a failed-handshake record at %s from %s, want WARN from 127.0.0.1:\n%s", m[1], m[3], logs)
		}
		n, _ := strconv.Atoi(m[2])
		counts = append(counts, n)
	}
	return counts
}

// TestRefusedHandshakesWarnRateLimited: a burst of handshakes without an
// acceptable certificate is logged at Warn at the default level, in a
// record an interval that counts them, not a record each.
func TestRefusedHandshakesWarnRateLimited(t *testing.T) {
	const burst = 40
	interval := 300 * time.Millisecond
	cl := atInfo(t, interval)
	other := newCluster(t, nil)
	addr := cl.serve(t, tinyServer(t))

	began := time.Now()
	for i := range burst {
		cert := &other.client.Cert // a certificate of another CA
		if i%2 == 0 {
			cert = nil // no certificate
		}
		if err := tlsRead(addr, cl.client.CAPool, cert); err == nil {
			t.Fatal("the agent accepted a bad client")
		}
	}
	var counts []int
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		counts = handshakeSummaries(t, cl.serverLog.String())
		sum := 0
		for _, n := range counts {
			sum += n
		}
		if sum == burst {
			break
		}
		if sum > burst || time.Now().After(deadline) {
			t.Fatalf("failed-handshake records count %d handshakes (%v), want %d:\n%s", sum, counts, burst, cl.serverLog)
		}
	}
	elapsed := time.Since(began)
	if counts[0] != 1 {
		t.Errorf("the first record counts %d handshakes, want the first failure reported at once", counts[0])
	}
	if limit := int(elapsed/interval) + 2; len(counts) > limit || len(counts) > burst/4 {
		t.Errorf("%d failed-handshake records in %v for %d handshakes, want at most one an interval of %v (%d)", len(counts), elapsed, burst, interval, limit)
	}
	// A good client is still served, and its handshake is no failure.
	if err := tlsRead(addr, cl.client.CAPool, &cl.client.Cert); err != nil {
		t.Fatalf("a valid client was refused: %v", err)
	}
	t.Logf("%d handshakes in %v: records %v", burst, elapsed, counts)
}

// TestHandshakeLog checks the limiter alone: the first failure at once,
// the rest of the interval in one summary (here at close), other messages
// at Debug.
func TestHandshakeLog(t *testing.T) {
	logs := &logBuffer{}
	h := newHandshakeLog(logs.logger(), time.Hour)
	for i := range 100 {
		fmt.Fprintf(h, "http: TLS handshake error from [::1]:%d: remote error: tls: bad certificate\n", 1000+i)
	}
	fmt.Fprintf(h, "http2: server: error reading preface from client 127.0.0.1:9: bogus greeting\n")
	out := logs.String()
	if n := strings.Count(out, "level=WARN"); n != 1 || !strings.Contains(out, `level=WARN msg="agent: TLS handshakes failed" count=1 last_source=[::1]:1000 last_err="remote error: tls: bad certificate"`) {
		t.Fatalf("after 100 failures in an interval, want one Warn record for the first:\n%s", out)
	}
	if !strings.Contains(out, `level=DEBUG msg="http2: server: error reading preface from client 127.0.0.1:9: bogus greeting"`) {
		t.Fatalf("another message of the server is not at Debug:\n%s", out)
	}
	h.close()
	out = logs.String()
	if n := strings.Count(out, "level=WARN"); n != 2 || !strings.Contains(out, `level=WARN msg="agent: TLS handshakes failed" count=99 last_source=[::1]:1099`) {
		t.Fatalf("at close, want one summary of the other 99:\n%s", out)
	}
}
