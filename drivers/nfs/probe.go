package nfs

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"
)

// nullCall is an ONC RPC call (RFC 5531) of procedure 0 (NULL) of NFS
// (program 100003) version 4, with AUTH_NONE, over TCP (record marking:
// one last fragment of 40 bytes). Its xid is 1.
var nullCall = func() []byte {
	words := []uint32{0x80000000 | 40, 1, 0, 2, 100003, 4, 0, 0, 0, 0, 0}
	b := make([]byte, 0, 4*len(words))
	for _, w := range words {
		b = binary.BigEndian.AppendUint32(b, w)
	}
	return b
}()

// nullReply is how an accepted, successful reply to nullCall starts: the
// record mark of its 24 bytes, xid 1, REPLY, MSG_ACCEPTED, a verifier
// AUTH_NONE of length 0, SUCCESS.
var nullReply = func() []byte {
	var b []byte
	for _, w := range []uint32{0x80000000 | 24, 1, 1, 0, 0, 0, 0} {
		b = binary.BigEndian.AppendUint32(b, w)
	}
	return b
}()

// ping sends an NFSv4 NULL call to addr:port with dial and reports whether
// ganesha answered it; it gives up after a second.
func ping(ctx context.Context, dial func(context.Context, string) (net.Conn, error), addr netip.Addr, port uint16) error {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	c, err := dial(ctx, netip.AddrPortFrom(addr, port).String())
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	if _, err := c.Write(nullCall); err != nil {
		return err
	}
	got := make([]byte, len(nullReply))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if !bytes.Equal(got, nullReply) {
		return fmt.Errorf("NFS NULL call to %s:%d: unexpected reply %x", addr, port, got)
	}
	return nil
}
