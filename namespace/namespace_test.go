package namespace_test

import (
	"net"
	"runtime"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/musterkit/muster/namespace"
	"github.com/musterkit/muster/roottest"
)

// TestRun runs code in a fresh namespace, which holds only its loopback
// link, and checks that the thread is back in its own namespace after.
func TestRun(t *testing.T) {
	roottest.Require(t)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.New() // switches this thread into it
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if err := netns.Set(orig); err != nil {
		t.Fatal(err)
	}

	var links []net.Interface
	if err := namespace.Run(ns, func() (err error) { links, err = net.Interfaces(); return err }); err != nil {
		t.Fatal(err)
	}
	if len(links) != 1 || links[0].Name != "lo" {
		t.Fatalf("links in a fresh namespace: %v, want only lo", links)
	}
	if now, err := netns.Get(); err != nil || !now.Equal(orig) {
		t.Fatalf("after Run the thread is in %v (%v), want %v", now, err, orig)
	}
	closed := netns.None()
	if err := namespace.Run(closed, func() error { t.Fatal("ran in a closed namespace"); return nil }); err == nil {
		t.Fatal("Run with a closed handle did not fail")
	}
}
