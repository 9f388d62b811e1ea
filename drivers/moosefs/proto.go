package moosefs

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"

	"github.com/musterkit/muster/errcode"
)

// The master's administrative commands (mfscli's), on its client port:
// a request is a 32-bit command and a 32-bit length, big-endian, then
// the payload; so is the answer. MooseFS 3.0 formats.
const (
	cltomaCServList    = 500
	matoclCServList    = 501
	cltomaSessionList  = 508
	matoclSessionList  = 509
	cltomaChunksMatrix = 516
	matoclChunksMatrix = 517
	antoanNop          = 0
	maxAnswer          = 64 << 20
)

// chunkServer is one chunk server as the master lists it.
type chunkServer struct {
	Addr         netip.Addr
	Port         uint16
	Disconnected bool
	Used, Total  int64
}

// session is one connected client (a mount) of the master.
type session struct {
	ID   uint32
	Addr netip.Addr
	// Path is the directory the client mounted ("/vol"), "." for the
	// meta file system.
	Path string
}

// master asks a master for its state over conns that dial opens.
type master struct {
	dial func(ctx context.Context) (net.Conn, error)
}

// ask sends one command and returns its answer's payload.
// errcode.Unavailable if the master cannot be reached or answers
// nonsense.
func (m *master) ask(ctx context.Context, cmd uint32, payload []byte, want uint32) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := m.dial(ctx)
	if err != nil {
		return nil, errcode.Wrap(errcode.Unavailable, fmt.Errorf("mfsmaster: %w", err))
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	msg := binary.BigEndian.AppendUint32(nil, cmd)
	msg = binary.BigEndian.AppendUint32(msg, uint32(len(payload)))
	if _, err := c.Write(append(msg, payload...)); err != nil {
		return nil, errcode.Wrap(errcode.Unavailable, fmt.Errorf("mfsmaster: %w", err))
	}
	for {
		var hdr [8]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return nil, errcode.Wrap(errcode.Unavailable, fmt.Errorf("mfsmaster: %w", err))
		}
		got, n := binary.BigEndian.Uint32(hdr[:4]), binary.BigEndian.Uint32(hdr[4:])
		if n > maxAnswer {
			return nil, errcode.New(errcode.Unavailable, "mfsmaster: an answer of %d bytes", n)
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(c, data); err != nil {
			return nil, errcode.Wrap(errcode.Unavailable, fmt.Errorf("mfsmaster: %w", err))
		}
		switch got {
		case antoanNop:
			continue
		case want:
			return data, nil
		default:
			return nil, errcode.New(errcode.Unavailable, "mfsmaster: answer %d to command %d", got, cmd)
		}
	}
}

// chunkServers lists the chunk servers the master knows, connected or
// not (69-byte records since 3.0.38).
func (m *master) chunkServers(ctx context.Context) ([]chunkServer, error) {
	data, err := m.ask(ctx, cltomaCServList, nil, matoclCServList)
	if err != nil {
		return nil, err
	}
	const size = 69
	if len(data)%size != 0 {
		return nil, errcode.New(errcode.Unavailable, "mfsmaster: chunk server list of %d bytes", len(data))
	}
	var out []chunkServer
	for r := data; len(r) > 0; r = r[size:] {
		out = append(out, chunkServer{
			Disconnected: r[0]&1 != 0,
			Addr:         netip.AddrFrom4([4]byte(r[4:8])),
			Port:         binary.BigEndian.Uint16(r[8:10]),
			Used:         int64(binary.BigEndian.Uint64(r[12:20])),
			Total:        int64(binary.BigEndian.Uint64(r[20:28])),
		})
	}
	return out, nil
}

// sessions lists the master's connected sessions (format 1).
func (m *master) sessions(ctx context.Context) ([]session, error) {
	data, err := m.ask(ctx, cltomaSessionList, []byte{1}, matoclSessionList)
	if err != nil {
		return nil, err
	}
	bad := errcode.New(errcode.Unavailable, "mfsmaster: malformed session list")
	if len(data) < 2 {
		return nil, bad
	}
	stats := int(binary.BigEndian.Uint16(data))
	r := data[2:]
	// take returns the next n bytes, nil if there are fewer (r is never
	// nil, so neither is an empty slice it returns).
	take := func(n int) []byte {
		if n < 0 || n > len(r) {
			return nil
		}
		b := r[:n]
		r = r[n:]
		return b
	}
	var out []session
	for len(r) > 0 {
		h := take(16) // id, address, version, info length
		if h == nil || take(int(binary.BigEndian.Uint32(h[12:]))) == nil {
			return nil, bad
		}
		pl := take(4)
		if pl == nil {
			return nil, bad
		}
		path := take(int(binary.BigEndian.Uint32(pl)))
		// flags, root uid and gid, mapall uid and gid, min and max goal,
		// min and max trash time, then two sets of operation counters.
		if path == nil || take(1+16+2+8+2*4*stats) == nil {
			return nil, bad
		}
		out = append(out, session{
			ID:   binary.BigEndian.Uint32(h[0:4]),
			Addr: netip.AddrFrom4([4]byte(h[4:8])),
			Path: string(path),
		})
	}
	return out, nil
}

// chunkHealth is the master's count of chunks by copies.
type chunkHealth struct {
	// Undergoal chunks have some valid copies but fewer than their goal;
	// Missing chunks have none.
	Undergoal, Missing int
}

// chunkHealth reads the master's chunk matrix (goal by valid copies, 11
// by 11, of all chunks then of regular ones) and counts the chunks short
// of copies.
func (m *master) chunkHealth(ctx context.Context) (chunkHealth, error) {
	data, err := m.ask(ctx, cltomaChunksMatrix, nil, matoclChunksMatrix)
	if err != nil {
		return chunkHealth{}, err
	}
	if len(data) != 1+2*484 {
		return chunkHealth{}, errcode.New(errcode.Unavailable, "mfsmaster: chunk matrix of %d bytes", len(data))
	}
	var h chunkHealth
	for goal := 1; goal <= 10; goal++ {
		for valid := 0; valid < goal; valid++ {
			n := int(binary.BigEndian.Uint32(data[1+(goal*11+valid)*4:]))
			if valid == 0 {
				h.Missing += n
			} else {
				h.Undergoal += n
			}
		}
	}
	return h, nil
}
