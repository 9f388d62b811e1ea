// Package storagee2e tests storage end to end, in a package of its own so
// that it runs beside internal/e2e: real Gluster and MooseFS pools
// deployed through agents on simulated servers, mounted into LXC
// containers on several of them.
package storagee2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/musterkit/muster/container"
	"github.com/musterkit/muster/internal/fleet"
	"github.com/musterkit/muster/internal/fleet/fleettest"
	"github.com/musterkit/muster/roottest"
	"github.com/musterkit/muster/storage"
)

func TestMain(m *testing.M) {
	os.Exit(fleettest.Main(m))
}

func TestGlusterVolumeAcrossContainers(t *testing.T) {
	roottest.Require(t, roottest.BinaryFrom("glusterd", "glusterfs-server"), roottest.BinaryFrom("glusterfs", "glusterfs-client"))
	testVolumeAcrossContainers(t, "gluster", storage.Layout{Kind: storage.Replicate, Copies: 2})
}

func TestMooseFSVolumeAcrossContainers(t *testing.T) {
	roottest.Require(t, roottest.BinaryFrom("mfsmaster", "moosefs-master"), roottest.BinaryFrom("mfschunkserver", "moosefs-chunkserver"), roottest.BinaryFrom("mfsmount", "moosefs-client"))
	testVolumeAcrossContainers(t, "moosefs", storage.Layout{Kind: storage.Replicate, Copies: 2})
}

// testVolumeAcrossContainers: a pool of kind over s0 and s1, its volume
// mounted into a container on s0 and one on s2 (which only mounts). What
// the first writes the second reads byte for byte; the first moves to s1
// and reads what it wrote; s1's agent is killed and restarted, and the
// mounts, the daemons and the data are still there.
func testVolumeAcrossContainers(t *testing.T, kind string, layout storage.Layout) {
	f := fleettest.Start(t, 3, fleet.Options{Storage: []string{kind}})
	ctx := context.Background()
	pools := f.Storage
	if err := pools.Create(ctx, storage.PoolSpec{Name: "shared", Kind: kind, Servers: []string{"s0", "s1"}, Layout: layout}); err != nil {
		t.Fatal(err)
	}
	if err := pools.CreateVolume(ctx, "shared", storage.Volume{Name: "data"}); err != nil {
		t.Fatal(err)
	}
	for _, srv := range []string{"s0", "s2"} {
		if _, err := pools.Mount(ctx, srv, "shared", "data", nil); err != nil {
			t.Fatal(err)
		}
	}
	spec := func(name string) *container.Spec {
		return &container.Spec{Name: name, Image: "base", Mounts: []container.Mount{{Volume: "shared/data", Target: "/data"}}}
	}
	run := func(srv, name string) *container.Server {
		s, _ := f.Cluster.Server(srv)
		if _, err := s.Create(ctx, spec(name)); err != nil {
			t.Fatal(err)
		}
		if err := s.Start(ctx, name); err != nil {
			t.Fatal(err)
		}
		return s
	}
	writer := run("s0", "writer")
	reader := run("s2", "reader")

	data := make([]byte, 4<<20)
	rand.Read(data)
	sum := sha256.Sum256(data)
	want := hex.EncodeToString(sum[:])
	if code, err := writer.Exec(ctx, "writer", &container.Process{Args: []string{"tee", "/data/blob"}, Stdin: bytes.NewReader(data), Stdout: new(bytes.Buffer)}); err != nil || code != 0 {
		t.Fatalf("writing /data/blob on s0: exit %d, %v", code, err)
	}
	sha := func(s *container.Server, name, file string) string {
		t.Helper()
		var out, errOut bytes.Buffer
		code, err := s.Exec(ctx, name, &container.Process{Args: []string{"sha256sum", file}, Stdout: &out, Stderr: &errOut})
		if err != nil || code != 0 {
			t.Fatalf("sha256sum %s in %s: exit %d, %v: %s", file, name, code, err, errOut.String())
		}
		return strings.Fields(out.String())[0]
	}
	if got := sha(reader, "reader", "/data/blob"); got != want {
		t.Fatalf("the container on s2 reads sha256 %s; s0's container wrote %s", got, want)
	}

	// The writer moves to s1: the volume is mounted there, not copied.
	if _, err := f.Cluster.Move(ctx, "writer", "s0", "s1", nil); err != nil {
		t.Fatal(err)
	}
	s1, _ := f.Cluster.Server("s1")
	if got := sha(s1, "writer", "/data/blob"); got != want {
		t.Fatalf("after the move to s1 the writer reads sha256 %s, want %s", got, want)
	}
	st, err := pools.Status(ctx, "shared")
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Mounts["s1"]) != 1 {
		t.Fatalf("after the move s1's mounts are %+v", st.Mounts["s1"])
	}

	// s1's agent dies and comes back: its daemons and mounts come back,
	// the container on it keeps its data, and a new file written there is
	// read on s2.
	if err := f.Servers[1].Kill(); err != nil {
		t.Fatal(err)
	}
	if err := f.Servers[1].Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if got := sha(s1, "writer", "/data/blob"); got != want {
		t.Fatalf("after s1's agent restarted the writer reads sha256 %s, want %s", got, want)
	}
	if code, err := s1.Exec(ctx, "writer", &container.Process{Args: []string{"sh", "-c", "echo after-restart > /data/note"}}); err != nil || code != 0 {
		t.Fatalf("writing after the restart: exit %d, %v", code, err)
	}
	var out bytes.Buffer
	if code, err := reader.Exec(ctx, "reader", &container.Process{Args: []string{"cat", "/data/note"}, Stdout: &out}); err != nil || code != 0 || out.String() != "after-restart\n" {
		t.Fatalf("reading the note on s2: %q, exit %d, %v", out.String(), code, err)
	}
	// The restarted member's daemons rejoin the pool within seconds.
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(500 * time.Millisecond) {
		if st, err = pools.Status(ctx, "shared"); err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(st.Members, func(m storage.MemberStatus) bool { return !m.Up }) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a minute after the restart a member is down: %+v", st.Members)
		}
	}
	for srv, ms := range st.Mounts {
		for _, m := range ms {
			if !m.Healthy {
				t.Errorf("after the restart %s's mount of %s is unhealthy", srv, m.Volume)
			}
		}
	}
}
