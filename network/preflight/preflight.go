// Package preflight checks, before a network is built, that the servers'
// underlay can carry it: for every ordered pair of servers whether the
// underlay reaches, the round-trip time, the path MTU (the largest IP packet
// that crosses, found with don't-fragment probes, so that black holes that
// drop big packets silently are found too), and whether the UDP or TCP
// port the mode needs reaches a listener on the other side. Package network
// adds overlapping subnets (Fabric.Preflight) and returns it all as a
// typed Report.
//
// Every server runs a Server: Local in its own namespace, or the agent's
// remote one (agent.Client.Preflight). Run asks each server to Respond on
// its underlay address (a UDP echo on a free port, plus a UDP echo or TCP
// listener on each port the mode needs, where free), has every server
// Probe every other, and stops the responders. Probes go only to the
// servers' underlay addresses.
package preflight

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/names"
	"github.com/musterkit/muster/network/driver"
)

// Proto is a transport protocol.
type Proto string

const (
	UDP Proto = "udp"
	TCP Proto = "tcp"
)

// Port is a transport port a mode needs.
type Port struct {
	Proto  Proto  `json:"proto"`
	Number uint16 `json:"number"`
}

func (p Port) String() string { return fmt.Sprintf("%s/%d", p.Proto, p.Number) }

// PortsOf returns the ports a network of mode needs open between servers:
// port, or the mode's default (driver.DefaultPort) when it is zero.
func PortsOf(mode driver.Mode, port uint16) []Port {
	if port == 0 {
		port = driver.DefaultPort(mode)
	}
	proto := UDP
	if mode == driver.BGP {
		proto = TCP
	}
	return []Port{{Proto: proto, Number: port}}
}

// Server runs one server's side of the checks.
type Server interface {
	// Respond opens responders on req.Addr: a UDP echo on a free port
	// (Responder.ProbePort) and, for each of req.Ports that no other
	// socket holds, a UDP echo or a TCP listener; ports held by others
	// are listed in Responder.InUse. They stay open for req.TTL (at most
	// five minutes) or until StopResponding. An address no link holds is
	// errcode.FailedPrecondition.
	Respond(ctx context.Context, req *RespondRequest) (*Responder, error)
	// StopResponding closes the responders of id; errcode.NotFound if
	// none are open.
	StopResponding(ctx context.Context, id string) error
	// Probe measures the path from req.From, an address of this server,
	// to a responder at req.To.
	Probe(ctx context.Context, req *ProbeRequest) (*ProbeResult, error)
}

// RespondRequest asks a server to answer probes.
type RespondRequest struct {
	Addr  netip.Addr    `json:"addr"`
	Ports []Port        `json:"ports,omitempty"`
	TTL   time.Duration `json:"ttl,omitempty"`
}

// Responder is what Respond opened.
type Responder struct {
	ID        string `json:"id"`
	ProbePort uint16 `json:"probePort"`
	InUse     []Port `json:"inUse,omitempty"`
}

// ProbeRequest asks a server to probe another's responder.
type ProbeRequest struct {
	From      netip.Addr `json:"from"`
	To        netip.Addr `json:"to"`
	ProbePort uint16     `json:"probePort"`
	// Ports are the responder's ports to try (those not in use).
	Ports []Port `json:"ports,omitempty"`
}

// ProbeResult is what one server saw of another.
type ProbeResult struct {
	Reachable bool          `json:"reachable"`
	RTT       time.Duration `json:"rtt,omitempty"`
	// PathMTU is the largest IP packet that crossed, at most the MTU of
	// the source's link.
	PathMTU int          `json:"pathMTU,omitempty"`
	Ports   []PortResult `json:"ports,omitempty"`
}

// PortResult says whether a port reached its responder.
type PortResult struct {
	Port
	Reachable bool `json:"reachable"`
}

func validPorts(ports []Port) error {
	for _, p := range ports {
		if (p.Proto != UDP && p.Proto != TCP) || p.Number == 0 {
			return errcode.New(errcode.InvalidArgument, "preflight: bad port %s", p)
		}
	}
	return nil
}

func validAddr(what string, a netip.Addr) error {
	if !a.IsValid() || a.IsUnspecified() || a.IsMulticast() || a.Zone() != "" {
		return errcode.New(errcode.InvalidArgument, "preflight: bad %s address %v", what, a)
	}
	return nil
}

