package agent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/musterkit/muster/agent/internal/wire"
	"github.com/musterkit/muster/agent/pki"
	"github.com/musterkit/muster/container/driver"
	"github.com/musterkit/muster/container/image"
	"github.com/musterkit/muster/errcode"
)

// ClientOptions configure Dial. The zero value is usable.
type ClientOptions struct {
	// ServerName is the name the agent's certificate must carry. The
	// default is the host of the address; an IP address is checked
	// against the certificate's IP addresses.
	ServerName string
}

// Client is a remote driver: every call runs on the driver of the agent it
// dialled. It implements the driver interfaces and their optional
// extensions; a call the agent's driver does not support fails with
// errcode.Unimplemented. It is safe for concurrent use.
type Client struct {
	addr  string
	src   pki.Source
	tr    *http.Transport
	peers *peerConns   // the connections to the agent, closed if a new CRL revokes it
	caps  capabilities // what the agent's services offer, read at Dial

	closed atomic.Bool // by Close: the container driver's calls fail
}

var (
	_ driver.Driver      = (*Client)(nil)
	_ driver.Images      = (*Client)(nil)
	_ driver.Snapshotter = (*Client)(nil)
	_ driver.Transferer  = (*Client)(nil)
	_ driver.Endpoint    = (*Client)(nil)
	_ driver.Pusher      = (*Client)(nil)
	_ driver.Puller      = (*Client)(nil)
	_ driver.Host        = (*Client)(nil)
	_ driver.Autostarter = (*Client)(nil)
)

