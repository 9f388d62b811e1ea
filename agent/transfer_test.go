package agent

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/musterkit/muster/agent/pki"
	"github.com/musterkit/muster/container/driver"
	"github.com/musterkit/muster/container/memcontainer"
	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/internal/freeport"
)

// moverData is the size of /root/data in the container withMover makes.
const moverData = 9 << 20

// withMover returns a memory server holding a stopped container "mover"
// whose /root/data holds random bytes, and those bytes.
func withMover(t *testing.T) (*memcontainer.Driver, []byte) {
	t.Helper()
	ctx := context.Background()
	d := memServer(t)
	if _, err := d.Create(ctx, &driver.Spec{Name: "mover", Image: "base"}); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx, "mover"); err != nil {
		t.Fatal(err)
	}
	data := make([]byte, moverData)
	rand.Read(data)
	if code, err := d.Exec(ctx, "mover", &driver.Process{Args: []string{"tee", "/root/data"}, Stdin: bytes.NewReader(data)}); err != nil || code != 0 {
		t.Fatalf("writing /root/data: exit %d, %v", code, err)
	}
	if err := d.Stop(ctx, "mover", time.Second); err != nil {
		t.Fatal(err)
	}
	return d, data
}

// catData starts the container name of d and returns its /root/data.
func catData(t *testing.T, d driver.Driver, name string) []byte {
	t.Helper()
	ctx := context.Background()
	if err := d.Start(ctx, name); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if code, err := d.Exec(ctx, name, &driver.Process{Args: []string{"cat", "/root/data"}, Stdout: &out}); err != nil || code != 0 {
		t.Fatalf("cat /root/data in %s: exit %d, %v", name, code, err)
	}
	return out.Bytes()
}

// progressLog records the totals a transfer reports.
type progressLog []int64

func (p *progressLog) add(n int64) { *p = append(*p, n) }

// check fails unless the totals grew to at least want, in several steps.
func (p progressLog) check(t *testing.T, want int64) {
	t.Helper()
	for i := 1; i < len(p); i++ {
		if p[i] <= p[i-1] {
			t.Fatalf("progress went from %d to %d bytes", p[i-1], p[i])
		}
	}
	if len(p) < 2 || p[len(p)-1] < want {
		t.Fatalf("progress reports %v, want several ending at %d bytes or more", p, want)
	}
}

func TestPushAndPull(t *testing.T) {
	ctx := context.Background()
	cl := newCluster(t, nil)
	srcDriver, data := withMover(t)
	dstDriver := memServer(t)
	src := cl.dial(t, cl.serve(t, srcDriver))
	dst := cl.dial(t, cl.serve(t, dstDriver))

	t.Run("push", func(t *testing.T) {
		var progress progressLog
		info, err := src.Push(ctx, "mover", dst.Endpoint(), "", progress.add)
		if err != nil {
			t.Fatal(err)
		}
		if info.Spec.Name != "mover" || info.State != driver.Stopped {
			t.Fatalf("pushed container: %+v", info)
		}
		progress.check(t, moverData)
		if !bytes.Equal(catData(t, dstDriver, "mover"), data) {
			t.Fatal("the pushed container's /root/data differs")
		}
	})
	t.Run("pull", func(t *testing.T) {
		var progress progressLog
		info, err := dst.Pull(ctx, src.Endpoint(), "mover", "pulled", progress.add)
		if err != nil {
			t.Fatal(err)
		}
		if info.Spec.Name != "pulled" || info.State != driver.Stopped {
			t.Fatalf("pulled container: %+v", info)
		}
		progress.check(t, moverData)
		if !bytes.Equal(catData(t, dstDriver, "pulled"), data) {
			t.Fatal("the pulled container's /root/data differs")
		}
	})
	// Both transfers left the source as it was.
	if info, err := srcDriver.Get(ctx, "mover"); err != nil || info.State != driver.Stopped {
		t.Fatalf("source after push and pull: %+v, %v", info, err)
	}
	if !bytes.Equal(catData(t, srcDriver, "mover"), data) {
		t.Fatal("the source's /root/data changed")
	}
	if err := srcDriver.Stop(ctx, "mover", time.Second); err != nil {
		t.Fatal(err)
	}

	t.Run("errors travel with their code", func(t *testing.T) {
		if _, err := src.Push(ctx, "mover", dst.Endpoint(), "", nil); !errors.Is(err, errcode.AlreadyExists) {
			t.Errorf("push onto a taken name: got %v, want AlreadyExists", err)
		}
		if _, err := dst.Pull(ctx, src.Endpoint(), "missing", "", nil); !errors.Is(err, errcode.NotFound) {
			t.Errorf("pull of a missing container: got %v, want NotFound", err)
		}
		if err := srcDriver.Start(ctx, "mover"); err != nil {
			t.Fatal(err)
		}
		defer srcDriver.Stop(ctx, "mover", time.Second)
		if _, err := src.Push(ctx, "mover", dst.Endpoint(), "running", nil); !errors.Is(err, errcode.FailedPrecondition) {
			t.Errorf("push of a running container: got %v, want FailedPrecondition", err)
		}
		if list, _ := dstDriver.List(ctx); len(list) != 2 {
			t.Errorf("the target holds %d containers after failed transfers, want 2", len(list))
		}
	})
}

