package lxc

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path"
	"strconv"
	"strings"

	"github.com/musterkit/muster/container/driver"
	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/names"
)

// cpuPeriod is the CFS period, in microseconds, that CPU limits are
// expressed against.
const cpuPeriod = 100_000

// maxNetworks bounds a container's networks, so that host-side veth names
// stay within 15 bytes.
const maxNetworks = 100

// Cgroup versions of a controller, as detected on the host.
const (
	cgroupNone = 0 // controller not available
	cgroupV1   = 1 // a legacy hierarchy manages it
	cgroupV2   = 2 // the unified hierarchy manages it
)

// cgroupLayout says which hierarchy manages each controller the driver uses.
type cgroupLayout struct {
	Memory, CPU, CPUAcct, Pids, Devices int
}

// configEnv is what a container's LXC configuration depends on besides its
// spec: where the container lives and how the host's cgroups are laid out.
type configEnv struct {
	LXCPath string // absolute, clean; the container is LXCPath/<name>
	Cgroups cgroupLayout
}

// devicesAllowed is the device cgroup allowlist, as in LXC's common.conf:
// mknod of anything, use of the usual character devices.
var devicesAllowed = []string{
	"c *:* m", "b *:* m",
	"c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm", // null zero full random urandom
	"c 5:0 rwm", "c 5:1 rwm", "c 5:2 rwm", "c 136:* rwm", // tty console ptmx pts
	"c 10:229 rwm", // fuse
}