// Dial connects to the agent at addr (host:port) with creds, and reads
// what the agent's services offer (see Kinds), which checks that it
// answers. The agent's certificate must chain to creds' CA and not be
// revoked by its CRL. An agent that cannot be reached is
// errcode.Unavailable; one whose certificate is revoked
// errcode.PermissionDenied. opts may be nil.
//
// creds is read at every handshake: with a *pki.Keyring, the client
// presents the certificate it holds then (so it can be rotated while the
// client is in use), and refuses the agents its CRL revokes from the
// next call on, closing the connections it has to them first.
func Dial(ctx context.Context, addr string, creds pki.Source, opts *ClientOptions) (*Client, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, errcode.New(errcode.InvalidArgument, "agent address %q: %w", addr, err)
	}
	if opts != nil && opts.ServerName != "" {
		host = opts.ServerName
	}
	var protocols http.Protocols
	protocols.SetHTTP2(true)
	dialer := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	tlsConfig := pki.ClientConfig(creds, host)
	tlsConfig.NextProtos = []string{"h2"}
	c := &Client{addr: addr, src: creds, peers: newPeerConns(creds)}
	c.tr = &http.Transport{
		DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return c.peers.dial(ctx, dialer, network, addr, tlsConfig)
		},
		Protocols: &protocols,
		HTTP2:     &http.HTTP2Config{SendPingTimeout: 30 * time.Second},
	}
	if err := c.fetchCapabilities(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Close closes the client's idle connections. Containers keep running.
// Closing again returns nil; every later call of the container driver
// (Create ... StartAutostart, Push and Pull) fails with
// errcode.FailedPrecondition. The drivers that Network, Balancer,
// FloatingIP and Discovery handed out have a Close of their own.
func (c *Client) Close() error {
	c.closed.Store(true)
	c.tr.CloseIdleConnections()
	return nil
}

// checkOpen returns errcode.FailedPrecondition once c is closed.
func (c *Client) checkOpen() error {
	if c.closed.Load() {
		return errcode.New(errcode.FailedPrecondition, "agent client: closed")
	}
	return nil
}

// Create implements driver.Driver.
func (c *Client) Create(ctx context.Context, spec *driver.Spec) (*driver.Info, error) {
	if err := c.checkOpen(); err != nil {
		return nil, err
	}
	return call[*driver.Info](ctx, c, http.MethodPost, apiPath("containers"), spec)
}

// Delete implements driver.Driver.
func (c *Client) Delete(ctx context.Context, name string) error {
	if err := c.checkOpen(); err != nil {
		return err
	}
	return do(ctx, c, http.MethodDelete, apiPath("containers", name), nil)
}

// Start implements driver.Driver.
func (c *Client) Start(ctx context.Context, name string) error {
	if err := c.checkOpen(); err != nil {
		return err
	}
	return do(ctx, c, http.MethodPost, apiPath("containers", name, "start"), nil)
}

// Stop implements driver.Driver.
func (c *Client) Stop(ctx context.Context, name string, timeout time.Duration) error {
	if err := c.checkOpen(); err != nil {
		return err
	}
	return do(ctx, c, http.MethodPost, apiPath("containers", name, "stop"), stopRequest{timeout})
}

// Freeze implements driver.Driver.
func (c *Client) Freeze(ctx context.Context, name string) error {
	if err := c.checkOpen(); err != nil {
		return err
	}
	return do(ctx, c, http.MethodPost, apiPath("containers", name, "freeze"), nil)
}

// Unfreeze implements driver.Driver.
func (c *Client) Unfreeze(ctx context.Context, name string) error {
	if err := c.checkOpen(); err != nil {
		return err
	}
	return do(ctx, c, http.MethodPost, apiPath("containers", name, "unfreeze"), nil)
}

// Get implements driver.Driver.
func (c *Client) Get(ctx context.Context, name string) (*driver.Info, error) {
	if err := c.checkOpen(); err != nil {
		return nil, err
	}
	return call[*driver.Info](ctx, c, http.MethodGet, apiPath("containers", name), nil)
}

// List implements driver.Driver. The agent streams the list, so it may be
// of any length (see readList).
func (c *Client) List(ctx context.Context) ([]*driver.Info, error) {
	if err := c.checkOpen(); err != nil {
		return nil, err
	}
	return readList[*driver.Info](ctx, c, apiPath("containers"))
}

// Exec implements driver.Driver. Stdin, stdout and stderr stream both ways
// at once; cancelling ctx kills the remote process.
func (c *Client) Exec(ctx context.Context, name string, p *driver.Process) (int, error) {
	if err := c.checkOpen(); err != nil {
		return 0, err
	}
	if p == nil {
		return -1, errcode.New(errcode.InvalidArgument, "exec: nil process")
	}
	hdr := http.Header{}
	if err := setHeaderJSON(hdr, processHeader, p); err != nil {
		return -1, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends the request, and with it the stdin copy, on every return
	resp, err := c.roundTrip(ctx, http.MethodPost, apiPath("containers", name, "exec"), hdr, p.Stdin)
	if err != nil {
		return -1, err
	}
	defer resp.Body.Close()
	stdout, stderr := p.Stdout, p.Stderr
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	code, err := readFrames(resp.Body, stdout, stderr)
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		err = errcode.New(errcode.Unavailable, "agent %s: exec stream ended without an exit status", c.addr)
	}
	return code, err
}

// PutImage implements driver.Images.
func (c *Client) PutImage(ctx context.Context, m *image.Manifest, blob io.Reader) (*image.Manifest, error) {
	if err := c.checkOpen(); err != nil {
		return nil, err
	}
	if m == nil {
		return nil, errcode.New(errcode.InvalidArgument, "put image: nil manifest")
	}
	hdr := http.Header{}
	if err := setHeaderJSON(hdr, manifestHeader, m); err != nil {
		return nil, err
	}
	return decode[*image.Manifest](c.roundTrip(ctx, http.MethodPut, apiPath("images", m.Name), hdr, blob))
}

// Image implements driver.Images.
func (c *Client) Image(ctx context.Context, ref string) (*image.Manifest, error) {
	if err := c.checkOpen(); err != nil {
		return nil, err
	}
	return call[*image.Manifest](ctx, c, http.MethodGet, apiPath("images", ref), nil)
}

// ListImages implements driver.Images. Like List, it is streamed.
func (c *Client) ListImages(ctx context.Context) ([]*image.Manifest, error) {
	if err := c.checkOpen(); err != nil {
		return nil, err
	}
	return readList[*image.Manifest](ctx, c, apiPath("images"))
}

// OpenImage implements driver.Images. Reading the blob returns an error,
// never a clean end, if the agent could not send all of it.
func (c *Client) OpenImage(ctx context.Context, ref string) (*image.Manifest, io.ReadCloser, error) {
	if err := c.checkOpen(); err != nil {
		return nil, nil, err
	}
	resp, err := c.roundTrip(ctx, http.MethodGet, apiPath("images", ref, "blob"), nil, nil)
	if err != nil {
		return nil, nil, err
	}
	var m image.Manifest
	if err := headerJSON(resp.Header, manifestHeader, &m); err != nil {
		resp.Body.Close()
		return nil, nil, err
	}
	return &m, streamBody{resp}, nil
}

// DeleteImage implements driver.Images.
func (c *Client) DeleteImage(ctx context.Context, ref string) error {
	if err := c.checkOpen(); err != nil {
		return err
	}
	return do(ctx, c, http.MethodDelete, apiPath("images", ref), nil)
}

// Snapshot implements driver.Snapshotter.
func (c *Client) Snapshot(ctx context.Context, name, snapshot string) error {
	if err := c.checkOpen(); err != nil {
		return err
	}
	return do(ctx, c, http.MethodPost, apiPath("containers", name, "snapshots", snapshot), nil)
}

// Snapshots implements driver.Snapshotter.
func (c *Client) Snapshots(ctx context.Context, name string) ([]driver.SnapshotInfo, error) {
	if err := c.checkOpen(); err != nil {
		return nil, err
	}
	return call[[]driver.SnapshotInfo](ctx, c, http.MethodGet, apiPath("containers", name, "snapshots"), nil)
}

// Restore implements driver.Snapshotter.
func (c *Client) Restore(ctx context.Context, name, snapshot string) error {
	if err := c.checkOpen(); err != nil {
		return err
	}
	return do(ctx, c, http.MethodPost, apiPath("containers", name, "snapshots", snapshot, "restore"), nil)
}

// Clone implements driver.Snapshotter.
func (c *Client) Clone(ctx context.Context, src, dst string) (*driver.Info, error) {
	if err := c.checkOpen(); err != nil {
		return nil, err
	}
	return call[*driver.Info](ctx, c, http.MethodPost, apiPath("containers", src, "clone", dst), nil)
}

// Export implements driver.Transferer. If the agent fails after sending
// part of the archive, Export returns its error.
func (c *Client) Export(ctx context.Context, name string, w io.Writer) error {
	if err := c.checkOpen(); err != nil {
		return err
	}
	resp, err := c.roundTrip(ctx, http.MethodGet, apiPath("containers", name, "export"), nil, nil)
	if err != nil {
		return err
	}
	body := streamBody{resp}
	defer body.Close()
	_, err = io.Copy(w, body)
	return err
}

// Import implements driver.Transferer. If r fails or ctx is cancelled
// before the archive is sent, the agent's driver sees a broken stream and
// keeps nothing of it.
func (c *Client) Import(ctx context.Context, r io.Reader, rename string) (*driver.Info, error) {
	if err := c.checkOpen(); err != nil {
		return nil, err
	}
	path := apiPath("import")
	if rename != "" {
		path = apiPath("import", rename)
	}
	return decode[*driver.Info](c.roundTrip(ctx, http.MethodPost, path, nil, r))
}

// Endpoint implements driver.Endpoint: it returns the address the client
// dialled. Other agents dial it for Push and Pull, so it must be reachable
// from them, and the agent's certificate must name its host (they do not
// know ClientOptions.ServerName).
func (c *Client) Endpoint() string { return c.addr }

// Push implements driver.Pusher. The agent dials the agent at target with
// its own credentials and streams the container to it; cancelling ctx
// cancels both. progress receives the agent's reports.
func (c *Client) Push(ctx context.Context, name, target, rename string, progress func(bytes int64)) (*driver.Info, error) {
	if err := c.checkOpen(); err != nil {
		return nil, err
	}
	return c.transfer(ctx, apiPath("containers", name, "push"), transferRequest{Peer: target, Rename: rename}, progress)
}

// Pull implements driver.Puller. The agent dials the agent at source with
// its own credentials and streams the container from it; cancelling ctx
// cancels both. progress receives the agent's reports.
func (c *Client) Pull(ctx context.Context, source, name, rename string, progress func(bytes int64)) (*driver.Info, error) {
	if err := c.checkOpen(); err != nil {
		return nil, err
	}
	return c.transfer(ctx, apiPath("pull", name), transferRequest{Peer: source, Rename: rename}, progress)
}

// transfer runs a push or pull call: it passes the progress frames of the
// reply to progress (if not nil) and returns the outcome its last frame
// carries. A reply cut before that frame is errcode.Unavailable.
func (c *Client) transfer(ctx context.Context, path string, req transferRequest, progress func(int64)) (*driver.Info, error) {
	body, err := jsonBody(http.MethodPost, path, req)
	if err != nil {
		return nil, err
	}
	resp, err := c.roundTrip(ctx, http.MethodPost, path, nil, body)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	for {
		var f transferFrame
		if err := dec.Decode(&f); err != nil {
			switch {
			case err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF):
				err = errcode.New(errcode.Unavailable, "agent %s: the transfer's reply ended without an outcome", c.addr)
			case errcode.Of(err) == errcode.Unknown && !isContextError(err):
				err = errcode.New(errcode.Internal, "malformed transfer frame from the agent: %w", err)
			}
			return nil, err
		}
		switch {
		case f.Error != nil:
			if err := f.Error.Err(); err != nil {
				return nil, err
			}
			return nil, errcode.New(errcode.Internal, "agent %s: a transfer's error frame holds no error", c.addr)
		case f.Info != nil:
			return f.Info, nil
		case progress != nil:
			progress(f.Bytes)
		}
	}
}

