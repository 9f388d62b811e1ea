// Package mountinfo reads /proc/self/mountinfo: the mounts of the calling
// process's mount namespace.
package mountinfo

import (
	"bufio"
	"os"
	"slices"
	"strconv"
	"strings"
)

// Mount is one line of mountinfo.
type Mount struct {
	Target   string // where it is mounted
	FSType   string // "fuse.glusterfs", "tmpfs", ...
	Source   string
	ReadOnly bool // mounted read-only
}

// Read returns the mounts of this process's mount namespace, in
// mountinfo's order (parents before children).
func Read() ([]Mount, error) { return ReadFile("/proc/self/mountinfo") }

// ReadFile reads a mountinfo file: /proc/PID/mountinfo for the mount
// namespace of process PID.
func ReadFile(file string) ([]Mount, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Mount
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT TARGET OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER-OPTIONS
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 6 || len(g) < 2 {
			continue
		}
		ro := slices.Contains(strings.Split(f[5], ","), "ro")
		out = append(out, Mount{Target: Unescape(f[4]), FSType: g[0], Source: Unescape(g[1]), ReadOnly: ro})
	}
	return out, sc.Err()
}

// At returns the mount that shows at target in the mount namespace file
// describes (the last one mounted there), if any.
func At(file, target string) (Mount, bool) {
	mounts, err := ReadFile(file)
	if err != nil {
		return Mount{}, false
	}
	for i := len(mounts) - 1; i >= 0; i-- {
		if mounts[i].Target == target {
			return mounts[i], true
		}
	}
	return Mount{}, false
}

// Under returns the targets of the mounts at or under dir, deepest first.
func Under(dir string) ([]string, error) {
	mounts, err := Read()
	if err != nil {
		return nil, err
	}
	var out []string
	prefix := strings.TrimSuffix(dir, "/") + "/"
	for i := len(mounts) - 1; i >= 0; i-- {
		if t := mounts[i].Target; t == dir || strings.HasPrefix(t, prefix) {
			out = append(out, t)
		}
	}
	return out, nil
}

// Unescape undoes mountinfo's octal escapes (\040 for a space).
func Unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
