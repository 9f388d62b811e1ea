package bgp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"syscall"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	gobgplog "github.com/osrg/gobgp/v3/pkg/log"
	"github.com/osrg/gobgp/v3/pkg/server"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/network/driver"
)

const (
	// connectRetry is how long a speaker waits between attempts to reach
	// a neighbour (gobgp's default is 120s).
	connectRetry = 2
	// idleHold is how long a speaker waits after a session dropped before
	// trying again (gobgp's default is 30s).
	idleHold = 3
)

var ipv4Unicast = &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}

// speakerConf is what a speaker is started with; a change restarts it.
type speakerConf struct {
	asn      uint32
	routerID netip.Addr
	port     uint16
	underlay netip.Addr
	local    netip.Prefix
	hold     time.Duration
	password string
}

func speakerConfig(s *driver.Spec) speakerConf {
	c := speakerConf{asn: s.ASN, routerID: s.RouterID, port: port(s), underlay: s.Underlay, local: s.Local, hold: s.HoldTime, password: s.Password}
	if !c.routerID.IsValid() {
		c.routerID = s.Underlay
	}
	if c.hold == 0 {
		c.hold = DefaultHoldTime
	}
	return c
}

// speaker is one network's gobgp server.
type speaker struct {
	s      *server.BgpServer
	cancel context.CancelFunc     // ends the event watch
	peers  map[netip.Addr]peerKey // neighbours configured, by address
}

// peerKey is what a neighbour is configured with; a change re-adds it.
type peerKey struct {
	asn uint32
}

// startSpeaker starts a speaker for spec that announces spec's range and
// has peers as neighbours. It reuses a stopped one if there is one: gobgp's
// server loop never ends, so a discarded server would leak it.
func (d *Driver) startSpeaker(ctx context.Context, spec *driver.Spec, peers []driver.Peer) (*speaker, error) {
	c := speakerConfig(spec)
	var s *server.BgpServer
	if n := len(d.idle); n > 0 {
		s, d.idle = d.idle[n-1].s, d.idle[:n-1]
	} else {
		s = server.NewBgpServer(server.LoggerOption(&logger{log: d.log.With("network", spec.ID)}))
		go s.Serve()
	}
	sp := &speaker{s: s, peers: map[netip.Addr]peerKey{}}
	err := s.StartBgp(ctx, &api.StartBgpRequest{Global: &api.Global{
		Asn:             c.asn,
		RouterId:        c.routerID.String(),
		ListenPort:      int32(c.port),
		ListenAddresses: []string{c.underlay.String()},
	}})
	if err != nil {
		d.idle = append(d.idle, &speaker{s: s})
		code := errcode.Unavailable
		if errors.Is(err, syscall.EADDRINUSE) {
			code = errcode.FailedPrecondition // another program listens there
		}
		return nil, errcode.Wrap(code, fmt.Errorf("starting the BGP speaker of network %q on %s port %d: %w", spec.ID, c.underlay, c.port, err))
	}
	fail := func(err error) (*speaker, error) {
		d.stopSpeaker(sp)
		return nil, err
	}
	wctx, cancel := context.WithCancel(context.Background())
	sp.cancel = cancel
	err = s.WatchEvent(wctx, &api.WatchEventRequest{
		Peer: &api.WatchEventRequest_Peer{},
		Table: &api.WatchEventRequest_Table{Filters: []*api.WatchEventRequest_Table_Filter{
			{Type: api.WatchEventRequest_Table_Filter_ADJIN},
		}},
	}, func(*api.WatchEventResponse) { d.changed() })
	if err != nil {
		return fail(errcode.Wrap(errcode.Internal, fmt.Errorf("watching the BGP speaker: %w", err)))
	}
	nlri, err := anypb.New(&api.IPAddressPrefix{Prefix: c.local.Masked().Addr().String(), PrefixLen: uint32(c.local.Bits())})
	if err != nil {
		return fail(errcode.Wrap(errcode.Internal, err))
	}
	origin, err := anypb.New(&api.OriginAttribute{Origin: 0}) // IGP
	if err != nil {
		return fail(errcode.Wrap(errcode.Internal, err))
	}
	nextHop, err := anypb.New(&api.NextHopAttribute{NextHop: c.underlay.String()})
	if err != nil {
		return fail(errcode.Wrap(errcode.Internal, err))
	}
	_, err = s.AddPath(ctx, &api.AddPathRequest{TableType: api.TableType_GLOBAL, Path: &api.Path{
		Family: ipv4Unicast, Nlri: nlri, Pattrs: []*anypb.Any{origin, nextHop},
	}})
	if err != nil {
		return fail(errcode.Wrap(errcode.Internal, fmt.Errorf("announcing %s: %w", c.local.Masked(), err)))
	}
	if err := sp.setPeers(ctx, spec, peers); err != nil {
		return fail(err)
	}
	return sp, nil
}