// HostInfo implements driver.Host.
func (c *Client) HostInfo(ctx context.Context) (*driver.HostInfo, error) {
	if err := c.checkOpen(); err != nil {
		return nil, err
	}
	return call[*driver.HostInfo](ctx, c, http.MethodGet, apiPath("host"), nil)
}

// StartAutostart implements driver.Autostarter.
func (c *Client) StartAutostart(ctx context.Context) ([]string, error) {
	if err := c.checkOpen(); err != nil {
		return nil, err
	}
	return call[[]string](ctx, c, http.MethodPost, apiPath("autostart"), nil)
}

// call sends in (if not nil) as JSON and decodes the JSON reply.
func call[T any](ctx context.Context, c *Client, method, path string, in any) (T, error) {
	var body io.Reader
	if in != nil {
		var err error
		if body, err = jsonBody(method, path, in); err != nil {
			var zero T
			return zero, err
		}
	}
	return decode[T](c.roundTrip(ctx, method, path, nil, body))
}

// jsonBody encodes in as the body of a call.
func jsonBody(method, path string, in any) (io.Reader, error) {
	data, err := json.Marshal(in)
	if err != nil {
		return nil, errcode.New(errcode.InvalidArgument, "%s %s: %w", method, path, err)
	}
	return bytes.NewReader(data), nil
}

