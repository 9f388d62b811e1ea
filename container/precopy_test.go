package container_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"slices"
	"testing"

	"github.com/musterkit/muster/container"
	"github.com/musterkit/muster/container/image"
)

// TestPreCopyMoveKeepsChanges changes a running container's files after
// the first pass of a pre-copy move, and checks that the moved tree is
// the source's as it stopped.
func TestPreCopyMoveKeepsChanges(t *testing.T) {
	ctx := context.Background()
	drivers := map[string]*peered{}
	cl, _ := newFaultCluster(t, func(p *peered) peer { drivers[p.endpoint[:1]] = p; return p })
	a, _ := cl.Server("a")
	run := func(stdin string, args ...string) {
		t.Helper()
		var stderr bytes.Buffer
		if code, err := a.Exec(ctx, "web", &container.Process{Args: args, Stdin: bytes.NewReader([]byte(stdin)), Stderr: &stderr}); err != nil || code != 0 {
			t.Fatalf("%v: exit %d, %v: %s", args, code, err, stderr.String())
		}
	}
	run("old", "tee", "/root/modified")
	run("gone", "tee", "/root/deleted")
	run("x", "tee", "/root/link")
	var phases []container.Phase
	var want string
	opts := &container.TransferOptions{PreCopy: true, Progress: func(e container.Event) {
		if len(phases) == 0 || phases[len(phases)-1] != e.Phase {
			phases = append(phases, e.Phase)
		}
		switch {
		case e.Phase == container.PhaseStop:
			run("new", "tee", "/root/added")
			run("NEW", "tee", "/root/modified") // same size, same second
			run("", "rm", "/root/deleted")
			run("", "chmod", "700", "/root/data")
			run("", "ln", "-sf", "/root/added", "/root/link")
		case e.Phase == container.PhaseTransfer && slices.Contains(phases, container.PhaseStop) && want == "":
			want = treeDigest(t, drivers["a"], "web")
		}
	}}
	if _, err := cl.Move(ctx, "web", "a", "b", opts); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(phases) != "[precopy transfer stop transfer start cleanup done]" {
		t.Errorf("phases %v", phases)
	}
	b, _ := cl.Server("b")
	if err := b.Stop(ctx, "web", 0); err != nil {
		t.Fatal(err)
	}
	if got := treeDigest(t, drivers["b"], "web"); got != want {
		t.Fatalf("the moved tree differs from the stopped source's:\n%s\nwant\n%s", got, want)
	}
}

// treeDigest lists a stopped container's tree, each entry with its
// metadata but times and the SHA-256 of its content.
func treeDigest(t *testing.T, p *peered, name string) string {
	t.Helper()
	var blob bytes.Buffer
	if err := p.Export(context.Background(), name, &blob); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	_, err := image.ScanArchive(context.Background(), &blob, 0, image.Limits{}, func(e *image.Entry, content io.Reader) error {
		h := sha256.New()
		if _, err := io.Copy(h, content); err != nil {
			return err
		}
		fmt.Fprintf(&out, "%q %v %v %d:%d %d %q %x\n", e.Path, e.Type, e.Mode, e.UID, e.GID, e.Size, e.Target, h.Sum(nil)[:8])
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out.String()
}
