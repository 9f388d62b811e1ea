package wireguard

import (
	"errors"
	"net"
	"sync"
	"syscall"

	"github.com/musterkit/muster/errcode"
	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// wgDevice is one network's WireGuard device: the embedded userspace one
// or a kernel one.
type wgDevice interface {
	// configure applies cfg. Changing the listen port opens a socket: call
	// it on a thread in the server's namespace (Options.Do).
	configure(cfg *wgtypes.Config) error
	// state reads the device.
	state() (*wgtypes.Device, error)
	// stop stops the device: a userspace device and its link go away; a
	// kernel device stays (remove says whether to delete its link).
	stop(remove bool) error
	// kernel reports whether this is a kernel device.
	kernel() bool
}

// userspaceDevice is wireguard-go embedded in this process.
type userspaceDevice struct {
	ns   *nsGuard
	tun  *nsTUN
	dev  *device.Device
	uapi net.Listener // /var/run/wireguard/<name>.sock, for wg(8)
}

// newUserspace creates the TUN link name and a wireguard-go device on it,
// configures it with cfg and brings it up. Call it on a thread in the
// server's namespace: the TUN link, the netlink socket wireguard-go's TUN
// reader watches and the UDP socket Up opens all belong to the calling
// thread's namespace.
//
// do is Options.Do: wireguard-go follows the TUN link from a goroutine of
// its own, re-opening its socket when the link goes down and up and
// re-reading the MTU by name when it changes; nsBind and nsTUN make sure
// both happen in the server's namespace too.
func newUserspace(name string, mtu int, cfg *wgtypes.Config, log *device.Logger, do func(func() error) error) (*userspaceDevice, error) {
	t, err := tun.CreateTUN(name, mtu)
	if err != nil {
		return nil, kernelErr("creating TUN device "+name, err)
	}
	g := &nsGuard{do: do}
	nt := &nsTUN{Device: t, ns: g}
	u := &userspaceDevice{ns: g, tun: nt, dev: device.NewDevice(nt, &nsBind{Bind: conn.NewDefaultBind(), ns: g}, log)}
	if err := u.configure(cfg); err != nil {
		u.stop(true)
		return nil, err
	}
	if err := u.dev.Up(); err != nil {
		u.stop(true)
		return nil, kernelErr("bringing up the WireGuard device", err)
	}
	if err := u.serveUAPI(name); err != nil {
		u.stop(true)
		return nil, err
	}
	return u, nil
}

// serveUAPI serves the device's standard control socket, so that wg(8)
// and wgctrl show and configure it as any userspace WireGuard device.
func (u *userspaceDevice) serveUAPI(name string) error {
	f, err := ipc.UAPIOpen(name)
	if err != nil {
		return errcode.Syscall(err, "opening the WireGuard control socket of %s", name)
	}
	defer f.Close()
	l, err := ipc.UAPIListen(name, f)
	if err != nil {
		return errcode.Syscall(err, "listening on the WireGuard control socket of %s", name)
	}
	u.uapi = l
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go u.dev.IpcHandle(c)
		}
	}()
	return nil
}

func (u *userspaceDevice) configure(cfg *wgtypes.Config) error {
	if err := u.dev.IpcSet(formatConfig(cfg)); err != nil {
		return deviceErr(err)
	}
	return nil
}

func (u *userspaceDevice) state() (*wgtypes.Device, error) {
	text, err := u.dev.IpcGet()
	if err != nil {
		return nil, deviceErr(err)
	}
	dev, err := parseDevice(text)
	if err != nil {
		return nil, errcode.Wrap(errcode.Internal, err)
	}
	return dev, nil
}

func (u *userspaceDevice) stop(bool) error {
	if u.uapi != nil {
		u.uapi.Close() // removes the socket
	}
	u.ns.close()
	u.dev.Close() // closes the TUN file: the link and its routes vanish
	return nil
}

func (u *userspaceDevice) kernel() bool { return false }

