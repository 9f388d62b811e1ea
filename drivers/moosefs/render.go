package moosefs

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/internal/confpath"
	"github.com/musterkit/muster/storage/driver"
)

// Files and directories of an instance directory. The master's live under
// MasterDir, the chunk server's under ChunkServerDir; each daemon's lock
// file is in its own DATA_PATH, so that several instances on one machine
// never share one.
const (
	MasterDir         = "master"
	MasterConfig      = "mfsmaster.cfg"
	ExportsConfig     = "mfsexports.cfg"
	TopologyConfig    = "mfstopology.cfg"
	ChunkServerDir    = "chunkserver"
	ChunkServerConfig = "mfschunkserver.cfg"
	HDDConfig         = "mfshdd.cfg"
	DataDir           = "data"   // DATA_PATH of either daemon
	ChunksDir         = "chunks" // the chunk server's one disk
	MountsDir         = "mounts" // MountsDir/<volume> is a volume's mount
	AdminMount        = "admin"  // the coordinator's mount of the whole namespace
)

// Ports are the TCP ports of a pool's daemons; zero values mean MooseFS's
// defaults.
type Ports struct {
	Metalogger  uint16 // the master's port for metaloggers (9419)
	ChunkServer uint16 // the master's port for chunk servers (9420)
	Client      uint16 // the master's port for clients and tools (9421)
	Data        uint16 // the chunk servers' port for clients (9422)
}

func (p Ports) withDefaults() Ports {
	set := func(v *uint16, def uint16) {
		if *v == 0 {
			*v = def
		}
	}
	set(&p.Metalogger, 9419)
	set(&p.ChunkServer, 9420)
	set(&p.Client, 9421)
	set(&p.Data, 9422)
	return p
}

// Input is what Render turns into configuration files.
type Input struct {
	// Config is this server's part in the pool; it must pass Validate, and
	// every address in it be IPv4 (MooseFS 3 speaks no IPv6).
	Config *driver.Config
	// Dir is the instance directory (confpath.Plain): every path the
	// files name is inside it.
	Dir   string
	Ports Ports
	// LeaveSpace is the chunk server's HDD_LEAVE_SPACE_DEFAULT in bytes:
	// space on its disk it never fills. 0 means DefaultLeaveSpace.
	LeaveSpace int64
}

// DefaultLeaveSpace is the space a chunk server leaves free on its disk
// unless Options say otherwise: small, for test machines (MooseFS's own
// default is 256 MiB).
const DefaultLeaveSpace = 16 << 20

// Rendered are the files of one server's part; a file its role does not
// need is nil (the master's on members other than the coordinator, the
// chunk server's on clients).
type Rendered struct {
	Master, Exports, Topology []byte // relative to MasterDir
	ChunkServer, HDD          []byte // relative to ChunkServerDir
}

