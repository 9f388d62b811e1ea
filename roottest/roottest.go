// Package roottest gates privileged tests.
//
// A privileged test starts with
//
//	roottest.Require(t, roottest.BinaryFrom("ip", "iproute2"), roottest.Kernel(roottest.Veth))
//
// Without MUSTER_ROOT_TESTS=1 the test is skipped, so a plain `go test ./...` needs
// no privileges. With MUSTER_ROOT_TESTS=1 (CI sets it) nothing skips silently: the
// process must run as root and every [Need] must be met, or the test fails, naming
// what is missing and the Debian package that provides it. The only allowed skips
// are the kernel features listed in [MissingKernelFeatures].
package roottest

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// EnvVar is the environment variable that enables privileged tests when set to "1".
const EnvVar = "MUSTER_ROOT_TESTS"

// Feature names a kernel facility a test depends on.
type Feature string

// Kernel features. The value is the kernel module name.
const (
	// WireGuard is the in-kernel WireGuard device (CONFIG_WIREGUARD).
	WireGuard Feature = "wireguard"
	// IPVS is the IP virtual server load balancer (CONFIG_IP_VS).
	IPVS Feature = "ip_vs"
	// NFS is the kernel NFS client and server (CONFIG_NFS_FS, CONFIG_NFSD).
	NFS Feature = "nfs"

	// VXLAN is the vxlan link type (CONFIG_VXLAN).
	VXLAN Feature = "vxlan"
	// Bridge is the Linux bridge (CONFIG_BRIDGE).
	Bridge Feature = "bridge"
	// Veth is the veth pair link type (CONFIG_VETH).
	Veth Feature = "veth"
	// Macvlan is the macvlan link type (CONFIG_MACVLAN).
	Macvlan Feature = "macvlan"
	// TUN is the tun/tap device, /dev/net/tun (CONFIG_TUN).
	TUN Feature = "tun"
	// OverlayFS is the overlay filesystem (CONFIG_OVERLAY_FS).
	OverlayFS Feature = "overlay"
	// FUSE is the FUSE filesystem and /dev/fuse (CONFIG_FUSE_FS).
	FUSE Feature = "fuse"
)

// MissingKernelFeatures is the one list of kernel features this project's test
// machines lack, with the reason. [Kernel] skips a test that needs one of them;
// no other missing prerequisite may skip a test when MUSTER_ROOT_TESTS=1.
var MissingKernelFeatures = map[Feature]string{
	WireGuard: "this kernel has no WireGuard module; the userspace device is the tested path",
	IPVS:      "this kernel has no IPVS (ip_vs) module",
	NFS:       "this kernel has no kernel NFS client or server; nfs-ganesha and libnfs are the tested path",
}

// Need is one prerequisite of a privileged test, built by [Binary], [BinaryFrom]
// or [Kernel].
type Need struct {
	what string
	// check reports a non-empty skip reason for an allowed skip, or an error
	// describing what is missing.
	check func() (skip string, err error)
}

// String describes the prerequisite.
func (n Need) String() string { return n.what }

// Require gates a privileged test. Unless MUSTER_ROOT_TESTS=1 it skips the test.
// When it is set, Require fails the test if the process is not root or if any
// need is unmet (all needs are checked and reported together); it skips only for
// a kernel feature listed in [MissingKernelFeatures].
func Require(t testing.TB, needs ...Need) {
	t.Helper()
	require(t, os.Getenv(EnvVar), os.Geteuid(), needs)
}

func require(t testing.TB, env string, euid int, needs []Need) {
	t.Helper()
	if env != "1" {
		t.Skip("privileged test: set " + EnvVar + "=1 and run as root")
	}
	if euid != 0 {
		t.Fatalf("privileged test: %s=1 but running as uid %d, not root", EnvVar, euid)
	}
	var missing []string
	var skips []string
	for _, n := range needs {
		if n.check == nil {
			missing = append(missing, "invalid roottest.Need (use Binary, BinaryFrom or Kernel)")
			continue
		}
		skip, err := n.check()
		switch {
		case err != nil:
			missing = append(missing, err.Error())
		case skip != "":
			skips = append(skips, skip)
		}
	}
	if len(missing) > 0 {
		t.Fatalf("privileged test: missing prerequisites:\n\t%s", strings.Join(missing, "\n\t"))
	}
	if len(skips) > 0 {
		t.Skip(strings.Join(skips, "; "))
	}
}

// debianPackages names the Debian package providing a binary, for error messages.
var debianPackages = map[string]string{
	"ip":             "iproute2",
	"bridge":         "iproute2",
	"tc":             "iproute2",
	"nsenter":        "util-linux",
	"unshare":        "util-linux",
	"mount":          "mount",
	"modprobe":       "kmod",
	"ping":           "iputils-ping",
	"busybox":        "busybox-static",
	"lxc-start":      "lxc",
	"haproxy":        "haproxy",
	"nginx":          "nginx",
	"keepalived":     "keepalived",
	"bird":           "bird2",
	"birdc":          "bird2",
	"iperf3":         "iperf3",
	"wrk":            "wrk",
	"dig":            "bind9-dnsutils",
	"ganesha.nfsd":   "nfs-ganesha",
	"nfs-ls":         "libnfs-utils",
	"nfs-cp":         "libnfs-utils",
	"glusterd":       "glusterfs-server",
	"gluster":        "glusterfs-server",
	"mfsmaster":      "moosefs-master",
	"mfschunkserver": "moosefs-chunkserver",
	"mfsmount":       "moosefs-client",
}

