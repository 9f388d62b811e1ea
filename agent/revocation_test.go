package agent

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/musterkit/muster/agent/pki"
	"github.com/musterkit/muster/container/driver"
	"github.com/musterkit/muster/errcode"
)

// serveSource runs a Server for d with src on loopback until the test
// ends, logging to log, and returns its address.
func serveSource(t *testing.T, src pki.Source, d driver.Driver, log *logBuffer) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	srv := NewServer(src, d, &ServerOptions{Logger: log.logger(), ShutdownTimeout: time.Second})
	go func() { done <- srv.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return l.Addr().String()
}

// issueKeyring issues credentials for name from ca and returns them in a
// Keyring, kept in dir if it is not empty.
func issueKeyring(t *testing.T, ca *pki.CA, name string, usage pki.Usage, ttl time.Duration, dir string) *pki.Keyring {
	t.Helper()
	var ips []netip.Addr
	if usage&pki.UsageServer != 0 {
		ips = loopback
	}
	creds, err := ca.Issue(name, ips, ttl, usage)
	if err != nil {
		t.Fatal(err)
	}
	if dir == "" {
		k, err := pki.NewKeyring(creds)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	if err := creds.Save(dir); err != nil {
		t.Fatal(err)
	}
	k, err := pki.OpenKeyring(dir)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func dialSource(t *testing.T, addr string, src pki.Source) *Client {
	t.Helper()
	c, err := Dial(context.Background(), addr, src, nil)
	if err != nil {
		t.Fatalf("Dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestRevokedServerRefusedEverywhere revokes one of three agents: the
// orchestrator (a new client and one connected before) and the other
// agents (as servers of its calls, and as clients in pushes and pulls)
// refuse it from the moment they hold the CRL, which the agents keep
// across restarts; older and foreign CRLs are refused.
func TestRevokedServerRefusedEverywhere(t *testing.T) {
	ctx := context.Background()
	ca, err := pki.NewCA("test-cluster", nil)
	if err != nil {
		t.Fatal(err)
	}
	first, err := ca.CRL()
	if err != nil {
		t.Fatal(err)
	}
	dirs := []string{t.TempDir(), t.TempDir(), t.TempDir()}
	var keys []*pki.Keyring
	var addrs []string
	var drivers []driver.Driver
	var logs []*logBuffer
	for i, name := range []string{"agent0", "agent1", "agent2"} {
		k := issueKeyring(t, ca, name, pki.UsageAgent, time.Hour, dirs[i])
		d := memServer(t)
		if _, err := d.Create(ctx, &driver.Spec{Name: "box" + name[len(name)-1:], Image: "base"}); err != nil {
			t.Fatal(err)
		}
		logs = append(logs, &logBuffer{})
		keys, drivers = append(keys, k), append(drivers, d)
		addrs = append(addrs, serveSource(t, k, d, logs[i]))
	}
	orch := issueKeyring(t, ca, "orchestrator", pki.UsageClient, time.Hour, "")
	var clients []*Client
	for _, a := range addrs {
		clients = append(clients, dialSource(t, a, orch))
	}
	// agent2 as a client of agent0, connected before the revocation.
	asClient := dialSource(t, addrs[0], keys[2])
	if _, err := asClient.List(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := clients[0].Push(ctx, "box0", addrs[2], "", nil); err != nil {
		t.Fatalf("push agent0 -> agent2 before the revocation: %v", err)
	}

	crl, err := ca.RevokeName("agent2")
	if err != nil {
		t.Fatal(err)
	}
	if crl.Number().Cmp(first.Number()) <= 0 || crl.Len() != 1 || !crl.Revoked(keys[2].Current().Cert.Leaf) {
		t.Fatalf("CRL #%v revokes %d certificates, agent2's: %v; want a later number than #%v, agent2's only",
			crl.Number(), crl.Len(), crl.Revoked(keys[2].Current().Cert.Leaf), first.Number())
	}
	if _, err := orch.SetCRL(crl.PEM()); err != nil {
		t.Fatal(err)
	}
	for _, c := range clients[:2] {
		if err := c.PutCRL(ctx, crl); err != nil {
			t.Fatal(err)
		}
	}

	denied := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, errcode.PermissionDenied) || !strings.Contains(err.Error(), "revoked") {
			t.Errorf("%s: got %v, want PermissionDenied naming the revocation", what, err)
		}
	}
	_, err = clients[2].List(ctx)
	denied("orchestrator -> agent2, connected before", err)
	_, err = Dial(ctx, addrs[2], orch, nil)
	denied("orchestrator dials agent2", err)
	_, err = clients[0].Push(ctx, "box0", addrs[2], "again", nil)
	denied("agent0 pushes to agent2", err)
	_, err = clients[1].Pull(ctx, addrs[2], "box2", "", nil)
	denied("agent1 pulls from agent2", err)
	// agent2 as a client: its connection to agent0 was closed when the CRL
	// came, and its handshakes are refused.
	if _, err := asClient.List(ctx); err == nil {
		t.Error("agent2's connection to agent0, made before the revocation, still carries calls")
	}
	for i, a := range addrs[:2] {
		if c, err := Dial(ctx, a, keys[2], nil); err == nil {
			c.Close()
			t.Errorf("agent%d accepted agent2 as a client", i)
		}
	}
	// The others are unaffected.
	if _, err := clients[0].Push(ctx, "box0", addrs[1], "", nil); err != nil {
		t.Errorf("push agent0 -> agent1 after the revocation: %v", err)
	}
	for i, c := range clients[:2] {
		held, err := c.CRL(ctx)
		if err != nil || held.Number().Cmp(crl.Number()) != 0 {
			t.Errorf("agent%d holds CRL %v, %v; want #%v", i, held, err, crl.Number())
		}
	}
	if list, _ := drivers[2].List(ctx); len(list) != 2 {
		t.Errorf("agent2 holds %d containers, want 2: box2 and the push made before the revocation", len(list))
	}

	// Older, foreign and repeated CRLs.
	if err := clients[0].PutCRL(ctx, first); !errors.Is(err, errcode.FailedPrecondition) {
		t.Errorf("an older CRL: got %v, want FailedPrecondition", err)
	}
	other, err := pki.NewCA("test-cluster", nil)
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := other.CRL()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := keys[0].SetCRL(foreign.DER()); !errors.Is(err, errcode.PermissionDenied) {
		t.Errorf("a CRL of another CA with the same name: got %v, want PermissionDenied", err)
	}
	if err := clients[1].PutCRL(ctx, crl); err != nil {
		t.Errorf("the same CRL again: %v", err)
	}

	// The CRL holds across restarts: agent0 reopens its directory.
	reopened, err := pki.OpenKeyring(dirs[0])
	if err != nil {
		t.Fatal(err)
	}
	if !reopened.CRL().Revoked(keys[2].Current().Cert.Leaf) {
		t.Fatal("agent0's directory lost the CRL")
	}
	restarted := serveSource(t, reopened, memServer(t), &logBuffer{})
	if c, err := Dial(ctx, restarted, keys[2], nil); err == nil {
		c.Close()
		t.Error("agent0 restarted accepts agent2 as a client")
	}
	if !strings.Contains(logs[0].String(), "revoked") && !strings.Contains(logs[0].String(), "bad certificate") {
		t.Logf("agent0's log:\n%s", logs[0])
	}

	// Revoking by serial: a client certificate, revoked while connected
	// and running an exec, whose stream is cut when the CRL comes.
	laptop := issueKeyring(t, ca, "laptop", pki.UsageClient, time.Hour, "")
	lc := dialSource(t, addrs[1], laptop)
	if err := drivers[1].Start(ctx, "box1"); err != nil {
		t.Fatal(err)
	}
	stdin, feed := io.Pipe()
	defer feed.Close()
	out := &logBuffer{}
	execDone := make(chan error, 1)
	go func() {
		_, err := lc.Exec(ctx, "box1", &driver.Process{Args: []string{"cat"}, Stdin: stdin, Stdout: out})
		execDone <- err
	}()
	feed.Write([]byte("streaming\n"))
	for deadline := time.Now().Add(10 * time.Second); out.String() != "streaming\n"; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the exec's output: %q", out.String())
		}
	}
	crl2, err := ca.Revoke(laptop.Current().Cert.Leaf.SerialNumber)
	if err != nil {
		t.Fatal(err)
	}
	if crl2.Number().Cmp(crl.Number()) <= 0 || crl2.Len() != 2 {
		t.Fatalf("CRL #%v after #%v revokes %d, want 2", crl2.Number(), crl.Number(), crl2.Len())
	}
	if err := clients[1].PutCRL(ctx, crl2); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-execDone:
		if err == nil {
			t.Error("the laptop's exec ended without an error when its certificate was revoked")
		}
	case <-time.After(10 * time.Second):
		t.Error("the laptop's exec still streams 10 s after its certificate was revoked")
	}
	if _, err := lc.List(ctx); err == nil {
		t.Error("the laptop's connection, made before its revocation, still carries calls")
	}
	if again, err := ca.Revoke(laptop.Current().Cert.Leaf.SerialNumber); err != nil || again.Number().Cmp(crl2.Number()) != 0 {
		t.Errorf("revoking again: CRL %v, %v; want #%v unchanged", again, err, crl2.Number())
	}
	if _, err := ca.RevokeName("nobody"); !errors.Is(err, errcode.NotFound) {
		t.Errorf("revoking a name the CA never issued to: got %v, want NotFound", err)
	}
}

// A CA saved to a directory keeps its record there: another process (a
// second LoadCA) revokes by name what the first issued, and CRL numbers
// keep growing across both.
func TestCARecordIsShared(t *testing.T) {
	ca, err := pki.NewCA("test-cluster", nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if _, err := ca.Issue("before-save", nil, time.Hour, pki.UsageClient); err != nil {
		t.Fatal(err)
	}
	if err := ca.Save(dir); err != nil {
		t.Fatal(err)
	}
	issuer, err := pki.LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	revoker, err := pki.LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	a, err := issuer.Issue("node1", loopback, time.Hour, pki.UsageAgent)
	if err != nil {
		t.Fatal(err)
	}
	b, err := issuer.Issue("node1", loopback, time.Hour, pki.UsageAgent)
	if err != nil {
		t.Fatal(err)
	}
	c1, err := revoker.CRL()
	if err != nil {
		t.Fatal(err)
	}
	c2, err := revoker.RevokeName("node1")
	if err != nil {
		t.Fatal(err)
	}
	if !c2.Revoked(a.Cert.Leaf) || !c2.Revoked(b.Cert.Leaf) || c2.Len() != 2 || c2.Number().Int64() != c1.Number().Int64()+1 {
		t.Fatalf("CRL #%v after #%v: revokes %d; want both of node1's certificates and the next number", c2.Number(), c1.Number(), c2.Len())
	}
	c3, err := revoker.RevokeName("before-save")
	if err != nil {
		t.Fatalf("a certificate issued before Save: %v", err)
	}
	if latest, err := issuer.CRL(); err != nil || latest.Number().Cmp(c3.Number()) != 0 || latest.Len() != 3 {
		t.Fatalf("the issuer's CRL: %v, %v; want #%v with 3 revoked", latest, err, c3.Number())
	}
	issued, err := issuer.Issued()
	if err != nil || len(issued) != 3 {
		t.Fatalf("Issued: %d, %v; want 3", len(issued), err)
	}
	for _, ic := range issued {
		if ic.Revoked.IsZero() {
			t.Errorf("%s (serial %x) is not marked revoked", ic.Name, ic.Serial)
		}
	}
	data, err := os.ReadFile(filepath.Join(dir, "ca.crl"))
	if err != nil {
		t.Fatal(err)
	}
	if crl, err := pki.ParseCRL(data, a.CA()); err != nil || crl.Number().Cmp(c3.Number()) != 0 {
		t.Fatalf("ca.crl: %v, %v; want CRL #%v", crl, err, c3.Number())
	}
}
