package agent

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"

	"github.com/musterkit/muster/agent/internal/wire"
	"github.com/musterkit/muster/container/driver"
	"github.com/musterkit/muster/errcode"
)

// Headers of the protocol. Their values are base64url-encoded JSON, so any
// string survives them.
const (
	processHeader  = "Muster-Process"  // exec request: the driver.Process
	manifestHeader = "Muster-Manifest" // put-image request, open-image response: the image.Manifest
	statusHeader   = "Muster-Status"   // trailer of a streamed response: its status
)

// A list (of containers, of images) travels as JSON lines, one item a
// line, so that its length is unbounded (see listReply and readList). Each
// item is bounded by maxListItem: an item the agent accepted in a request
// body, of at most wire.MaxJSONBody bytes, encodes to at most three times
// that (a byte of invalid UTF-8 arrives as U+FFFD, three bytes), plus the
// fields the agent adds, so no item it stored makes List fail.
const (
	listContentType = "application/x-ndjson"
	maxListItem     = 4 * wire.MaxJSONBody
)

// transferRequest is the body of a push or pull call.
type transferRequest struct {
	// Peer is the other agent's address, host:port: the target of a
	// push, the source of a pull.
	Peer string `json:"peer"`
	// Rename, if not empty, names the container on the target.
	Rename string `json:"rename,omitempty"`
}

// transferFrame is one line of a push or pull reply, which is
// newline-delimited JSON: progress frames with the archive bytes streamed
// so far, then one last frame with the outcome, Info or Error.
type transferFrame struct {
	Bytes int64        `json:"bytes,omitempty"`
	Info  *driver.Info `json:"info,omitempty"`
	Error *wire.Status `json:"error,omitempty"`
}

func setHeaderJSON(h http.Header, key string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return errcode.New(errcode.InvalidArgument, "%s: %w", key, err)
	}
	h.Set(key, base64.RawURLEncoding.EncodeToString(data))
	return nil
}

func headerJSON(h http.Header, key string, v any) error {
	data, err := base64.RawURLEncoding.DecodeString(h.Get(key))
	if err == nil {
		err = json.Unmarshal(data, v)
	}
	if err != nil {
		return errcode.New(errcode.InvalidArgument, "header %s: %w", key, err)
	}
	return nil
}

// Exec response frames: a stream id byte, a big-endian uint32 payload
// length, the payload. The status frame, whose payload is a JSON status
// with the exit code, ends the stream.
const (
	frameStdout byte = 1
	frameStderr byte = 2
	frameStatus byte = 3

	frameHeaderLen  = 5
	maxFramePayload = 1 << 20
)

// frameWriter writes frames to an exec response, flushing each so that
// output reaches the client as the process writes it.
type frameWriter struct {
	mu     sync.Mutex
	w      io.Writer
	flush  func() error
	closed bool
}

// frame writes one frame; the last one closes the stream.
func (f *frameWriter) frame(id byte, payload []byte, last bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return errors.New("exec stream is closed")
	}
	f.closed = last
	var hdr [frameHeaderLen]byte
	hdr[0] = id
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(payload)))
	if _, err := f.w.Write(hdr[:]); err != nil {
		return err
	}
	if _, err := f.w.Write(payload); err != nil {
		return err
	}
	return f.flush()
}

// finish writes the status frame; later writes fail.
func (f *frameWriter) finish(exitCode int, err error) {
	s := wire.StatusOf(err)
	s.ExitCode = exitCode
	data, _ := json.Marshal(s)
	f.frame(frameStatus, data, true)
}

// output is one output stream of an exec as an io.Writer.
type output struct {
	f  *frameWriter
	id byte
}

func (o output) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		chunk := p[:min(len(p), maxFramePayload)]
		if err := o.f.frame(o.id, chunk, false); err != nil {
			return n, err
		}
		n += len(chunk)
		p = p[len(chunk):]
	}
	return n, nil
}

// readFrames copies output frames of r to stdout and stderr until the
// status frame, and returns the exit code and error it carries.
func readFrames(r io.Reader, stdout, stderr io.Writer) (int, error) {
	var hdr [frameHeaderLen]byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return -1, err
		}
		n := binary.BigEndian.Uint32(hdr[1:])
		if n > maxFramePayload {
			return -1, errcode.New(errcode.Internal, "exec frame of %d bytes exceeds %d", n, maxFramePayload)
		}
		payload := io.LimitReader(r, int64(n))
		switch hdr[0] {
		case frameStdout, frameStderr:
			w := stdout
			if hdr[0] == frameStderr {
				w = stderr
			}
			if _, err := io.Copy(w, payload); err != nil {
				return -1, err
			}
		case frameStatus:
			var s wire.Status
			if err := json.NewDecoder(payload).Decode(&s); err != nil {
				return -1, errcode.New(errcode.Internal, "exec status frame: %w", err)
			}
			if err := s.Err(); err != nil {
				return -1, err
			}
			return s.ExitCode, nil
		default:
			return -1, errcode.New(errcode.Internal, "unknown exec frame type %d", hdr[0])
		}
	}
}

// apiPath joins escaped path segments under /v1.
func apiPath(segments ...string) string {
	var b strings.Builder
	b.WriteString("/v1")
	for _, s := range segments {
		b.WriteString("/" + url.PathEscape(s))
	}
	return b.String()
}