// stopSpeaker closes sp's sessions and listener and keeps its server for
// reuse. sp may be nil.
func (d *Driver) stopSpeaker(sp *speaker) {
	if sp == nil {
		return
	}
	if sp.cancel != nil {
		sp.cancel()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := sp.s.StopBgp(ctx, &api.StopBgpRequest{}); err != nil {
		d.log.Warn("bgp: stopping a speaker", "err", err)
		return // not reusable
	}
	d.idle = append(d.idle, &speaker{s: sp.s})
	d.changed()
}

// setPeers makes sp's neighbours exactly peers.
func (sp *speaker) setPeers(ctx context.Context, spec *driver.Spec, peers []driver.Peer) error {
	c := speakerConfig(spec)
	want := map[netip.Addr]peerKey{}
	for _, p := range peers {
		want[p.Underlay] = peerKey{asn: p.ASN}
	}
	for a, k := range sp.peers {
		if w, ok := want[a]; ok && w == k {
			continue
		}
		if err := sp.s.DeletePeer(ctx, &api.DeletePeerRequest{Address: a.String()}); err != nil {
			return errcode.Wrap(errcode.Internal, fmt.Errorf("removing BGP neighbour %s: %w", a, err))
		}
		delete(sp.peers, a)
	}
	hold := uint64(c.hold / time.Second)
	for _, p := range peers {
		if _, ok := sp.peers[p.Underlay]; ok {
			continue
		}
		err := sp.s.AddPeer(ctx, &api.AddPeerRequest{Peer: &api.Peer{
			Conf: &api.PeerConf{
				NeighborAddress: p.Underlay.String(),
				PeerAsn:         p.ASN,
				AuthPassword:    c.password,
				Description:     p.Name,
			},
			Timers: &api.Timers{Config: &api.TimersConfig{
				ConnectRetry:           connectRetry,
				HoldTime:               hold,
				KeepaliveInterval:      max(hold/3, 1),
				IdleHoldTimeAfterReset: idleHold,
			}},
			Transport: &api.Transport{
				LocalAddress: c.underlay.String(),
				RemotePort:   uint32(c.port),
				// Only the end with the lower address connects. Were
				// both to, each would keep reaching the other while
				// it idles after a failed attempt, which gobgp
				// answers by closing the connection: after a session
				// drops, two of our speakers could take minutes to
				// meet again.
				PassiveMode: c.underlay.Compare(p.Underlay) > 0,
			},
			AfiSafis: []*api.AfiSafi{{Config: &api.AfiSafiConfig{Family: ipv4Unicast, Enabled: true}}},
		}})
		if err != nil {
			return errcode.Wrap(errcode.Internal, fmt.Errorf("adding BGP neighbour %s (%s): %w", p.Underlay, p.Name, err))
		}
		sp.peers[p.Underlay] = peerKey{asn: p.ASN}
	}
	return nil
}

// established returns the underlay addresses of the neighbours whose
// session is established.
func (sp *speaker) established(ctx context.Context) (map[netip.Addr]bool, error) {
	up := map[netip.Addr]bool{}
	err := sp.s.ListPeer(ctx, &api.ListPeerRequest{}, func(p *api.Peer) {
		if a, err := netip.ParseAddr(p.GetConf().GetNeighborAddress()); err == nil && p.GetState().GetSessionState() == api.PeerState_ESTABLISHED {
			up[a] = true
		}
	})
	if err != nil {
		return nil, errcode.Wrap(errcode.Internal, fmt.Errorf("listing BGP neighbours: %w", err))
	}
	return up, nil
}

// route is a learnt route to install.
type route struct {
	dst     netip.Prefix
	nextHop netip.Addr
}

// learnt returns the IPv4 unicast routes that peers announce inside their
// own declared ranges.
func (sp *speaker) learnt(ctx context.Context, peers []driver.Peer) ([]route, error) {
	var routes []route
	for _, p := range peers {
		if _, ok := sp.peers[p.Underlay]; !ok {
			continue
		}
		var parseErr error
		err := sp.s.ListPath(ctx, &api.ListPathRequest{TableType: api.TableType_ADJ_IN, Name: p.Underlay.String(), Family: ipv4Unicast},
			func(dst *api.Destination) {
				for _, path := range dst.Paths {
					if path.IsWithdraw || path.Filtered {
						continue
					}
					r, err := pathRoute(path)
					if err != nil {
						parseErr = err
						continue
					}
					if r.dst.Bits() >= p.Range.Bits() && p.Range.Contains(r.dst.Addr()) && r.nextHop.Is4() {
						routes = append(routes, r)
					}
				}
			})
		if err != nil {
			return nil, fmt.Errorf("listing routes from %s: %w", p.Underlay, err)
		}
		if parseErr != nil {
			return nil, parseErr
		}
	}
	return routes, nil
}

// pathRoute reads a path's prefix and next hop.
func pathRoute(p *api.Path) (route, error) {
	var r route
	m, err := p.Nlri.UnmarshalNew()
	if err != nil {
		return r, err
	}
	pfx, ok := m.(*api.IPAddressPrefix)
	if !ok {
		return r, fmt.Errorf("unexpected NLRI %T", m)
	}
	a, err := netip.ParseAddr(pfx.Prefix)
	if err != nil || pfx.PrefixLen > 32 {
		return r, fmt.Errorf("bad prefix %s/%d", pfx.Prefix, pfx.PrefixLen)
	}
	r.dst = netip.PrefixFrom(a, int(pfx.PrefixLen)).Masked()
	for _, attr := range p.Pattrs {
		m, err := attr.UnmarshalNew()
		if err != nil {
			return r, err
		}
		var nh string
		switch m := m.(type) {
		case *api.NextHopAttribute:
			nh = m.NextHop
		case *api.MpReachNLRIAttribute:
			if len(m.NextHops) > 0 {
				nh = m.NextHops[0]
			}
		default:
			continue
		}
		if r.nextHop, err = netip.ParseAddr(nh); err != nil {
			return r, fmt.Errorf("bad next hop %q", nh)
		}
	}
	if !r.nextHop.IsValid() {
		return r, fmt.Errorf("path to %s has no next hop", r.dst)
	}
	return r, nil
}

// logger passes gobgp's log to a slog.Logger.
type logger struct {
	log *slog.Logger
}

func (l *logger) attrs(msg string, level slog.Level, fields gobgplog.Fields) {
	args := make([]any, 0, 2*len(fields))
	for k, v := range fields {
		args = append(args, k, v)
	}
	l.log.Log(context.Background(), level, "gobgp: "+msg, args...)
}

func (l *logger) Panic(msg string, f gobgplog.Fields) {
	l.attrs(msg, slog.LevelError, f)
	panic(msg)
}
func (l *logger) Fatal(msg string, f gobgplog.Fields) { l.attrs(msg, slog.LevelError, f) }
func (l *logger) Error(msg string, f gobgplog.Fields) { l.attrs(msg, slog.LevelError, f) }
func (l *logger) Warn(msg string, f gobgplog.Fields)  { l.attrs(msg, slog.LevelWarn, f) }
func (l *logger) Info(msg string, f gobgplog.Fields)  { l.attrs(msg, slog.LevelInfo, f) }
func (l *logger) Debug(msg string, f gobgplog.Fields) { l.attrs(msg, slog.LevelDebug, f) }
func (l *logger) SetLevel(gobgplog.LogLevel)          {}
func (l *logger) GetLevel() gobgplog.LogLevel {
	if l.log.Enabled(context.Background(), slog.LevelDebug) {
		return gobgplog.DebugLevel
	}
	return gobgplog.InfoLevel
}
