package lxc

import (
	"errors"
	"net/netip"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/musterkit/muster/container/driver"
	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/internal/golden"
)

var (
	hybrid = cgroupLayout{Memory: cgroupV1, CPU: cgroupV1, CPUAcct: cgroupV1, Pids: cgroupV1, Devices: cgroupV1}
	v2     = cgroupLayout{Memory: cgroupV2, CPU: cgroupV2, CPUAcct: cgroupV2, Pids: cgroupV2, Devices: cgroupV2}
)

func fullSpec() *driver.Spec {
	return &driver.Spec{
		Name:      "web",
		Image:     "base",
		Limits:    driver.Limits{MemoryBytes: 64 << 20, MilliCPU: 500, Pids: 100},
		Mounts:    []driver.Mount{{Source: "/srv/data", Target: "/data"}, {Source: "/etc/ssl", Target: "/etc/ssl", ReadOnly: true}},
		Autostart: true,
		Networks: []driver.Network{
			{Bridge: "br0", Address: netip.MustParsePrefix("198.18.0.10/24"), Gateway: netip.MustParseAddr("198.18.0.1"), MTU: 1450},
			{Bridge: "br1", Interface: "back", Address: netip.MustParsePrefix("fd00::10/64"), Gateway: netip.MustParseAddr("fd00::1")},
			{Bridge: "br2"},
		},
	}
}

func TestRenderConfigGolden(t *testing.T) {
	for _, tc := range []struct {
		file string
		spec *driver.Spec
		cg   cgroupLayout
	}{
		{"full-cgroup1.conf", fullSpec(), hybrid},
		{"full-cgroup2.conf", fullSpec(), v2},
		{"minimal.conf", &driver.Spec{Name: "min", Image: "base"}, v2},
	} {
		t.Run(tc.file, func(t *testing.T) {
			got, err := renderConfig(tc.spec, configEnv{LXCPath: "/var/lib/muster/containers", Cgroups: tc.cg})
			if err != nil {
				t.Fatal(err)
			}
			golden.Check(t, filepath.Join("testdata", tc.file), got)
		})
	}
}

func TestRenderConfigRejects(t *testing.T) {
	env := configEnv{LXCPath: "/var/lib/muster/containers", Cgroups: hybrid}
	for _, tc := range []struct {
		name   string
		mutate func(*driver.Spec)
		env    *configEnv
		code   errcode.Code
	}{
		{"name with newline", func(s *driver.Spec) { s.Name = "a\nlxc.init.cmd = /x" }, nil, errcode.InvalidArgument},
		{"name with dots", func(s *driver.Spec) { s.Name = "../x" }, nil, errcode.InvalidArgument},
		{"negative limit", func(s *driver.Spec) { s.Limits.Pids = -1 }, nil, errcode.InvalidArgument},
		{"relative source", func(s *driver.Spec) { s.Mounts[0].Source = "srv" }, nil, errcode.InvalidArgument},
		{"source with newline", func(s *driver.Spec) { s.Mounts[0].Source = "/srv\nlxc.hook.pre-start = /x" }, nil, errcode.InvalidArgument},
		{"source with space", func(s *driver.Spec) { s.Mounts[0].Source = "/srv x" }, nil, errcode.InvalidArgument},
		{"target escaping", func(s *driver.Spec) { s.Mounts[0].Target = "/data/../../etc" }, nil, errcode.InvalidArgument},
		{"target root", func(s *driver.Spec) { s.Mounts[0].Target = "/" }, nil, errcode.InvalidArgument},
		{"target with comma", func(s *driver.Spec) { s.Mounts[0].Target = "/a,b" }, nil, errcode.InvalidArgument},
		{"bridge with newline", func(s *driver.Spec) { s.Networks[0].Bridge = "br\nx" }, nil, errcode.InvalidArgument},
		{"bridge too long", func(s *driver.Spec) { s.Networks[0].Bridge = "waytoolongbridgename" }, nil, errcode.InvalidArgument},
		{"interface with space", func(s *driver.Spec) { s.Networks[0].Interface = "eth 0" }, nil, errcode.InvalidArgument},
		{"tiny mtu", func(s *driver.Spec) { s.Networks[0].MTU = 10 }, nil, errcode.InvalidArgument},
		{"gateway without address", func(s *driver.Spec) { s.Networks[2].Gateway = netip.MustParseAddr("10.0.0.1") }, nil, errcode.InvalidArgument},
		{"gateway of another family", func(s *driver.Spec) { s.Networks[0].Gateway = netip.MustParseAddr("fd00::1") }, nil, errcode.InvalidArgument},
		{"gateway outside", func(s *driver.Spec) { s.Networks[0].Gateway = netip.MustParseAddr("10.0.0.1") }, nil, errcode.InvalidArgument},
		{"zoned address", func(s *driver.Spec) {
			s.Networks[1].Address = netip.PrefixFrom(netip.MustParseAddr("fe80::1%eth0"), 64)
		}, nil, errcode.InvalidArgument},
		{"too many networks", func(s *driver.Spec) { s.Networks = make([]driver.Network, maxNetworks+1) }, nil, errcode.InvalidArgument},
		{"lxcpath with newline", nil, &configEnv{LXCPath: "/var/lib\n/x", Cgroups: hybrid}, errcode.InvalidArgument},
		{"no pids controller", nil, &configEnv{LXCPath: "/x", Cgroups: cgroupLayout{Memory: cgroupV1, CPU: cgroupV1}}, errcode.Unimplemented},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := fullSpec()
			if tc.mutate != nil {
				tc.mutate(spec)
			}
			e := env
			if tc.env != nil {
				e = *tc.env
			}
			_, err := renderConfig(spec, e)
			if !errors.Is(err, tc.code) {
				t.Fatalf("renderConfig: %v, want code %v", err, tc.code)
			}
		})
	}
}

