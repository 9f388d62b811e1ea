package wireguard

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func key(b byte) wgtypes.Key {
	var k wgtypes.Key
	for i := range k {
		k[i] = b
	}
	return k
}

func TestFormatConfig(t *testing.T) {
	priv, psk := key(1), key(3)
	port, mark := 51820, 7
	ka := 25 * time.Second
	cfg := &wgtypes.Config{
		PrivateKey:   &priv,
		ListenPort:   &port,
		FirewallMark: &mark,
		ReplacePeers: true,
		Peers: []wgtypes.PeerConfig{
			{PublicKey: key(0xab), Remove: true},
			{
				PublicKey:                   key(2),
				UpdateOnly:                  true,
				PresharedKey:                &psk,
				Endpoint:                    net.UDPAddrFromAddrPort(netip.MustParseAddrPort("198.18.0.2:51820")),
				PersistentKeepaliveInterval: &ka,
				ReplaceAllowedIPs:           true,
				AllowedIPs:                  []net.IPNet{prefixNet(netip.MustParsePrefix("198.19.2.0/24")), prefixNet(netip.MustParsePrefix("fd00::/64"))},
			},
			{PublicKey: key(4), Endpoint: net.UDPAddrFromAddrPort(netip.MustParseAddrPort("[2001:db8::1]:443"))},
		},
	}
	want := strings.Join([]string{
		"private_key=" + strings.Repeat("01", 32),
		"listen_port=51820",
		"fwmark=7",
		"replace_peers=true",
		"public_key=" + strings.Repeat("ab", 32),
		"remove=true",
		"public_key=" + strings.Repeat("02", 32),
		"update_only=true",
		"preshared_key=" + strings.Repeat("03", 32),
		"endpoint=198.18.0.2:51820",
		"persistent_keepalive_interval=25",
		"replace_allowed_ips=true",
		"allowed_ip=198.19.2.0/24",
		"allowed_ip=fd00::/64",
		"public_key=" + strings.Repeat("04", 32),
		"endpoint=[2001:db8::1]:443",
		"",
	}, "\n")
	if got := formatConfig(cfg); got != want {
		t.Fatalf("formatConfig =\n%s\nwant\n%s", got, want)
	}
	if got := formatConfig(&wgtypes.Config{}); got != "" {
		t.Fatalf("empty config renders %q", got)
	}
}

func TestParseDevice(t *testing.T) {
	text := strings.Join([]string{
		"private_key=" + strings.Repeat("01", 32),
		"listen_port=51820",
		"public_key=" + strings.Repeat("02", 32),
		"preshared_key=" + strings.Repeat("00", 32),
		"protocol_version=1",
		"endpoint=198.18.0.2:51820",
		"last_handshake_time_sec=1700000000",
		"last_handshake_time_nsec=5",
		"tx_bytes=100",
		"rx_bytes=200",
		"persistent_keepalive_interval=25",
		"allowed_ip=198.19.2.0/24",
		"public_key=" + strings.Repeat("04", 32),
		"protocol_version=1",
		"last_handshake_time_sec=0",
		"last_handshake_time_nsec=0",
		"tx_bytes=0",
		"rx_bytes=0",
		"persistent_keepalive_interval=0",
		"errno=0",
		"",
	}, "\n")
	d, err := parseDevice(text)
	if err != nil {
		t.Fatal(err)
	}
	if d.PrivateKey != key(1) || d.PublicKey != key(1).PublicKey() || d.ListenPort != 51820 || len(d.Peers) != 2 {
		t.Fatalf("device = %+v", d)
	}
	p := d.Peers[0]
	if p.PublicKey != key(2) || p.Endpoint.String() != "198.18.0.2:51820" || !p.LastHandshakeTime.Equal(time.Unix(1700000000, 5)) ||
		p.TransmitBytes != 100 || p.ReceiveBytes != 200 || p.PersistentKeepaliveInterval != 25*time.Second ||
		len(p.AllowedIPs) != 1 || p.AllowedIPs[0].String() != "198.19.2.0/24" || p.ProtocolVersion != 1 {
		t.Fatalf("peer 0 = %+v", p)
	}
	if q := d.Peers[1]; q.PublicKey != key(4) || !q.LastHandshakeTime.IsZero() || q.Endpoint != nil {
		t.Fatalf("peer 1 = %+v", q)
	}
	for _, bad := range []string{"listen_port", "tx_bytes=1\n", "public_key=zz\n", "errno=22\n", "public_key=" + strings.Repeat("02", 32) + "\nbogus=1\n"} {
		if _, err := parseDevice(bad); err == nil {
			t.Errorf("parseDevice(%q) succeeded", bad)
		}
	}
}

func TestNames(t *testing.T) {
	for _, id := range []string{"a", "net-a", "abcdefghijk", "abcdefghijkl", "a-very-long-network-name-of-63-bytes"} {
		if b := BridgeName(id); len(b) > 15 || !strings.HasPrefix(b, "mwb-") {
			t.Errorf("BridgeName(%q) = %q", id, b)
		}
		if n := DeviceName(4026531840, id); len(n) != 15 || !strings.HasPrefix(n, "mwg") {
			t.Errorf("DeviceName(%q) = %q", id, n)
		}
	}
	if BridgeName("abcdefghijkl") == BridgeName("abcdefghijkm") {
		t.Error("long IDs share a bridge name")
	}
	if DeviceName(1, "x") == DeviceName(2, "x") || DeviceName(1, "x") == DeviceName(1, "y") {
		t.Error("device names are not unique per namespace and ID")
	}
}
