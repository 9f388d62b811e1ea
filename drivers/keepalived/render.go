package keepalived

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/musterkit/muster/ha/driver"
	"github.com/musterkit/muster/internal/confpath"
)

// Files of an instance directory.
const (
	ConfigFile     = "keepalived.conf"
	NotifyFIFO     = "notify.fifo"
	PidFile        = "keepalived.pid"
	VRRPPidFile    = "vrrp.pid"
	CheckerPidFile = "checkers.pid"
	LogFile        = "keepalived.log"
)

// Input is what Render turns into a keepalived.conf.
type Input struct {
	// Config is the group configuration; it must pass Validate.
	Config *driver.Config
	// Prefixes gives each floating address its prefix on the interface
	// (driver.Placement); an address missing from it gets /32.
	Prefixes map[netip.Addr]netip.Prefix
	// Dir is the instance directory (confpath.Plain: nothing in it needs
	// quoting): the notify FIFO lives there.
	Dir string
	// CheckProgram is the BusyBox binary the TCP and process checks run
	// (confpath.Plain rules apply); empty means DefaultBusyBox.
	CheckProgram string
	// ProcessEvents tracks Track.Process with keepalived's
	// vrrp_track_process (the kernel's process events connector, which
	// works only in the initial network namespace) instead of polling
	// with "busybox pidof" every second.
	ProcessEvents bool
}

// Render returns the keepalived.conf of in: one vrrp_instance named after
// the group, VRRPv3 with unicast adverts, starting as BACKUP (so that
// nopreempt works and a restarted server never grabs the addresses before
// it heard the others), the floating addresses on the interface, and the
// tracked process and TCP check. State changes go to the notify FIFO in
// Dir. Render is pure; it validates its input again and returns
// errcode.InvalidArgument without output if anything is off.
func Render(in Input) (string, error) {
	c := in.Config
	if err := c.Validate(); err != nil {
		return "", err
	}
	if err := confpath.Plain("instance directory", in.Dir); err != nil {
		return "", err
	}
	prog := in.CheckProgram
	if prog == "" {
		prog = DefaultBusyBox
	}
	if err := confpath.Plain("check program", prog); err != nil {
		return "", err
	}
	c = c.Normalized()
	var b strings.Builder
	w := func(indent int, format string, args ...any) {
		b.WriteString(strings.Repeat("    ", indent))
		fmt.Fprintf(&b, format, args...)
		b.WriteByte('\n')
	}
	w(0, "# Rendered by muster (drivers/keepalived) for group %s; do not edit.", c.Name)
	w(0, "global_defs {")
	w(1, "router_id %s", c.Name)
	w(1, "script_user root")
	w(1, "enable_script_security")
	w(1, "notify_fifo %s/%s", in.Dir, NotifyFIFO)
	w(1, "vrrp_version 3")
	w(0, "}")
	if c.Track.Process != "" && in.ProcessEvents {
		w(0, "")
		w(0, "vrrp_track_process %s_process {", c.Name)
		w(1, "process %s", c.Track.Process)
		w(1, "weight 0")
		w(1, "quorum 1")
		w(0, "}")
	} else if c.Track.Process != "" {
		w(0, "")
		w(0, "vrrp_script %s_process {", c.Name)
		// BusyBox pidof exits 1 when no process has that name.
		w(1, "script \"%s pidof %s\"", prog, c.Track.Process)
		w(1, "interval 1")
		w(1, "timeout 2")
		w(1, "fall 1")
		w(1, "rise 1")
		w(1, "weight 0")
		w(0, "}")
	}
	if c.Track.TCPPort != 0 {
		w(0, "")
		w(0, "vrrp_script %s_tcp {", c.Name)
		// BusyBox nc connects, runs /bin/true and exits 0; a refused or
		// timed-out connection exits 1. keepalived runs it without a shell.
		w(1, "script \"%s nc -w 1 127.0.0.1 %d -e /bin/true\"", prog, c.Track.TCPPort)
		w(1, "interval 1")
		w(1, "timeout 2")
		w(1, "fall 1")
		w(1, "rise 1")
		w(1, "weight 0")
		w(0, "}")
	}
	w(0, "")
	w(0, "vrrp_instance %s {", c.Name)
	w(1, "state BACKUP")
	w(1, "interface %s", c.Interface)
	w(1, "virtual_router_id %d", c.VirtualRouterID)
	w(1, "priority %d", c.Priority)
	w(1, "advert_int %s", seconds(c.AdvertInterval))
	if c.NoPreempt {
		w(1, "nopreempt")
	} else if c.PreemptDelay > 0 {
		w(1, "preempt_delay %d", int(c.PreemptDelay/time.Second))
	}
	w(1, "unicast_src_ip %s", c.Source)
	w(1, "unicast_peer {")
	for _, p := range c.Peers {
		w(2, "%s", p)
	}
	w(1, "}")
	w(1, "virtual_ipaddress {")
	for _, a := range c.Addresses {
		p, ok := in.Prefixes[a]
		if !ok || p.Addr() != a {
			p = netip.PrefixFrom(a, 32)
		}
		w(2, "%s dev %s", p, c.Interface)
	}
	w(1, "}")
	if c.Track.Process != "" && in.ProcessEvents {
		w(1, "track_process {")
		w(2, "%s_process", c.Name)
		w(1, "}")
	}
	if c.Track.Process != "" && !in.ProcessEvents || c.Track.TCPPort != 0 {
		w(1, "track_script {")
		if c.Track.Process != "" && !in.ProcessEvents {
			w(2, "%s_process", c.Name)
		}
		if c.Track.TCPPort != 0 {
			w(2, "%s_tcp", c.Name)
		}
		w(1, "}")
	}
	w(0, "}")
	return b.String(), nil
}

// seconds writes d as keepalived's advert_int: seconds with up to two
// decimals (VRRPv3 centiseconds).
func seconds(d time.Duration) string {
	cs := int64(d / driver.AdvertResolution)
	s := strconv.FormatInt(cs/100, 10)
	if cs%100 != 0 {
		s += "." + strings.TrimRight(fmt.Sprintf("%02d", cs%100), "0")
	}
	return s
}
