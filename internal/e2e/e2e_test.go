package e2e

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/musterkit/muster/container"
	"github.com/musterkit/muster/container/driver"
	"github.com/musterkit/muster/container/drivertest"
	"github.com/musterkit/muster/internal/fleet"
	"github.com/musterkit/muster/internal/fleet/fleettest"
)

func TestMain(m *testing.M) {
	os.Exit(fleettest.Main(m))
}

// startFleet starts n LXC servers with the base image on each; the agents
// serve the network drivers named (their default if none).
func startFleet(t *testing.T, n int, networks ...string) *fleet.Fleet {
	t.Helper()
	return fleettest.Start(t, n, fleet.Options{Networks: networks})
}

// TestRemoteLXCConformance runs the driver suite through the agent's client
// against a real agent with the LXC driver inside a simulated server.
func TestRemoteLXCConformance(t *testing.T) {
	f := startFleet(t, 1)
	s := f.Servers[0]
	drivertest.RunConformanceTests(t, drivertest.Harness{
		Open: func(t *testing.T) driver.Driver {
			list, err := s.Client.List(context.Background())
			if err != nil || len(list) != 0 {
				t.Fatalf("the server is not fresh: %d containers, %v", len(list), err)
			}
			// A client of its own: the suite closes it, and the
			// fleet's Client must outlive the suite.
			c, err := s.Dial(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			return c
		},
		Image:        "base",
		Bridge:       fleet.Bridge,
		Subnet:       fleet.BridgeAddr.Masked(),
		MountSource:  t.TempDir(),
		ReportsUsage: true,
	})
}

// treeDigest hashes every path, mode, link target and file content under
// root, so that two trees have equal digests only if they are identical.
func treeDigest(t *testing.T, root string) string {
	t.Helper()
	h := sha256.New()
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		info, err := d.Info()
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "%s %v %d\n", rel, info.Mode(), info.Size())
		switch {
		case info.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(h, "-> %s\n", target)
		case info.Mode().IsRegular():
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			if _, err := io.Copy(h, f); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func rootfs(s *fleet.Server, name string) string {
	return filepath.Join(s.Dir, "containers", name, "rootfs")
}

// fill writes n bytes of random data into the container, in files of
// 1 MiB and one of 777 bytes, plus a symlink.
func fill(t *testing.T, srv *container.Server, name string, n int) {
	t.Helper()
	ctx := context.Background()
	for i := 0; n > 0; i++ {
		size := min(n, 1<<20)
		if i == 0 {
			size = 777
		}
		data := make([]byte, size)
		rand.Read(data)
		code, err := srv.Exec(ctx, name, &container.Process{Args: []string{"tee", fmt.Sprintf("/root/blob-%03d", i)}, Stdin: strings.NewReader(string(data))})
		if err != nil || code != 0 {
			t.Fatalf("writing data: exit %d, %v", code, err)
		}
		n -= size
	}
	if code, err := srv.Exec(ctx, name, &container.Process{Args: []string{"ln", "-s", "blob-000", "/root/link"}}); err != nil || code != 0 {
		t.Fatalf("ln -s: exit %d, %v", code, err)
	}
}

// modes are the transfer modes, in the order the tests run them.
var modes = []container.TransferMode{container.Relay, container.Push, container.Pull}

// TestMoveBetweenHostsIsByteIdentical moves a running container between
// two simulated servers, back and forth once in each transfer mode, and
// compares its whole root filesystem with the original's each time.
func TestMoveBetweenHostsIsByteIdentical(t *testing.T) {
	f := startFleet(t, 2)
	ctx := context.Background()
	src, _ := f.Cluster.Server("s0")
	if _, err := src.Create(ctx, &container.Spec{Name: "mover", Image: "base", Labels: map[string]string{"app": "mover"}}); err != nil {
		t.Fatal(err)
	}
	if err := src.Start(ctx, "mover"); err != nil {
		t.Fatal(err)
	}
	fill(t, src, "mover", 8<<20)
	if err := src.Stop(ctx, "mover", 0); err != nil {
		t.Fatal(err)
	}
	before := treeDigest(t, rootfs(f.Servers[0], "mover"))
	if err := src.Start(ctx, "mover"); err != nil {
		t.Fatal(err)
	}
	at := 0 // the server holding the container
	for _, mode := range modes {
		ok := t.Run(mode.String(), func(t *testing.T) {
			from, to := f.Servers[at], f.Servers[1-at]
			var transferred int64
			info, err := f.Cluster.Move(ctx, "mover", from.Name, to.Name, &container.TransferOptions{Mode: mode, Progress: func(e container.Event) { transferred = e.Bytes }})
			if err != nil {
				t.Fatal(err)
			}
			at = 1 - at
			if info.State != container.Running || info.Spec.Labels["app"] != "mover" {
				t.Fatalf("moved container: %+v", info)
			}
			if transferred < 8<<20 {
				t.Fatalf("progress reported %d bytes for 8 MiB of data", transferred)
			}
			dst, _ := f.Cluster.Server(to.Name)
			if err := dst.Stop(ctx, "mover", 0); err != nil {
				t.Fatal(err)
			}
			if after := treeDigest(t, rootfs(to, "mover")); after != before {
				t.Fatal("the moved container's root filesystem differs from the original's")
			}
			if _, err := os.Stat(rootfs(from, "mover")); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("the source's rootfs is still there: %v", err)
			}
			if err := dst.Start(ctx, "mover"); err != nil {
				t.Fatal(err)
			}
		})
		if !ok {
			break // the container is not where the next mode expects it
		}
	}
}

// TestMoveTargetDiesMidTransfer kills the target's agent while the
// container streams to it, in each transfer mode: the move fails, the
// source runs as before with the same files, and the target, once back,
// holds nothing of it.
func TestMoveTargetDiesMidTransfer(t *testing.T) {
	f := startFleet(t, 2)
	ctx := context.Background()
	src, _ := f.Cluster.Server("s0")
	if _, err := src.Create(ctx, &container.Spec{Name: "victim", Image: "base"}); err != nil {
		t.Fatal(err)
	}
	if err := src.Start(ctx, "victim"); err != nil {
		t.Fatal(err)
	}
	fill(t, src, "victim", 64<<20)
	if err := src.Stop(ctx, "victim", 0); err != nil {
		t.Fatal(err)
	}
	before := treeDigest(t, rootfs(f.Servers[0], "victim"))
	if err := src.Start(ctx, "victim"); err != nil {
		t.Fatal(err)
	}
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			var killed atomic.Bool
			// The target stays dead: the rollback gives up on it after 2 s.
			_, err := f.Cluster.Move(ctx, "victim", "s0", "s1", &container.TransferOptions{Mode: mode, FinishTimeout: 2 * time.Second, Progress: func(e container.Event) {
				if e.Phase == container.PhaseTransfer && e.Bytes >= 4<<20 && !killed.Swap(true) {
					if err := f.Servers[1].Kill(); err != nil {
						t.Errorf("killing the target agent: %v", err)
					}
				}
			}})
			if !killed.Load() {
				t.Fatal("the transfer ended before the target could be killed")
			}
			if err == nil {
				t.Fatal("a move to a target that died succeeded")
			}
			t.Logf("move failed as it should: %v", err)
			info, err := src.Get(ctx, "victim")
			if err != nil || info.State != container.Running {
				t.Fatalf("source after the failed move: %+v, %v; want running", info, err)
			}
			if code, err := src.Exec(ctx, "victim", &container.Process{Args: []string{"true"}}); err != nil || code != 0 {
				t.Fatalf("source does not exec after the failed move: %d %v", code, err)
			}
			if err := src.Stop(ctx, "victim", 0); err != nil {
				t.Fatal(err)
			}
			if after := treeDigest(t, rootfs(f.Servers[0], "victim")); after != before {
				t.Fatal("the source's files changed")
			}
			if err := src.Start(ctx, "victim"); err != nil {
				t.Fatal(err)
			}
			if err := f.Servers[1].Restart(ctx); err != nil {
				t.Fatal(err)
			}
			dst, _ := f.Cluster.Server("s1")
			if list, err := dst.List(ctx); err != nil || len(list) != 0 {
				t.Fatalf("target after restart: %d containers, %v", len(list), err)
			}
			entries, _ := os.ReadDir(filepath.Join(f.Servers[1].Dir, "containers"))
			for _, e := range entries {
				t.Errorf("target kept %s in its lxcpath", e.Name())
			}
		})
	}
}
