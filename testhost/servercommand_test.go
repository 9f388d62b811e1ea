package testhost

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/musterkit/muster/roottest"
)

// TestServerCommandKeepsMounts: a mount one ServerCommand makes is there
// for the next, in the host's network namespace with its /sys; Command's
// fresh namespaces and the root namespace do not see it; Close releases
// the namespace.
func TestServerCommandKeepsMounts(t *testing.T) {
	roottest.Require(t, roottest.BinaryFrom("nsenter", "util-linux"))
	c, err := Build(context.Background(), 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	h := c.Hosts[0]
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dir := t.TempDir()
	if out, err := h.ServerCommand(ctx, "sh", "-c", `mount -t tmpfs tmpfs "$1" && touch "$1/kept"`, "sh", dir).CombinedOutput(); err != nil {
		t.Fatalf("mounting: %v: %s", err, out)
	}
	if out, err := h.ServerCommand(ctx, "test", "-e", filepath.Join(dir, "kept")).CombinedOutput(); err != nil {
		t.Fatalf("the next ServerCommand does not see the mount: %v: %s", err, out)
	}
	if out, err := h.ServerCommand(ctx, "ls", "/sys/class/net").Output(); err != nil || !strings.Contains(string(out), h.Link) {
		t.Fatalf("/sys/class/net in the host's mount namespace: %q, %v; want %s", out, err, h.Link)
	}
	if _, err := os.Stat(filepath.Join(dir, "kept")); err == nil {
		t.Fatal("the root namespace sees the host's mount")
	}
	if err := h.Command(ctx, "test", "-e", filepath.Join(dir, "kept")).Run(); err == nil {
		t.Fatal("a fresh Command namespace sees the host's mount")
	}
	file := h.mntFile
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(file); !os.IsNotExist(err) {
		t.Fatalf("the namespace file outlived Close: %v", err)
	}
}