func TestTransferRejectsBadInput(t *testing.T) {
	ctx := context.Background()
	cl := newCluster(t, nil)
	srcDriver, _ := withMover(t)
	src := cl.dial(t, cl.serve(t, srcDriver))
	dst := cl.dial(t, cl.serve(t, memServer(t)))
	logged := len(cl.serverLog.String())
	for _, peer := range []string{
		"", "agent0", "127.0.0.1", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:http",
		"0.0.0.0:7444", "[fe80::1%eth0]:7444", "Agent0:7444", "agent_0:7444", "a..b:7444",
		"-agent:7444", "agent0.:7444", strings.Repeat("abcdefgh.", 29) + "x:7444", "host/x:7444",
	} {
		if _, err := src.Push(ctx, "mover", peer, "", nil); !errors.Is(err, errcode.InvalidArgument) {
			t.Errorf("push to %q: got %v, want InvalidArgument", peer, err)
		}
		if _, err := dst.Pull(ctx, peer, "mover", "", nil); !errors.Is(err, errcode.InvalidArgument) {
			t.Errorf("pull from %q: got %v, want InvalidArgument", peer, err)
		}
	}
	for _, tt := range []struct{ name, rename string }{{"Mover", ""}, {"mover", "Bad"}, {"mover", "a b"}, {"mover", "-x"}} {
		if _, err := src.Push(ctx, tt.name, dst.Endpoint(), tt.rename, nil); !errors.Is(err, errcode.InvalidArgument) {
			t.Errorf("push of %q as %q: got %v, want InvalidArgument", tt.name, tt.rename, err)
		}
		if _, err := dst.Pull(ctx, src.Endpoint(), tt.name, tt.rename, nil); !errors.Is(err, errcode.InvalidArgument) {
			t.Errorf("pull of %q as %q: got %v, want InvalidArgument", tt.name, tt.rename, err)
		}
	}
	if strings.Contains(cl.serverLog.String()[logged:], "/v1/capabilities") {
		t.Errorf("an agent dialled a peer despite a bad request:\n%s", cl.serverLog)
	}
	if list, _ := dst.List(ctx); len(list) != 0 {
		t.Fatalf("the target holds %d containers", len(list))
	}
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	return freeport.Reserve(t, "127.0.0.1").Addr()
}

// failingImport's Import fails after reading part of the stream, as a
// target dying mid-stream does.
type failingImport struct{ *memcontainer.Driver }

func (f failingImport) Import(ctx context.Context, r io.Reader, rename string) (*driver.Info, error) {
	io.CopyN(io.Discard, r, 1<<20)
	return nil, errDisk
}

