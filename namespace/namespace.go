// Package namespace runs code in a Linux network namespace. It is the SDK's
// one thread-bound namespace switch: kernel code otherwise passes a
// namespace-bound *netlink.Handle (netlink.NewHandleAt) and never depends
// on the calling thread's namespace. Use it only for what a handle cannot
// do: opening sockets or TUN devices in the namespace, or writing its
// /proc/sys.
package namespace

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// Run locks the goroutine to its OS thread, switches the thread into ns,
// runs fn and switches back. If switching back fails the thread stays
// locked, so the runtime ends it rather than reuse a thread in the wrong
// namespace. ns stays the caller's.
func Run(ns netns.NsHandle, fn func() error) error {
	if !ns.IsOpen() {
		return errors.New("namespace: the namespace handle is closed")
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("namespace: current namespace: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(ns); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("namespace: entering namespace: %w", err)
	}
	defer func() {
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
	}()
	return fn()
}

// Runner returns Run bound to ns, the shape drivers take as an option
// (wireguard.Options.Do). ns must stay open while it is used.
func Runner(ns netns.NsHandle) func(func() error) error {
	return func(fn func() error) error { return Run(ns, fn) }
}
