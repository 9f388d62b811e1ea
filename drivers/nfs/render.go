package nfs

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/internal/confpath"
	"github.com/musterkit/muster/names"
	"github.com/musterkit/muster/storage/driver"
)

// Files and directories of an instance directory.
const (
	ConfigFile  = "ganesha.conf"
	PidFile     = "ganesha.pid"
	LogFile     = "ganesha.log"
	RecordFile  = "record.json"
	ExportsDir  = "exports"  // one directory per volume: the exported data
	RecoveryDir = "recovery" // ganesha's NFSv4 client records (RecoveryRoot)
	MountsDir   = "mounts"   // where this server mounts volumes (kernel client)
	CheckDir    = "check"    // the log and pid file of the check before a swap
)

// DefaultPort is the NFS port ganesha listens on unless Options.Port says.
const DefaultPort = 2049

// Export is one volume as ganesha exports it.
type Export struct {
	Volume string
	// ID is ganesha's Export_Id, 1 to 65535, stable for the volume's
	// life: clients' file handles carry it.
	ID uint16
	// Rules are the volume's export rules (driver.Export); none means
	// read-write for every client.
	Rules []driver.Export
}

// Input is what Render turns into a ganesha.conf.
type Input struct {
	// Pool names the pseudo-file-system directory the exports live under
	// (/<pool>/<volume>).
	Pool string
	// Dir is the instance directory (confpath.Plain): exports are
	// Dir/exports/<volume>, client records Dir/recovery.
	Dir     string
	Port    uint16
	Exports []Export
}

// Render returns the ganesha.conf of in: NFSv4 and NFSv3 on TCP Port (v3
// mounts take the pseudo path too), no NLM or RQUOTA, graceless (a restarted ganesha serves at once: the pool's
// clients are few and reconnect), client records under Dir, and one EXPORT
// per volume (FSAL VFS on Dir/exports/<volume>, Pseudo /<pool>/<volume>,
// AUTH_SYS, no root squash: the pool's servers are trusted) whose
// Access_Type is None and whose CLIENT blocks, in the rules' order, give
// each rule's prefixes RW or RO (one block for every client, RW, when there
// are no rules). Every value is a validated name, number, prefix or Plain
// path, so none can end a string or a statement; Render validates its
// input again and returns errcode.InvalidArgument without output if
// anything is off.
func Render(in Input) ([]byte, error) {
	if err := names.Label(in.Pool); err != nil {
		return nil, errcode.New(errcode.InvalidArgument, "pool name: %v", err)
	}
	if err := confpath.Plain("instance directory", in.Dir); err != nil {
		return nil, err
	}
	if in.Port == 0 {
		return nil, errcode.New(errcode.InvalidArgument, "port 0")
	}
	if len(in.Exports) > driver.MaxVolumes {
		return nil, errcode.New(errcode.InvalidArgument, "%d exports; the limit is %d", len(in.Exports), driver.MaxVolumes)
	}
	ids, vols := map[uint16]bool{}, map[string]bool{}
	for _, e := range in.Exports {
		if err := names.Label(e.Volume); err != nil {
			return nil, errcode.New(errcode.InvalidArgument, "volume name: %v", err)
		}
		if e.ID == 0 || ids[e.ID] || vols[e.Volume] {
			return nil, errcode.New(errcode.InvalidArgument, "volume %q: export id %d is 0 or the volume or id is listed twice", e.Volume, e.ID)
		}
		ids[e.ID], vols[e.Volume] = true, true
		if len(e.Rules) > driver.MaxExports {
			return nil, errcode.New(errcode.InvalidArgument, "volume %q: %d export rules; the limit is %d", e.Volume, len(e.Rules), driver.MaxExports)
		}
		for i, r := range e.Rules {
			if err := r.Validate(); err != nil {
				return nil, errcode.New(errcode.InvalidArgument, "volume %q: export rule %d: %v", e.Volume, i+1, err)
			}
		}
	}
	var b strings.Builder
	w := func(indent int, format string, args ...any) {
		b.WriteString(strings.Repeat("    ", indent))
		fmt.Fprintf(&b, format, args...)
		b.WriteByte('\n')
	}
	w(0, "# Rendered by muster (drivers/nfs) for pool %s; do not edit.", in.Pool)
	w(0, "NFS_CORE_PARAM {")
	w(1, "Protocols = 3, 4;")
	w(1, "mount_path_pseudo = true;")
	w(1, "NFS_Port = %d;", in.Port)
	w(1, "Enable_NLM = false;")
	w(1, "Enable_RQUOTA = false;")
	w(1, "Enable_UDP = false;")
	w(0, "}")
	w(0, "NFSv4 {")
	w(1, "Graceless = true;")
	w(1, "Only_Numeric_Owners = true;")
	w(1, "RecoveryBackend = fs;")
	w(1, "RecoveryRoot = %q;", filepath.Join(in.Dir, RecoveryDir))
	w(0, "}")
	exports := slices.Clone(in.Exports)
	slices.SortFunc(exports, func(a, b Export) int { return int(a.ID) - int(b.ID) })
	for _, e := range exports {
		w(0, "EXPORT {")
		w(1, "Export_Id = %d;", e.ID)
		w(1, "Path = %q;", filepath.Join(in.Dir, ExportsDir, e.Volume))
		w(1, "Pseudo = %q;", "/"+in.Pool+"/"+e.Volume)
		w(1, "Protocols = 3, 4;")
		w(1, "Transports = TCP;")
		w(1, "SecType = sys;")
		w(1, "Squash = No_Root_Squash;")
		w(1, "Access_Type = None;")
		w(1, "FSAL {")
		w(2, "Name = VFS;")
		w(1, "}")
		rules := e.Rules
		if len(rules) == 0 {
			w(1, "CLIENT {")
			w(2, "Clients = *;")
			w(2, "Access_Type = RW;")
			w(1, "}")
		}
		for _, r := range rules {
			w(1, "CLIENT {")
			w(2, "Clients = %s;", clients(r.Clients))
			w(2, "Access_Type = %s;", map[driver.Access]string{driver.ReadWrite: "RW", driver.ReadOnly: "RO"}[r.Access])
			w(1, "}")
		}
		w(0, "}")
	}
	return []byte(b.String()), nil
}

// clients writes prefixes as ganesha's client list: addresses for single
// hosts, CIDR networks otherwise, and a /0 as its two halves (ganesha
// takes no /0 network).
func clients(ps []netip.Prefix) string {
	var out []string
	for _, p := range ps {
		switch {
		case p.Bits() == 0 && p.Addr().Is4():
			out = append(out, "0.0.0.0/1", "128.0.0.0/1")
		case p.Bits() == 0:
			out = append(out, "::/1", "8000::/1")
		case p.IsSingleIP():
			out = append(out, p.Addr().String())
		default:
			out = append(out, p.String())
		}
	}
	return strings.Join(out, ", ")
}