// Render returns the configuration files of in: on the coordinator, the
// master's (mfsmaster.cfg, an mfsexports.cfg with a line per volume and
// client range, an empty mfstopology.cfg), and on every member a chunk
// server's (mfschunkserver.cfg, mfshdd.cfg with its one chunk directory).
// Both daemons run as root, keep their lock and data files under Dir, and
// reconnect within a second. Render is pure; it validates its input again
// and returns errcode.InvalidArgument without output if anything is off.
//
// Export rules match a client by its first matching rule; mfsmaster
// prefers a read-write line to a read-only one among those that match, so
// Render writes each volume's rules as disjoint address ranges, each with
// the access of the first rule holding it. IPv6 prefixes match no MooseFS
// client and are left out. The coordinator mounts the whole namespace
// from 127.0.0.1 (admin, to set quotas), which no other server can be.
func Render(in Input) (*Rendered, error) {
	c := in.Config
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if err := checkIPv4(c); err != nil {
		return nil, err
	}
	if err := confpath.Plain("instance directory", in.Dir); err != nil {
		return nil, err
	}
	if in.LeaveSpace < 0 {
		return nil, errcode.New(errcode.InvalidArgument, "leave space %d is negative", in.LeaveSpace)
	}
	leave := in.LeaveSpace
	if leave == 0 {
		leave = DefaultLeaveSpace
	}
	p := in.Ports.withDefaults()
	coord := c.Pool.Coordinator()
	out := &Rendered{}
	header := fmt.Sprintf("# Rendered by muster (drivers/moosefs) for pool %s, server %s; do not edit.\n", c.Pool.Name, c.Self)
	if coord.Server == c.Self {
		md := filepath.Join(in.Dir, MasterDir)
		var b strings.Builder
		b.WriteString(header)
		kv(&b, "WORKING_USER", "root")
		kv(&b, "WORKING_GROUP", "root")
		kv(&b, "DATA_PATH", filepath.Join(md, DataDir))
		kv(&b, "EXPORTS_FILENAME", filepath.Join(md, ExportsConfig))
		kv(&b, "TOPOLOGY_FILENAME", filepath.Join(md, TopologyConfig))
		kv(&b, "MATOML_LISTEN_HOST", "*")
		kv(&b, "MATOML_LISTEN_PORT", p.Metalogger)
		kv(&b, "MATOCS_LISTEN_HOST", "*")
		kv(&b, "MATOCS_LISTEN_PORT", p.ChunkServer)
		kv(&b, "MATOCL_LISTEN_HOST", "*")
		kv(&b, "MATOCL_LISTEN_PORT", p.Client)
		// Replicate at once, not a minute after the start.
		kv(&b, "REPLICATIONS_DELAY_INIT", 0)
		out.Master = []byte(b.String())

		b.Reset()
		b.WriteString(header)
		b.WriteString("127.0.0.1 / rw,admin,maproot=0:0\n")
		for _, v := range c.Volumes {
			for _, r := range exportRanges(v.Exports) {
				fmt.Fprintf(&b, "%s /%s %s,maproot=0:0\n", r.clients(), v.Name, r.access)
			}
		}
		out.Exports = []byte(b.String())
		out.Topology = []byte(header)
	}
	if self, ok := c.Pool.Member(c.Self); ok {
		cd := filepath.Join(in.Dir, ChunkServerDir)
		var b strings.Builder
		b.WriteString(header)
		kv(&b, "WORKING_USER", "root")
		kv(&b, "WORKING_GROUP", "root")
		kv(&b, "DATA_PATH", filepath.Join(cd, DataDir))
		kv(&b, "HDD_CONF_FILENAME", filepath.Join(cd, HDDConfig))
		kv(&b, "HDD_LEAVE_SPACE_DEFAULT", leave)
		kv(&b, "BIND_HOST", self.Addr)
		kv(&b, "MASTER_HOST", coord.Addr)
		kv(&b, "MASTER_PORT", p.ChunkServer)
		kv(&b, "MASTER_RECONNECTION_DELAY", 1)
		kv(&b, "CSSERV_LISTEN_HOST", self.Addr)
		kv(&b, "CSSERV_LISTEN_PORT", p.Data)
		out.ChunkServer = []byte(b.String())
		out.HDD = []byte(header + filepath.Join(cd, ChunksDir) + "\n")
	}
	return out, nil
}

func kv(b *strings.Builder, key string, value any) { fmt.Fprintf(b, "%s = %v\n", key, value) }

// checkIPv4 refuses addresses MooseFS 3 cannot use:
// errcode.Unimplemented.
func checkIPv4(c *driver.Config) error {
	for _, m := range c.Pool.Members {
		if !m.Addr.Is4() {
			return errcode.New(errcode.Unimplemented, "pool %q: member %q: address %s is not IPv4; MooseFS 3 speaks IPv4 only", c.Pool.Name, m.Server, m.Addr)
		}
	}
	return nil
}

// addrRange is an inclusive range of IPv4 addresses with one access.
type addrRange struct {
	from, to uint32
	access   driver.Access
}

func (r addrRange) clients() string {
	if r.from == 0 && r.to == ^uint32(0) {
		return "*"
	}
	return ip4(r.from).String() + "-" + ip4(r.to).String()
}

func ip4(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

// exportRanges returns the IPv4 address space as exports give it out:
// disjoint ranges in address order, each with the access of the first
// rule that holds it (driver.Allows), adjacent ranges of equal access
// merged, and addresses no rule holds left out. No rules is all
// addresses read-write.
func exportRanges(exports []driver.Export) []addrRange {
	if len(exports) == 0 {
		return []addrRange{{0, ^uint32(0), driver.ReadWrite}}
	}
	var bounds []uint64
	for _, e := range exports {
		for _, p := range e.Clients {
			if !p.Addr().Is4() {
				continue
			}
			from := u32(p.Masked().Addr())
			to := from | uint32(uint64(1)<<(32-p.Bits())-1)
			bounds = append(bounds, uint64(from), uint64(to)+1)
		}
	}
	slices.Sort(bounds)
	bounds = slices.Compact(bounds)
	var out []addrRange
	for i := 0; i+1 < len(bounds); i++ {
		from, to := uint32(bounds[i]), uint32(bounds[i+1]-1)
		acc := driver.Allows(exports, ip4(from))
		if acc == "" {
			continue
		}
		if n := len(out); n > 0 && out[n-1].access == acc && out[n-1].to+1 == from {
			out[n-1].to = to
			continue
		}
		out = append(out, addrRange{from, to, acc})
	}
	return out
}