// do is call for calls that answer nothing but an error.
func do(ctx context.Context, c *Client, method, path string, in any) error {
	_, err := call[struct{}](ctx, c, method, path, in)
	return err
}

// decode reads the JSON reply of a successful roundTrip.
func decode[T any](resp *http.Response, err error) (T, error) {
	var v T
	if err != nil {
		return v, err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(io.LimitReader(resp.Body, wire.MaxJSONBody)).Decode(&v); err != nil {
		if errcode.Of(err) == errcode.Unknown && !isContextError(err) {
			err = errcode.New(errcode.Internal, "malformed reply from the agent: %w", err)
		}
		return v, err
	}
	return v, nil
}

// readList reads a list that the agent streams as JSON lines, decoding one
// item at a time and refusing an item over maxListItem bytes. An agent
// from before lists were streamed answers a JSON array instead, bounded by
// wire.MaxJSONBody. A reply cut short is an error, never a shorter list.
func readList[T any](ctx context.Context, c *Client, path string) ([]T, error) {
	resp, err := c.roundTrip(ctx, http.MethodGet, path, http.Header{"Accept": {listContentType}}, nil)
	if err != nil {
		return nil, err
	}
	if resp.Header.Get("Content-Type") != listContentType {
		return decode[[]T](resp, nil)
	}
	body := streamBody{resp}
	defer body.Close()
	r := bufio.NewReaderSize(body, 64<<10)
	items := []T{}
	for {
		line, err := readLine(r, maxListItem)
		if err == io.EOF {
			return items, nil
		}
		if err != nil {
			return nil, err
		}
		var item T
		if err := json.Unmarshal(line, &item); err != nil {
			return nil, errcode.New(errcode.Internal, "malformed list item %d from the agent: %w", len(items), err)
		}
		items = append(items, item)
	}
}

// readLine returns the next line of r without its newline, failing with
// errcode.Internal if it holds more than limit bytes. At the end of r it
// returns io.EOF, or r's error.
func readLine(r *bufio.Reader, limit int) ([]byte, error) {
	var line []byte
	for {
		frag, err := r.ReadSlice('\n')
		if len(line)+len(frag) > limit+1 {
			return nil, errcode.New(errcode.Internal, "the agent sent a list item over the limit of %d bytes", limit)
		}
		line = append(line, frag...)
		switch {
		case err == nil:
			return line[:len(line)-1], nil
		case err == bufio.ErrBufferFull:
		case err == io.EOF && len(line) > 0:
			return nil, errcode.New(errcode.Internal, "the agent's list ends within an item")
		default:
			return nil, err
		}
	}
}

// roundTrip sends a request whose body streams from body (nil for none)
// and returns the response of a successful call, or the error the agent
// sent. Errors reading the response body have codes too: ctx's error if it
// ended, errcode.Unavailable otherwise.
//
// Cancelling ctx ends the call promptly at any point, whatever the agent
// or body do: it closes the request body and the response body itself,
// since the HTTP/2 transport stops watching ctx once the response headers
// have arrived (a read of the response or of a stalled request body would
// then block until the peer acts).
func (c *Client) roundTrip(ctx context.Context, method, path string, hdr http.Header, body io.Reader) (*http.Response, error) {
	c.peers.sweep() // before a byte of the call goes to an agent that a new CRL revokes
	sourceErr := func() error { return nil }
	var pipe *io.PipeReader
	if _, ok := body.(*bytes.Reader); !ok && body != nil {
		pipe, sourceErr = pipeFrom(body)
		body = pipe
	}
	req, err := http.NewRequestWithContext(ctx, method, "https://"+c.addr+path, body)
	if err != nil {
		return nil, errcode.New(errcode.InvalidArgument, "%s %s: %w", method, path, err)
	}
	maps.Copy(req.Header, hdr)
	resp, err := c.tr.RoundTrip(req)
	if err != nil {
		if err := sourceErr(); err != nil {
			return nil, fmt.Errorf("reading the stream to send: %w", err)
		}
		return nil, c.transportError(ctx, err)
	}
	raw := resp.Body
	stop := context.AfterFunc(ctx, func() {
		if pipe != nil {
			pipe.CloseWithError(ctx.Err())
		}
		raw.Close()
	})
	resp.Body = &responseBody{ReadCloser: raw, c: c, ctx: ctx, stop: stop}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		return nil, wire.ResponseError(resp)
	}
	return resp, nil
}

