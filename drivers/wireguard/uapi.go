package wireguard

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// formatConfig renders cfg in the text of WireGuard's cross-platform
// configuration protocol (the UAPI "set" operation, without the leading
// "set=1" and the trailing blank line), which the embedded device reads
// with IpcSet. It is what wgctrl's userspace client writes to a device's
// UAPI socket. Keys are lower-case hex; an endpoint is host:port, IPv6 in
// brackets; a keepalive interval is whole seconds.
func formatConfig(cfg *wgtypes.Config) string {
	var b strings.Builder
	line := func(k, v string) { b.WriteString(k + "=" + v + "\n") }
	if cfg.PrivateKey != nil {
		line("private_key", hex.EncodeToString(cfg.PrivateKey[:]))
	}
	if cfg.ListenPort != nil {
		line("listen_port", strconv.Itoa(*cfg.ListenPort))
	}
	if cfg.FirewallMark != nil {
		line("fwmark", strconv.Itoa(*cfg.FirewallMark))
	}
	if cfg.ReplacePeers {
		line("replace_peers", "true")
	}
	for _, p := range cfg.Peers {
		line("public_key", hex.EncodeToString(p.PublicKey[:]))
		if p.Remove {
			line("remove", "true")
			continue
		}
		if p.UpdateOnly {
			line("update_only", "true")
		}
		if p.PresharedKey != nil {
			line("preshared_key", hex.EncodeToString(p.PresharedKey[:]))
		}
		if p.Endpoint != nil {
			line("endpoint", p.Endpoint.String())
		}
		if p.PersistentKeepaliveInterval != nil {
			line("persistent_keepalive_interval", strconv.Itoa(int(*p.PersistentKeepaliveInterval/time.Second)))
		}
		if p.ReplaceAllowedIPs {
			line("replace_allowed_ips", "true")
		}
		for _, ip := range p.AllowedIPs {
			line("allowed_ip", ip.String())
		}
	}
	return b.String()
}

// parseDevice reads the text of the UAPI "get" operation (IpcGet) into
// wgctrl's Device type, as wgctrl's userspace client does.
func parseDevice(text string) (*wgtypes.Device, error) {
	d := &wgtypes.Device{Type: wgtypes.Userspace}
	var p *wgtypes.Peer
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		if sc.Text() == "" {
			continue
		}
		k, v, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			return nil, fmt.Errorf("UAPI line %q is not key=value", sc.Text())
		}
		var err error
		switch k {
		case "errno":
			if v != "0" {
				err = fmt.Errorf("device error %s", v)
			}
		case "private_key":
			err = parseKey(&d.PrivateKey, v)
			if err == nil {
				d.PublicKey = d.PrivateKey.PublicKey()
			}
		case "listen_port":
			d.ListenPort, err = strconv.Atoi(v)
		case "fwmark":
			d.FirewallMark, err = strconv.Atoi(v)
		case "public_key":
			d.Peers = append(d.Peers, wgtypes.Peer{})
			p = &d.Peers[len(d.Peers)-1]
			err = parseKey(&p.PublicKey, v)
		default:
			if p == nil {
				return nil, fmt.Errorf("UAPI key %q before any public_key", k)
			}
			err = parsePeerLine(p, k, v)
		}
		if err != nil {
			return nil, fmt.Errorf("UAPI %s=%s: %w", k, v, err)
		}
	}
	return d, sc.Err()
}

func parsePeerLine(p *wgtypes.Peer, k, v string) error {
	var err error
	var n int64
	switch k {
	case "preshared_key":
		err = parseKey(&p.PresharedKey, v)
	case "protocol_version":
		p.ProtocolVersion, err = strconv.Atoi(v)
	case "endpoint":
		var ap netip.AddrPort
		if ap, err = netip.ParseAddrPort(v); err == nil {
			p.Endpoint = net.UDPAddrFromAddrPort(ap)
		}
	case "last_handshake_time_sec":
		if n, err = strconv.ParseInt(v, 10, 64); err == nil && n != 0 {
			p.LastHandshakeTime = time.Unix(n, int64(p.LastHandshakeTime.Nanosecond()))
		}
	case "last_handshake_time_nsec":
		if n, err = strconv.ParseInt(v, 10, 64); err == nil && !p.LastHandshakeTime.IsZero() {
			p.LastHandshakeTime = time.Unix(p.LastHandshakeTime.Unix(), n)
		}
	case "tx_bytes":
		p.TransmitBytes, err = strconv.ParseInt(v, 10, 64)
	case "rx_bytes":
		p.ReceiveBytes, err = strconv.ParseInt(v, 10, 64)
	case "persistent_keepalive_interval":
		if n, err = strconv.ParseInt(v, 10, 64); err == nil {
			p.PersistentKeepaliveInterval = time.Duration(n) * time.Second
		}
	case "allowed_ip":
		var pr netip.Prefix
		if pr, err = netip.ParsePrefix(v); err == nil {
			p.AllowedIPs = append(p.AllowedIPs, prefixNet(pr))
		}
	default:
		return fmt.Errorf("unknown key")
	}
	return err
}

func parseKey(k *wgtypes.Key, v string) error {
	b, err := hex.DecodeString(v)
	if err != nil || len(b) != wgtypes.KeyLen {
		return fmt.Errorf("not the hex of a %d-byte key", wgtypes.KeyLen)
	}
	copy(k[:], b)
	return nil
}

// prefixNet converts a prefix to the net.IPNet wgtypes uses, with a
// 4-byte IP for IPv4.
func prefixNet(p netip.Prefix) net.IPNet {
	return net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