func (r *RespondRequest) validate() error {
	if r == nil {
		return errcode.New(errcode.InvalidArgument, "preflight: nil request")
	}
	if err := validAddr("responder", r.Addr); err != nil {
		return err
	}
	return validPorts(r.Ports)
}

func (r *ProbeRequest) validate() error {
	if r == nil {
		return errcode.New(errcode.InvalidArgument, "preflight: nil request")
	}
	if err := validAddr("source", r.From); err != nil {
		return err
	}
	if err := validAddr("target", r.To); err != nil {
		return err
	}
	if r.From.Is4() != r.To.Is4() || r.ProbePort == 0 {
		return errcode.New(errcode.InvalidArgument, "preflight: probe %s -> %s port %d: families differ or no port", r.From, r.To, r.ProbePort)
	}
	return validPorts(r.Ports)
}

// Target is one server to check.
type Target struct {
	Name     string
	Underlay netip.Addr
	Server   Server
}

// Plan is what the network to check needs.
type Plan struct {
	Mode driver.Mode
	// Port is the network's port; zero means the mode's default.
	Port uint16
	// MTU is the network's MTU; zero means derived from the underlay, in
	// which case the report says the largest MTU every path carries.
	MTU int
}

// Report is the outcome of a preflight.
type Report struct {
	Mode  driver.Mode `json:"mode"`
	Ports []Port      `json:"ports"`
	// Overhead is what the mode adds to each packet; NeedMTU is the path
	// MTU the network needs (its MTU, or the smallest one, 576, plus the
	// overhead).
	Overhead int `json:"overhead"`
	NeedMTU  int `json:"needMTU"`
	// MTU is the largest network MTU every path carries (the smallest
	// path MTU less the overhead); 0 if a path was not measured.
	MTU      int            `json:"mtu"`
	Servers  []ServerReport `json:"servers"`
	Pairs    []PairReport   `json:"pairs"`
	Overlaps []Overlap      `json:"overlaps,omitempty"`
}

// ServerReport is one server's own findings.
type ServerReport struct {
	Name     string     `json:"name"`
	Underlay netip.Addr `json:"underlay"`
	// InUse are needed ports another socket holds on the server: a
	// conflict, unless it is a network of the same mode that shares the
	// port (VXLAN devices share theirs; a network being re-checked holds
	// its own).
	InUse []Port `json:"inUse,omitempty"`
	// Error is why the server could not respond, if it could not.
	Error string `json:"error,omitempty"`
}

// PairReport is what one server saw of another.
type PairReport struct {
	From string `json:"from"`
	To   string `json:"to"`
	ProbeResult
	Error string `json:"error,omitempty"`
}

// Overlap is a clash of the network's subnet with something in place.
type Overlap struct {
	Subnet netip.Prefix `json:"subnet"`
	// With names what it overlaps: "network <id> <subnet>" or
	// "underlay of server <name> <address>".
	With string `json:"with"`
}

// Problems lists what stands in the network's way, one sentence each:
// servers that could not respond, pairs that do not reach each other or
// whose needed port does not, paths narrower than NeedMTU, overlaps. Ports
// in use are not counted (see ServerReport.InUse).
func (r *Report) Problems() []string {
	var out []string
	for _, s := range r.Servers {
		if s.Error != "" {
			out = append(out, fmt.Sprintf("server %s: %s", s.Name, s.Error))
		}
	}
	for _, p := range r.Pairs {
		switch {
		case p.Error != "":
			out = append(out, fmt.Sprintf("%s -> %s: %s", p.From, p.To, p.Error))
		case !p.Reachable:
			out = append(out, fmt.Sprintf("%s -> %s: the underlay does not reach", p.From, p.To))
		default:
			if p.PathMTU < r.NeedMTU {
				out = append(out, fmt.Sprintf("%s -> %s: path MTU %d, the network needs %d", p.From, p.To, p.PathMTU, r.NeedMTU))
			}
			for _, pr := range p.Ports {
				if !pr.Reachable {
					out = append(out, fmt.Sprintf("%s -> %s: %s does not reach (filtered?)", p.From, p.To, pr.Port))
				}
			}
		}
	}
	for _, o := range r.Overlaps {
		out = append(out, fmt.Sprintf("subnet %s overlaps %s", o.Subnet, o.With))
	}
	return out
}