// pipeFrom returns a reader of r's data whose Close interrupts a Read, and
// a function that returns r's error once r has failed. The transport
// closes the request body to abort a call, and so does roundTrip when ctx
// ends; without the pipe a body blocked in Read (an exec's idle stdin)
// would hold the call open. A goroutine copies r until it ends, fails or
// the pipe closes; the caller keeps ownership of r (it is not closed).
func pipeFrom(r io.Reader) (*io.PipeReader, func() error) {
	pr, pw := io.Pipe()
	var failed atomic.Pointer[error]
	go func() {
		_, err := io.Copy(pw, r)
		if err != nil && !errors.Is(err, io.ErrClosedPipe) { // not the transport closing the pipe
			failed.Store(&err)
		}
		pw.CloseWithError(err)
	}()
	return pr, func() error {
		if p := failed.Load(); p != nil {
			return *p
		}
		return nil
	}
}

// transportError gives err, which happened on the way to or from the
// agent, a code.
func (c *Client) transportError(ctx context.Context, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return ctxErr
	}
	if _, ok := errors.AsType[*tls.CertificateVerificationError](err); ok || errcode.Of(err) == errcode.PermissionDenied {
		return errcode.New(errcode.PermissionDenied, "agent %s: %w", c.addr, err)
	}
	return errcode.New(errcode.Unavailable, "agent %s: %w", c.addr, err)
}

func isContextError(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// responseBody gives read errors a code.
type responseBody struct {
	io.ReadCloser
	c    *Client
	ctx  context.Context
	stop func() bool // ends the watch on ctx
}

func (b *responseBody) Close() error {
	b.stop()
	return b.ReadCloser.Close()
}

func (b *responseBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF {
		err = b.c.transportError(b.ctx, err)
	}
	return n, err
}

// streamBody is a streamed reply: at its end it returns the error in the
// status trailer, or errcode.Unavailable if the trailer is missing.
type streamBody struct{ resp *http.Response }

func (s streamBody) Read(p []byte) (int, error) {
	n, err := s.resp.Body.Read(p)
	if err == io.EOF {
		var st wire.Status
		if headerJSON(s.resp.Trailer, statusHeader, &st) != nil {
			return n, errcode.New(errcode.Unavailable, "the agent's stream ended without a status")
		}
		if serr := st.Err(); serr != nil {
			return n, serr
		}
	}
	return n, err
}

func (s streamBody) Close() error { return s.resp.Body.Close() }