// Binary needs the program name on $PATH. The Debian package is named in the
// failure message when this package knows it; otherwise use [BinaryFrom].
func Binary(name string) Need {
	return BinaryFrom(name, debianPackages[name])
}

// BinaryFrom needs the program name on $PATH, provided by Debian package debPkg
// (may be empty when unknown).
func BinaryFrom(name, debPkg string) Need {
	return Need{
		what: "binary " + name,
		check: func() (string, error) {
			if _, err := exec.LookPath(name); err != nil {
				if debPkg != "" {
					return "", fmt.Errorf("program %q not found on $PATH (Debian package %s)", name, debPkg)
				}
				return "", fmt.Errorf("program %q not found on $PATH", name)
			}
			return "", nil
		},
	}
}

// probe says how to detect a kernel feature cheaply. The device, when listed,
// must exist. Then the feature is present if its filesystem is registered or its
// module is loaded (/sys/module also lists most built-in drivers); otherwise every
// config symbol must be built in (=y) or a module (=m) that modprobe loads.
type probe struct {
	configs []string // CONFIG_ symbols
	module  string   // /sys/module/<module>
	fs      string   // name in /proc/filesystems
	dev     string   // device node
}

var probes = map[Feature]probe{
	WireGuard: {configs: []string{"CONFIG_WIREGUARD"}, module: "wireguard"},
	IPVS:      {configs: []string{"CONFIG_IP_VS"}, module: "ip_vs"},
	NFS:       {configs: []string{"CONFIG_NFS_FS", "CONFIG_NFSD"}},
	VXLAN:     {configs: []string{"CONFIG_VXLAN"}, module: "vxlan"},
	Bridge:    {configs: []string{"CONFIG_BRIDGE"}, module: "bridge"},
	Veth:      {configs: []string{"CONFIG_VETH"}, module: "veth"},
	Macvlan:   {configs: []string{"CONFIG_MACVLAN"}, module: "macvlan"},
	TUN:       {configs: []string{"CONFIG_TUN"}, module: "tun", dev: "/dev/net/tun"},
	OverlayFS: {configs: []string{"CONFIG_OVERLAY_FS"}, module: "overlay", fs: "overlay"},
	FUSE:      {configs: []string{"CONFIG_FUSE_FS"}, module: "fuse", fs: "fuse", dev: "/dev/fuse"},
}

// Kernel needs kernel feature f. A feature listed in [MissingKernelFeatures]
// skips the test with the listed reason; any other missing feature fails it.
func Kernel(f Feature) Need {
	return Need{
		what: "kernel " + string(f),
		check: func() (string, error) {
			if reason, ok := MissingKernelFeatures[f]; ok {
				return reason, nil
			}
			p, ok := probes[f]
			if !ok {
				return "", fmt.Errorf("unknown kernel feature %q", f)
			}
			if err := p.present(readKernelConfig); err != nil {
				return "", fmt.Errorf("kernel feature %s: %v", f, err)
			}
			return "", nil
		},
	}
}

func (p probe) present(config func() (map[string]string, error)) error {
	if p.dev != "" {
		if _, err := os.Stat(p.dev); err != nil {
			return fmt.Errorf("no device %s", p.dev)
		}
	}
	if p.fs != "" {
		if data, err := os.ReadFile("/proc/filesystems"); err == nil && hasFilesystem(data, p.fs) {
			return nil
		}
	}
	if p.module != "" && moduleLoaded(p.module) {
		return nil
	}
	cfg, err := config()
	if err != nil {
		// No config to read: a module that is neither loaded nor built in with a
		// sysfs entry may still load on demand; try that before giving up.
		if p.module != "" && modprobe(p.module) {
			return nil
		}
		return fmt.Errorf("module %s not loaded and kernel config unreadable: %v", p.module, err)
	}
	needLoad := false
	for _, sym := range p.configs {
		switch cfg[sym] {
		case "y":
		case "m":
			needLoad = true
		default:
			return fmt.Errorf("%s is not set in this kernel", sym)
		}
	}
	if needLoad && !modprobe(p.module) {
		return fmt.Errorf("module %s is not loaded and modprobe %s failed (Debian package kmod)", p.module, p.module)
	}
	return nil
}

func hasFilesystem(procFilesystems []byte, name string) bool {
	for _, line := range strings.Split(string(procFilesystems), "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && f[len(f)-1] == name {
			return true
		}
	}
	return false
}

func moduleLoaded(name string) bool {
	_, err := os.Stat("/sys/module/" + name)
	return err == nil
}

func modprobe(name string) bool {
	if err := exec.Command("modprobe", "-q", name).Run(); err != nil {
		return false
	}
	return moduleLoaded(name)
}

// readKernelConfig reads /proc/config.gz into symbol -> value ("y", "m", ...).
func readKernelConfig() (map[string]string, error) {
	f, err := os.Open("/proc/config.gz")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return nil, err
	}
	data, err := io.ReadAll(zr)
	if err != nil {
		return nil, err
	}
	return parseKernelConfig(data), nil
}

func parseKernelConfig(data []byte) map[string]string {
	cfg := make(map[string]string)
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := sc.Text()
		if sym, val, ok := strings.Cut(line, "="); ok && strings.HasPrefix(sym, "CONFIG_") {
			cfg[sym] = val
		}
	}
	return cfg
}