// configLine is the shape of every line renderConfig writes.
var configLine = regexp.MustCompile(`^(#[^\n]*|lxc\.[a-z0-9_.]+ = [^\n\r\x00]+)$`)

// FuzzRenderConfig checks that whatever strings a spec holds, a rendered
// configuration has only the keys renderConfig means to write, one per line,
// and exactly one init, rootfs and name.
func FuzzRenderConfig(f *testing.F) {
	f.Add("web", "/srv/data", "/data", "br0", "eth0", "198.18.0.10/24", "198.18.0.1", 1500, int64(64<<20))
	f.Add("a\nlxc.init.cmd = /bin/evil", "/x\nlxc.x = y", "/y", "br0\n", "e", "", "", 0, int64(0))
	f.Add("x", "/a b", "/a=b", "br#0", "eth 0", "fd00::1/64", "fd00::2", 9000, int64(-1))
	allowed := regexp.MustCompile(`^lxc\.(uts\.name|rootfs\.path|init\.cmd|signal\.halt|mount\.auto|mount\.entry|autodev|tty\.max|pty\.max|console\.path|apparmor\.profile|cap\.drop|log\.file|log\.level|start\.auto|cgroup2?\.(memory\.limit_in_bytes|memory\.max|cpu\.cfs_period_us|cpu\.cfs_quota_us|cpu\.max|pids\.max|devices\.allow|devices\.deny)|net\.[0-9]+\.(type|link|name|flags|veth\.pair|mtu|ipv4\.address|ipv4\.gateway|ipv6\.address|ipv6\.gateway))$`)
	f.Fuzz(func(t *testing.T, name, src, dst, bridge, iface, addr, gw string, mtu int, mem int64) {
		spec := &driver.Spec{Name: name, Image: "base", Limits: driver.Limits{MemoryBytes: mem},
			Mounts: []driver.Mount{{Source: src, Target: dst}}}
		n := driver.Network{Bridge: bridge, Interface: iface, MTU: mtu}
		n.Address, _ = netip.ParsePrefix(addr)
		n.Gateway, _ = netip.ParseAddr(gw)
		spec.Networks = []driver.Network{n}
		for _, cg := range []cgroupLayout{hybrid, v2} {
			conf, err := renderConfig(spec, configEnv{LXCPath: "/var/lib/muster/containers", Cgroups: cg})
			if err != nil {
				continue
			}
			counts := map[string]int{}
			for _, line := range strings.Split(strings.TrimSuffix(string(conf), "\n"), "\n") {
				if !configLine.MatchString(line) {
					t.Fatalf("malformed line %q in\n%s", line, conf)
				}
				if strings.HasPrefix(line, "#") {
					continue
				}
				key, value, _ := strings.Cut(line, " = ")
				if !allowed.MatchString(key) {
					t.Fatalf("unexpected key %q in\n%s", key, conf)
				}
				counts[key]++
				if key == "lxc.mount.entry" && len(strings.Fields(value)) != 6 {
					t.Fatalf("mount entry %q does not have 6 fields", value)
				}
				if strings.HasPrefix(key, "lxc.net.") && !strings.HasPrefix(key, "lxc.net.0.") {
					t.Fatalf("key %q for a network the spec lacks", key)
				}
			}
			for _, key := range []string{"lxc.init.cmd", "lxc.rootfs.path", "lxc.uts.name", "lxc.mount.entry", "lxc.net.0.veth.pair"} {
				if counts[key] != 1 {
					t.Fatalf("%s appears %d times in\n%s", key, counts[key], conf)
				}
			}
		}
	})
}

func TestParseCgroupLayout(t *testing.T) {
	hybridInfo := `25 1 0:22 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
26 25 0:23 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
27 25 0:24 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
28 25 0:25 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
29 25 0:26 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
30 25 0:27 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
31 25 0:28 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`
	unifiedInfo := `25 1 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
`
	v1Combined := `26 25 0:23 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
28 25 0:25 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
`
	for _, tc := range []struct {
		name, mountinfo, controllers string
		want                         cgroupLayout
	}{
		{"hybrid", hybridInfo, "hugetlb", hybrid},
		{"unified", unifiedInfo, "cpuset cpu io memory pids", v2},
		{"unified without pids", unifiedInfo, "cpu memory", cgroupLayout{Memory: cgroupV2, CPU: cgroupV2, CPUAcct: cgroupV2, Devices: cgroupV2}},
		{"v1 only", v1Combined, "", cgroupLayout{Memory: cgroupV1, CPU: cgroupV1, CPUAcct: cgroupV1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var asked string
			got := parseCgroupLayout([]byte(tc.mountinfo), func(dir string) string { asked = dir; return tc.controllers })
			if got != tc.want {
				t.Errorf("layout = %+v, want %+v", got, tc.want)
			}
			if strings.Contains(tc.mountinfo, "cgroup2") && !strings.HasPrefix(asked, "/sys/fs/cgroup") {
				t.Errorf("read controllers of %q", asked)
			}
		})
	}
}