// Err returns nil if the report has no problems, and otherwise an
// errcode.FailedPrecondition error listing them.
func (r *Report) Err() error {
	ps := r.Problems()
	if len(ps) == 0 {
		return nil
	}
	return errcode.New(errcode.FailedPrecondition, "preflight for %s: %s", r.Mode, strings.Join(ps, "; "))
}

// Run checks every ordered pair of targets for plan and returns the
// report; an error only for bad input or a cancelled ctx. A server that
// fails to respond or probe is reported, not returned.
func Run(ctx context.Context, plan Plan, targets []Target) (*Report, error) {
	if err := checkTargets(plan, targets); err != nil {
		return nil, err
	}
	six := targets[0].Underlay.Is6()
	r := &Report{Mode: plan.Mode, Ports: PortsOf(plan.Mode, plan.Port), Overhead: driver.Overhead(plan.Mode, six)}
	r.NeedMTU = max(plan.MTU, minPacket) + r.Overhead
	responders := make([]*Responder, len(targets))
	for i, t := range targets {
		sr := ServerReport{Name: t.Name, Underlay: t.Underlay}
		resp, err := t.Server.Respond(ctx, &RespondRequest{Addr: t.Underlay, Ports: r.Ports, TTL: time.Minute})
		if err != nil {
			sr.Error = err.Error()
		} else {
			responders[i], sr.InUse = resp, resp.InUse
		}
		r.Servers = append(r.Servers, sr)
	}
	defer func() {
		for i, resp := range responders {
			if resp != nil {
				targets[i].Server.StopResponding(context.WithoutCancel(ctx), resp.ID)
			}
		}
	}()
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i, from := range targets {
		// One source probes one target at a time; sources run at once.
		wg.Go(func() {
			for j, to := range targets {
				if i == j {
					continue
				}
				pr := PairReport{From: from.Name, To: to.Name}
				switch {
				case responders[j] == nil:
					pr.Error = "the target could not respond"
				default:
					res, err := from.Server.Probe(ctx, &ProbeRequest{From: from.Underlay, To: to.Underlay,
						ProbePort: responders[j].ProbePort, Ports: free(r.Ports, responders[j].InUse)})
					if err != nil {
						pr.Error = err.Error()
					} else {
						pr.ProbeResult = *res
					}
				}
				mu.Lock()
				r.Pairs = append(r.Pairs, pr)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	slices.SortFunc(r.Pairs, func(a, b PairReport) int {
		return strings.Compare(a.From+"\x00"+a.To, b.From+"\x00"+b.To)
	})
	for _, p := range r.Pairs {
		if p.PathMTU == 0 {
			r.MTU = 0
			break
		}
		if m := p.PathMTU - r.Overhead; r.MTU == 0 || m < r.MTU {
			r.MTU = m
		}
	}
	return r, nil
}

func free(ports, inUse []Port) []Port {
	var out []Port
	for _, p := range ports {
		if !slices.Contains(inUse, p) {
			out = append(out, p)
		}
	}
	return out
}

func checkTargets(plan Plan, targets []Target) error {
	if driver.DefaultPort(plan.Mode) == 0 {
		return errcode.New(errcode.InvalidArgument, "preflight: unknown mode %q", plan.Mode)
	}
	if plan.MTU != 0 && (plan.MTU < 576 || plan.MTU > 65535) {
		return errcode.New(errcode.InvalidArgument, "preflight: MTU %d out of range 576..65535", plan.MTU)
	}
	if len(targets) < 2 {
		return errcode.New(errcode.InvalidArgument, "preflight: %d servers; need two or more", len(targets))
	}
	seen := map[string]bool{}
	addrs := map[netip.Addr]bool{}
	var errs []error
	for _, t := range targets {
		if err := names.Label(t.Name); err != nil {
			errs = append(errs, err)
		}
		if err := validAddr("underlay", t.Underlay); err != nil {
			errs = append(errs, err)
		}
		if t.Server == nil {
			errs = append(errs, errcode.New(errcode.InvalidArgument, "preflight: server %q has no Server", t.Name))
		}
		if seen[t.Name] || addrs[t.Underlay] || t.Underlay.Is4() != targets[0].Underlay.Is4() {
			errs = append(errs, errcode.New(errcode.InvalidArgument, "preflight: server %q: name or underlay %v used twice, or families differ", t.Name, t.Underlay))
		}
		seen[t.Name], addrs[t.Underlay] = true, true
	}
	if err := errors.Join(errs...); err != nil {
		return errcode.Wrap(errcode.InvalidArgument, err)
	}
	return nil
}
