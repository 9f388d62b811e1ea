package agent

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"

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
	Error *status      `json:"error,omitempty"`
}

// maxJSONBody bounds a JSON request or reply body.
const maxJSONBody = 8 << 20

// codeOK is the status code of a success.
const codeOK = "ok"

// status is how an outcome travels: the body of an error response, the
// trailer of a streamed response and the last frame of an exec.
type status struct {
	// Code is codeOK or an errcode name such as "not found".
	Code     string `json:"code"`
	Message  string `json:"message,omitempty"`
	ExitCode int    `json:"exitCode,omitempty"`
}

func statusOf(err error) status {
	if err == nil {
		return status{Code: codeOK}
	}
	return status{Code: errcode.Of(err).String(), Message: err.Error()}
}

// err rebuilds the error that s describes, with its errcode; nil for a success.
func (s status) err() error {
	if s.Code == codeOK {
		return nil
	}
	return errcode.New(codeNamed(s.Code), "%s", s.Message)
}

// codeNamed returns the errcode whose String is name, or errcode.Unknown.
// It tries the codes in order up to the first without a name, so codes
// added to package errcode later travel too.
func codeNamed(name string) errcode.Code {
	for c := errcode.Unknown; c.String() != fmt.Sprintf("code(%d)", int(c)); c++ {
		if c.String() == name {
			return c
		}
	}
	return errcode.Unknown
}

var httpStatuses = map[errcode.Code]int{
	errcode.NotFound:           http.StatusNotFound,
	errcode.AlreadyExists:      http.StatusConflict,
	errcode.InvalidArgument:    http.StatusBadRequest,
	errcode.FailedPrecondition: http.StatusPreconditionFailed,
	errcode.Unavailable:        http.StatusServiceUnavailable,
	errcode.Unimplemented:      http.StatusNotImplemented,
	errcode.PermissionDenied:   http.StatusForbidden,
}

func httpStatus(c errcode.Code) int {
	if s, ok := httpStatuses[c]; ok {
		return s
	}
	return http.StatusInternalServerError
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, err error) {
	writeJSON(w, httpStatus(errcode.Of(err)), statusOf(err))
}

// decodeBody reads a JSON request body into v.
func decodeBody(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, maxJSONBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return errcode.New(errcode.InvalidArgument, "request body: %w", err)
	}
	return nil
}

// responseError returns the error an unsuccessful response carries. A body
// that is no status (from a proxy, or a server too old to know the route)
// gets the code its HTTP status suggests.
func responseError(resp *http.Response) error {
	var s status
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxJSONBody)).Decode(&s); err == nil && s.Code != "" && s.Code != codeOK {
		return s.err()
	}
	code := errcode.Unknown
	for c, hs := range httpStatuses {
		if hs == resp.StatusCode {
			code = c
		}
	}
	return errcode.New(code, "agent replied %s", resp.Status)
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
	s := statusOf(err)
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
			var s status
			if err := json.NewDecoder(payload).Decode(&s); err != nil {
				return -1, errcode.New(errcode.Internal, "exec status frame: %w", err)
			}
			if err := s.err(); err != nil {
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