// renderConfig returns the LXC configuration of a container: a pure function
// of spec and env. It checks every value it writes, whatever the caller
// validated before, so no spec can add a line or a key to the configuration:
// names are DNS labels, interface names are interface names, paths are
// absolute and clean and hold no whitespace, control or special characters.
// A limit whose cgroup controller the host lacks is errcode.Unimplemented.
func renderConfig(spec *driver.Spec, env configEnv) ([]byte, error) {
	if err := names.Label(spec.Name); err != nil {
		return nil, err
	}
	if err := configPath("lxcpath", env.LXCPath); err != nil {
		return nil, err
	}
	dir := path.Join(env.LXCPath, spec.Name)
	var b bytes.Buffer
	set := func(key, value string) { fmt.Fprintf(&b, "%s = %s\n", key, value) }

	b.WriteString("# Written by Muster (drivers/lxc) from muster.json; edits are overwritten.\n")
	set("lxc.uts.name", spec.Name)
	set("lxc.rootfs.path", "dir:"+path.Join(dir, "rootfs"))
	set("lxc.init.cmd", "/sbin/init")
	set("lxc.signal.halt", "SIGUSR2")                             // the base image's init (and busybox's) halts on USR2
	set("lxc.mount.auto", "proc:mixed sys:ro cgroup:mixed:force") // force: also with a cgroup namespace
	set("lxc.autodev", "1")
	set("lxc.tty.max", "0")
	set("lxc.pty.max", "64")
	set("lxc.console.path", "none")
	set("lxc.apparmor.profile", "unconfined")
	set("lxc.cap.drop", "mac_admin mac_override sys_time sys_module sys_rawio")
	set("lxc.log.file", path.Join(dir, "lxc.log"))
	set("lxc.log.level", "ERROR")
	if spec.Autostart {
		set("lxc.start.auto", "1")
	}

	// Limits.
	cg := env.Cgroups
	l := spec.Limits
	if l.MemoryBytes < 0 || l.MilliCPU < 0 || l.Pids < 0 {
		return nil, errcode.New(errcode.InvalidArgument, "limits must not be negative")
	}
	type limit struct {
		what    string
		version int
		v1, v2  [][2]string // keys and values
	}
	var limits []limit
	if l.MemoryBytes > 0 {
		v := strconv.FormatInt(l.MemoryBytes, 10)
		limits = append(limits, limit{"memory", cg.Memory,
			[][2]string{{"memory.limit_in_bytes", v}}, [][2]string{{"memory.max", v}}})
	}
	if l.MilliCPU > 0 {
		quota := l.MilliCPU * cpuPeriod / 1000
		if quota < 1000 { // the kernel's minimum quota is 1 ms
			quota = 1000
		}
		q, p := strconv.FormatInt(quota, 10), strconv.Itoa(cpuPeriod)
		limits = append(limits, limit{"cpu", cg.CPU,
			[][2]string{{"cpu.cfs_period_us", p}, {"cpu.cfs_quota_us", q}}, [][2]string{{"cpu.max", q + " " + p}}})
	}
	if l.Pids > 0 {
		v := strconv.FormatInt(l.Pids, 10)
		limits = append(limits, limit{"pids", cg.Pids,
			[][2]string{{"pids.max", v}}, [][2]string{{"pids.max", v}}})
	}
	var devices [][2]string
	devices = append(devices, [2]string{"devices.deny", "a"})
	for _, d := range devicesAllowed {
		devices = append(devices, [2]string{"devices.allow", d})
	}
	limits = append(limits, limit{"devices", cg.Devices, devices, devices})
	for _, lim := range limits {
		switch lim.version {
		case cgroupV1:
			for _, kv := range lim.v1 {
				set("lxc.cgroup."+kv[0], kv[1])
			}
		case cgroupV2:
			for _, kv := range lim.v2 {
				set("lxc.cgroup2."+kv[0], kv[1])
			}
		default:
			if lim.what == "devices" {
				continue // no device controller: nothing to restrict with
			}
			return nil, errcode.New(errcode.Unimplemented, "a %s limit needs the %s cgroup controller, which this host lacks", lim.what, lim.what)
		}
	}

	// Bind mounts, relative to the rootfs so LXC keeps them inside it.
	for _, m := range spec.Mounts {
		if err := configPath("mount source", m.Source); err != nil {
			return nil, err
		}
		if err := configPath("mount target", m.Target); err != nil {
			return nil, err
		}
		if m.Target == "/" {
			return nil, errcode.New(errcode.InvalidArgument, "mount target must not be /")
		}
		opts := "bind,create=dir"
		if m.ReadOnly {
			opts += ",ro"
		}
		set("lxc.mount.entry", fmt.Sprintf("%s %s none %s 0 0", m.Source, strings.TrimPrefix(m.Target, "/"), opts))
	}

	// Networks. Without one the container still gets its own network
	// namespace with only loopback, never the host's.
	if len(spec.Networks) > maxNetworks {
		return nil, errcode.New(errcode.InvalidArgument, "%d networks; at most %d", len(spec.Networks), maxNetworks)
	}
	if len(spec.Networks) == 0 {
		set("lxc.net.0.type", "empty")
	}
	for i, n := range spec.Networks {
		k := fmt.Sprintf("lxc.net.%d.", i)
		if err := names.Interface(n.Bridge); err != nil {
			return nil, fmt.Errorf("network %d bridge: %w", i, err)
		}
		name := n.InterfaceName(i)
		if err := names.Interface(name); err != nil {
			return nil, fmt.Errorf("network %d interface: %w", i, err)
		}
		// No lxc.net.N.link: LXC finds bridges under /sys/class/net, which
		// shows the network namespace of whoever mounted /sys, so Start
		// puts the host side on the bridge itself (attachNetworks).
		set(k+"type", "veth")
		set(k+"name", name)
		set(k+"flags", "up")
		set(k+"veth.pair", vethName(env.LXCPath, spec.Name, i))
		if n.MTU != 0 {
			if n.MTU < 576 || n.MTU > 65535 {
				return nil, errcode.New(errcode.InvalidArgument, "network %d MTU %d is outside 576..65535", i, n.MTU)
			}
			set(k+"mtu", strconv.Itoa(n.MTU))
		}
		if n.Gateway.IsValid() && !n.Address.IsValid() {
			return nil, errcode.New(errcode.InvalidArgument, "network %d has a gateway but no address", i)
		}
		if n.Address.IsValid() {
			a := n.Address
			if a.Addr().Zone() != "" || a.Addr().Is4In6() {
				return nil, errcode.New(errcode.InvalidArgument, "network %d address %s must be plain IPv4 or IPv6", i, a)
			}
			family := "ipv4"
			if a.Addr().Is6() {
				family = "ipv6"
			}
			set(k+family+".address", a.String())
			if g := n.Gateway; g.IsValid() {
				if g.Zone() != "" || g.Is6() != a.Addr().Is6() || g == a.Addr() || !a.Contains(g) {
					return nil, errcode.New(errcode.InvalidArgument, "network %d gateway %s is not another address in %s", i, g, a.Masked())
				}
				set(k+family+".gateway", g.String())
			}
		}
	}
	return b.Bytes(), nil
}

// vethName is the host-side name of a container's network i: "mst", ten hex
// digits of a hash of the container's directory, and i. It is unique on the
// machine because the directory is.
func vethName(lxcpath, name string, i int) string {
	sum := sha256.Sum256([]byte(path.Join(lxcpath, name)))
	return fmt.Sprintf("mst%s%d", hex.EncodeToString(sum[:5]), i)
}

// configPath accepts an absolute, clean path that is safe as an LXC
// configuration value and as an fstab field: no control characters,
// whitespace, or any of , # = \ " '.
func configPath(what, p string) error {
	if !path.IsAbs(p) || path.Clean(p) != p {
		return errcode.New(errcode.InvalidArgument, "%s %q must be an absolute, clean path", what, p)
	}
	for _, r := range p {
		if r <= ' ' || r == 0x7f || strings.ContainsRune(`,#=\"'`, r) {
			return errcode.New(errcode.InvalidArgument, "%s %q holds a character that is not allowed (control, whitespace, or one of , # = \\ \" ')", what, p)
		}
	}
	return nil
}