// nsGuard runs a device's calls into the server's namespace (Options.Do)
// until the device stops; after that they fail, so that wireguard-go's
// goroutines, which may outlive Device.Close briefly, never enter a
// namespace the caller may have closed.
type nsGuard struct {
	mu     sync.Mutex
	closed bool
	do     func(func() error) error
}

func (g *nsGuard) run(fn func() error) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return errors.New("wireguard: the device is stopped")
	}
	return g.do(fn)
}

// close waits for a call in progress and fails later ones.
func (g *nsGuard) close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
}

// nsBind is a conn.Bind whose sockets are opened on a thread in the
// server's namespace, whichever goroutine asks.
type nsBind struct {
	conn.Bind
	ns *nsGuard
}

func (b *nsBind) Open(port uint16) (fns []conn.ReceiveFunc, actual uint16, err error) {
	if derr := b.ns.run(func() error {
		fns, actual, err = b.Bind.Open(port)
		return nil
	}); derr != nil {
		return nil, 0, derr
	}
	return fns, actual, err
}

// nsTUN is a tun.Device whose MTU is read in the server's namespace:
// wireguard-go reads it by name with an ioctl on a fresh socket, from its
// own event goroutine, whenever the link changes.
type nsTUN struct {
	tun.Device
	ns *nsGuard
}

func (t *nsTUN) MTU() (mtu int, err error) {
	if derr := t.ns.run(func() error {
		mtu, err = t.Device.MTU()
		return nil
	}); derr != nil {
		return 0, derr
	}
	return mtu, err
}

// kernelDevice is a "wireguard" link of the kernel module, configured with
// wgctrl's generic netlink client opened in the server's namespace.
//
// This machine's kernel has no WireGuard module, so this path is not
// exercised by the package's tests.
type kernelDevice struct {
	h      *netlink.Handle
	name   string
	client *wgctrl.Client
}

// newKernel creates (or adopts) the kernel WireGuard link name. It returns
// nil, nil if the kernel has no WireGuard link type. Call it on a thread in
// the server's namespace: wgctrl's generic netlink socket belongs to the
// calling thread's namespace.
func newKernel(h *netlink.Handle, name string, mtu int, cfg *wgtypes.Config) (*kernelDevice, error) {
	link := &netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: mtu}}
	created := true
	if err := h.LinkAdd(link); err != nil {
		if errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.ENOENT) {
			return nil, nil // no such link type: use the userspace device
		}
		l, lerr := h.LinkByName(name)
		if !errors.Is(err, syscall.EEXIST) || lerr != nil || l.Type() != "wireguard" {
			return nil, kernelErr("adding WireGuard link "+name, err)
		}
		created = false // left by an earlier process: adopt it
	}
	k := &kernelDevice{h: h, name: name}
	fail := func(err error) (*kernelDevice, error) {
		k.stop(created)
		return nil, err
	}
	c, err := wgctrl.New()
	if err != nil {
		return fail(kernelErr("opening wgctrl", err))
	}
	k.client = c
	if err := k.configure(cfg); err != nil {
		return fail(err)
	}
	return k, nil
}

func (k *kernelDevice) configure(cfg *wgtypes.Config) error {
	if err := k.client.ConfigureDevice(k.name, *cfg); err != nil {
		return kernelErr("configuring "+k.name, err)
	}
	return nil
}

func (k *kernelDevice) state() (*wgtypes.Device, error) {
	dev, err := k.client.Device(k.name)
	if err != nil {
		return nil, kernelErr("reading "+k.name, err)
	}
	return dev, nil
}

func (k *kernelDevice) stop(remove bool) error {
	var err error
	if k.client != nil {
		err = k.client.Close()
	}
	if remove {
		if l, lerr := k.h.LinkByName(k.name); lerr == nil {
			err = errors.Join(err, k.h.LinkDel(l))
		}
	}
	return err
}

func (k *kernelDevice) kernel() bool { return true }