func TestTransferPeerFailures(t *testing.T) {
	ctx := context.Background()
	cl := newCluster(t, nil)
	srcDriver, data := withMover(t)
	src := cl.dial(t, cl.serve(t, srcDriver))
	local := memServer(t)
	dst := cl.dial(t, cl.serve(t, local))
	down := closedPort(t)

	if _, err := src.Push(ctx, "mover", down, "", nil); !errors.Is(err, errcode.Unavailable) {
		t.Errorf("push to an agent that is down: got %v, want Unavailable", err)
	}
	if _, err := dst.Pull(ctx, down, "mover", "", nil); !errors.Is(err, errcode.Unavailable) {
		t.Errorf("pull from an agent that is down: got %v, want Unavailable", err)
	}
	if list, _ := local.List(ctx); len(list) != 0 {
		t.Errorf("a failed pull left %d containers", len(list))
	}

	dying := failingImport{memServer(t)}
	if _, err := src.Push(ctx, "mover", cl.serve(t, dying), "", nil); !errors.Is(err, errcode.Internal) || !strings.Contains(err.Error(), "disk on fire") {
		t.Errorf("push to a target failing mid-stream: got %v, want its Internal error", err)
	}
	if list, _ := dying.List(ctx); len(list) != 0 {
		t.Errorf("a failed push left %d containers", len(list))
	}

	// codeDriver hides memcontainer's Transferer.
	bare := cl.dial(t, cl.serve(t, &codeDriver{Driver: memServer(t)}))
	if _, err := bare.Push(ctx, "mover", dst.Endpoint(), "", nil); !errors.Is(err, errcode.Unimplemented) {
		t.Errorf("push from an agent whose driver cannot export: got %v, want Unimplemented", err)
	}
	if _, err := bare.Pull(ctx, src.Endpoint(), "mover", "", nil); !errors.Is(err, errcode.Unimplemented) {
		t.Errorf("pull into an agent whose driver cannot import: got %v, want Unimplemented", err)
	}

	if info, err := srcDriver.Get(ctx, "mover"); err != nil || info.State != driver.Stopped {
		t.Fatalf("source after failed pushes: %+v, %v", info, err)
	}
	if !bytes.Equal(catData(t, srcDriver, "mover"), data) {
		t.Fatal("the source's /root/data changed")
	}
}

// TestTransferRefusesForeignAgents runs a rogue agent whose certificate is
// from another CA but which trusts the cluster's: the cluster's agent
// neither pushes to it nor lets it pull.
func TestTransferRefusesForeignAgents(t *testing.T) {
	ctx := context.Background()
	cl := newCluster(t, nil)
	srcDriver, _ := withMover(t)
	src := cl.dial(t, cl.serve(t, srcDriver))

	other := newCluster(t, nil)
	rogueCert, err := other.ca.Issue("rogue", loopback, time.Hour, pki.UsageAgent)
	if err != nil {
		t.Fatal(err)
	}
	rogueDriver := memServer(t)
	rogue := &cluster{
		agent:     &pki.Credentials{Cert: rogueCert.Cert, CAPool: cl.agent.CAPool},
		client:    &pki.Credentials{Cert: cl.client.Cert, CAPool: rogueCert.CAPool},
		serverLog: &logBuffer{},
	}
	rogueClient := rogue.dial(t, rogue.serve(t, rogueDriver))

	if _, err := src.Push(ctx, "mover", rogueClient.Endpoint(), "", nil); !errors.Is(err, errcode.PermissionDenied) {
		t.Errorf("push to an agent of another CA: got %v, want PermissionDenied", err)
	}
	// In TLS 1.3 the agent refuses a client certificate after the client
	// finished its handshake, so the client sees an alert or a closed
	// connection, whichever comes first: the code is not checked.
	if _, err := rogueClient.Pull(ctx, src.Endpoint(), "mover", "", nil); err == nil {
		t.Error("pull by an agent of another CA succeeded")
	}
	if strings.Contains(cl.serverLog.String(), "peer=rogue") {
		t.Errorf("the cluster's agent served the rogue agent:\n%s", cl.serverLog)
	}
	if list, _ := rogueDriver.List(ctx); len(list) != 0 {
		t.Errorf("the rogue agent got %d containers", len(list))
	}
}
