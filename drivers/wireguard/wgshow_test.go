package wireguard

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/musterkit/muster/roottest"
)

// TestWgShow: wg(8), run inside a simulated server, sees the embedded
// device through its UAPI socket: the same peers, endpoints and latest
// handshakes as Driver.Device; the socket goes with the network.
func TestWgShow(t *testing.T) {
	require(t)
	roottest.Require(t, roottest.BinaryFrom("wg", "wireguard-tools"))
	ss := servers(t, 2)
	a, b := ss[0], ss[1]
	a.setPeers(t, b)
	b.setPeers(t, a)
	c := a.firstDial(t, b.echo(t))
	if err := roundTrip(c, bufio.NewReader(c), "hello", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	c.Close()

	dev, err := a.d.Device(testCtx(t), netID)
	if err != nil {
		t.Fatal(err)
	}
	out, err := a.h.Command(testCtx(t), "wg", "show", dev.Name, "dump").CombinedOutput()
	if err != nil {
		t.Fatalf("wg show %s dump in %s: %v: %s", dev.Name, a.h.Netns, err, out)
	}
	// Line 1: private key, public key, listen port, fwmark; then one line
	// a peer: public key, preshared key, endpoint, allowed IPs, latest
	// handshake, rx, tx, keepalive.
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 1+len(dev.Peers) || len(dev.Peers) != 1 {
		t.Fatalf("wg show lists %d lines for a device with %d peers:\n%s", len(lines), len(dev.Peers), out)
	}
	head := strings.Split(lines[0], "\t")
	if head[1] != dev.PublicKey.String() || head[2] != strconv.Itoa(dev.ListenPort) {
		t.Fatalf("wg show's device %v; the driver's has key %s, port %d", head[1:3], dev.PublicKey, dev.ListenPort)
	}
	p := dev.Peers[0]
	f := strings.Split(lines[1], "\t")
	if f[0] != p.PublicKey.String() || f[2] != p.Endpoint.String() || f[4] != strconv.Itoa(int(p.LastHandshakeTime.Unix())) {
		t.Fatalf("wg show's peer %q; the driver's: key %s, endpoint %s, handshake %d", lines[1], p.PublicKey, p.Endpoint, p.LastHandshakeTime.Unix())
	}
	if p.LastHandshakeTime.IsZero() || f[5] == "0" {
		t.Fatalf("no handshake or nothing received after traffic: %q", lines[1])
	}
	// The network's Status (what the agent serves) says the same.
	st := a.ensure(t)
	if len(st.Sessions) != 1 {
		t.Fatalf("Status sessions %+v", st.Sessions)
	}
	s := st.Sessions[0]
	if s.Peer != b.name || s.Endpoint.String() != f[2] || strconv.FormatInt(s.LastHandshake.Unix(), 10) != f[4] || s.ReceiveBytes < p.ReceiveBytes || s.ReceiveBytes == 0 {
		t.Fatalf("Status session %+v; wg show %q", s, lines[1])
	}

	sock := filepath.Join("/var/run/wireguard", dev.Name+".sock")
	if err := a.d.DeleteNetwork(testCtx(t), netID); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Fatalf("the control socket outlived the network: %v", err)
	}
	if out, err := exec.Command("wg", "show", dev.Name).CombinedOutput(); err == nil {
		t.Fatalf("wg show still finds %s after delete: %s", dev.Name, out)
	}
}
