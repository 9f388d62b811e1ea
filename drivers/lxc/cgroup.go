package lxc

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	golxc "github.com/lxc/go-lxc"

	"github.com/musterkit/muster/container/driver"
	"github.com/musterkit/muster/internal/mountinfo"
)

// detectCgroups reads the host's cgroup layout from /proc/self/mountinfo:
// pure v1, pure v2 (unified) or hybrid (v1 controllers plus a v2 mount).
func detectCgroups() (cgroupLayout, error) {
	info, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return cgroupLayout{}, err
	}
	return parseCgroupLayout(info, func(dir string) string {
		b, _ := os.ReadFile(filepath.Join(dir, "cgroup.controllers"))
		return string(b)
	}), nil
}

// parseCgroupLayout decides, for each controller the driver uses, which
// hierarchy manages it: a v1 hierarchy that lists it among its mount
// options, else the v2 hierarchy if its root's cgroup.controllers (read by
// controllers, given the mount point) lists it. On v2 the device
// controller is BPF-based and always present.
func parseCgroupLayout(info []byte, controllers func(mountpoint string) string) cgroupLayout {
	v1 := map[string]bool{}
	var v2 []string
	unified := false
	sc := bufio.NewScanner(bytes.NewReader(info))
	for sc.Scan() {
		// 36 35 98:0 /root /mnt rw,noatime master:1 - cgroup cgroup rw,memory
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if len(pf) < 5 || len(qf) < 3 {
			continue
		}
		switch qf[0] {
		case "cgroup":
			for _, opt := range strings.Split(qf[2], ",") {
				v1[opt] = true
			}
		case "cgroup2":
			if !unified {
				unified = true
				v2 = strings.Fields(controllers(mountinfo.Unescape(pf[4])))
			}
		}
	}
	version := func(name string) int {
		switch {
		case v1[name]:
			return cgroupV1
		case unified && (slices.Contains(v2, name) || name == "devices"):
			return cgroupV2
		}
		return cgroupNone
	}
	l := cgroupLayout{
		Memory:  version("memory"),
		CPU:     version("cpu"),
		CPUAcct: version("cpuacct"),
		Pids:    version("pids"),
		Devices: version("devices"),
	}
	if l.CPUAcct == cgroupNone && unified {
		l.CPUAcct = cgroupV2 // cpu.stat exists in every v2 cgroup
	}
	return l
}

// usage reads a running container's resource use through LXC, which knows
// its cgroup on either hierarchy. Values LXC cannot read stay zero.
func usage(c *golxc.Container, cg cgroupLayout) driver.Usage {
	item := func(key string) string { return strings.Join(c.CgroupItem(key), "\n") }
	num := func(key string) int64 {
		n, _ := strconv.ParseInt(strings.TrimSpace(item(key)), 10, 64)
		return n
	}
	var u driver.Usage
	switch cg.CPUAcct {
	case cgroupV1:
		u.CPU = time.Duration(num("cpuacct.usage"))
	case cgroupV2:
		for _, line := range strings.Split(item("cpu.stat"), "\n") {
			if v, ok := strings.CutPrefix(line, "usage_usec "); ok {
				us, _ := strconv.ParseInt(v, 10, 64)
				u.CPU = time.Duration(us) * time.Microsecond
			}
		}
	}
	switch cg.Memory {
	case cgroupV1:
		u.MemoryBytes = num("memory.usage_in_bytes")
	case cgroupV2:
		u.MemoryBytes = num("memory.current")
	}
	if cg.Pids != cgroupNone {
		u.Pids = num("pids.current")
	}
	return u
}
