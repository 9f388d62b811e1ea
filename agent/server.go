package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/musterkit/muster/agent/internal/wire"
	"github.com/musterkit/muster/agent/pki"
	"github.com/musterkit/muster/container/driver"
	"github.com/musterkit/muster/container/image"
	discdriver "github.com/musterkit/muster/discovery/driver"
	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/names"
	"github.com/musterkit/muster/network/preflight"
)

// ServerOptions configure a Server. The zero value is usable.
type ServerOptions struct {
	// Logger receives a record per call (debug for reads, info for
	// changes, with the caller's certificate name), an "agent audit"
	// record at info as every export, import, push, pull and exec (and
	// image upload and download) begins, and failed TLS handshakes at
	// warn, at most one record per HandshakeLogInterval; nil discards.
	Logger *slog.Logger
	// HandshakeLogInterval is how often at most failed TLS handshakes are
	// logged: the first at once, then a summary an interval with their
	// count and the last one's source. Default 1 minute.
	HandshakeLogInterval time.Duration
	// ShutdownTimeout bounds how long Serve lets calls in flight finish
	// once its context is done; then they are cancelled. Default 10s.
	ShutdownTimeout time.Duration
	// Services are the subsystems the server serves beside its container
	// driver, each under /v1/<its name>: NetworkService (see
	// Client.Network), *Balancers (Client.Balancer), *FloatingIPs
	// (Client.FloatingIP). The caller keeps them and closes them after
	// Serve returns. Network preflights are always served.
	Services []Service
}

// Server serves a driver to the cluster's agents and clients.
type Server struct {
	creds    pki.Source
	peers    *peerConns // the clients' connections, closed if a new CRL revokes them
	log      *slog.Logger
	shutdown time.Duration
	handler  http.Handler
	// handshakeLog is ServerOptions.HandshakeLogInterval (0: the default).
	handshakeLog time.Duration
}

// NewServer returns a Server that serves d with creds. d's optional
// interfaces (driver.Images, Snapshotter, Transferer, Host, Autostarter)
// are served if it implements them; their calls fail with
// errcode.Unimplemented otherwise. A d with driver.Transferer is also
// served as a driver.Pusher and driver.Puller: the Server then dials the
// other agent with creds, which therefore need UsageAgent. opts may be nil.
//
// creds is read at every handshake: with a *pki.Keyring the server
// presents the certificate it holds then, so it can be rotated without
// restarting Serve, and refuses clients (and, in pushes and pulls, peer
// agents) that its CRL revokes. A client already connected when its
// certificate is revoked is cut off: Serve closes its connections, calls
// in flight included, as soon as the Keyring holds the CRL, and every call
// is checked as well (errcode.PermissionDenied). The server takes new CRLs
// at PUT /v1/pki/crl (Client.PutCRL) if creds is a Keyring.
func NewServer(creds pki.Source, d driver.Driver, opts *ServerOptions) *Server {
	s := &Server{creds: creds, peers: newPeerConns(creds), log: slog.New(slog.DiscardHandler), shutdown: 10 * time.Second}
	if opts != nil {
		if opts.Logger != nil {
			s.log = opts.Logger
		}
		s.handshakeLog = opts.HandshakeLogInterval
		if opts.ShutdownTimeout > 0 {
			s.shutdown = opts.ShutdownTimeout
		}
	}
	if opts == nil {
		opts = &ServerOptions{}
	}
	s.handler = s.logged(s.unrevoked(s.routes(d, opts)))
	return s
}

// Serve accepts connections on l until ctx is done, then shuts down
// gracefully: calls in flight get ServerOptions.ShutdownTimeout to finish
// before they are cancelled. It returns nil after a shutdown, once every
// call has returned, or the listener's error. It closes l.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	var protocols http.Protocols
	protocols.SetHTTP2(true)
	handshakes := newHandshakeLog(s.log, s.handshakeLog)
	defer handshakes.close()
	srv := &http.Server{
		TLSConfig: pki.ServerConfig(s.creds),
		ConnState: s.peers.track,
		Protocols: &protocols,
		// Pings find clients that vanished without closing their
		// connection, so that their calls are cancelled.
		HTTP2:             &http.HTTP2Config{SendPingTimeout: 30 * time.Second},
		ReadHeaderTimeout: 30 * time.Second,
		ErrorLog:          log.New(handshakes, "", 0),
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	// Serve returns only once every call has: the driver is then idle.
	var calls sync.WaitGroup
	srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		defer calls.Done()
		s.handler.ServeHTTP(w, r)
	})
	done := make(chan error, 1)
	go func() { done <- srv.ServeTLS(l, "", "") }()
	sweepCtx, stopSweeping := context.WithCancel(ctx)
	defer stopSweeping()
	go s.peers.sweepOnChange(sweepCtx)
	var err error
	select {
	case err = <-done: // the listener failed
		srv.Close()
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), s.shutdown)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			s.log.Warn("agent: cancelling the calls still running at shutdown", "err", err)
			srv.Close()
		}
		if e := <-done; !errors.Is(e, http.ErrServerClosed) {
			err = e
		}
	}
	calls.Wait()
	return err
}

// logged logs every call with the caller's name and the reply's status.
func (s *Server) logged(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		began := time.Now()
		rec := &recorder{ResponseWriter: w, status: http.StatusOK}
		r, note := noting(r)
		h.ServeHTTP(rec, r)
		level := slog.LevelInfo
		switch {
		case rec.status >= 500 && rec.status != http.StatusNotImplemented:
			level = slog.LevelWarn
		case r.Method == http.MethodGet && !note.audited:
			level = slog.LevelDebug
		}
		s.log.Log(r.Context(), level, "agent call", "method", r.Method, "path", r.URL.Path,
			"peer", peerName(r), "status", rec.status, "duration", time.Since(began))
	})
}

// recorder remembers a response's status code.
type recorder struct {
	http.ResponseWriter
	status  int
	written bool
}

func (r *recorder) WriteHeader(code int) {
	if !r.written {
		r.status, r.written = code, true
	}
	r.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// routes maps the protocol onto d. A route of an optional interface that d
// lacks falls through to the catch-all, which answers Unimplemented.
func (s *Server) routes(d driver.Driver, opts *ServerOptions) *http.ServeMux {
	mux := http.NewServeMux()
	route := func(pattern string, h http.HandlerFunc) { mux.Handle(pattern, validated(h)) }
	services := append([]Service{preflightService{preflight.NewLocal(nil)}, pkiService{s.creds}}, opts.Services...)
	for _, svc := range services {
		svc.Routes(route)
	}
	caps := &capabilityDocument{services: services}
	route("GET /v1/capabilities", reply(func(r *http.Request) (map[string]map[string]any, error) { return caps.get(r.Context()) }))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		wire.WriteError(w, errcode.New(errcode.Unimplemented, "the agent's driver does not implement %s %s", r.Method, r.URL.Path))
	})

	route("GET /v1/ping", reply(func(r *http.Request) (any, error) { return struct{}{}, nil }))
	route("POST /v1/containers", reply(func(r *http.Request) (*driver.Info, error) {
		var spec driver.Spec
		if err := wire.DecodeBody(r, &spec); err != nil {
			return nil, err
		}
		if err := spec.Validate(); err != nil {
			return nil, err
		}
		return d.Create(r.Context(), &spec)
	}))
	route("GET /v1/containers", listReply(func(r *http.Request) ([]*driver.Info, error) { return d.List(r.Context()) }))
	route("GET /v1/containers/{name}", reply(func(r *http.Request) (*driver.Info, error) {
		return d.Get(r.Context(), r.PathValue("name"))
	}))
	route("DELETE /v1/containers/{name}", reply(func(r *http.Request) (any, error) {
		return nil, d.Delete(r.Context(), r.PathValue("name"))
	}))
	route("POST /v1/containers/{name}/start", reply(func(r *http.Request) (any, error) {
		return nil, d.Start(r.Context(), r.PathValue("name"))
	}))
	route("POST /v1/containers/{name}/stop", reply(func(r *http.Request) (any, error) {
		var req stopRequest
		if err := wire.DecodeBody(r, &req); err != nil {
			return nil, err
		}
		return nil, d.Stop(r.Context(), r.PathValue("name"), req.Timeout)
	}))
	route("POST /v1/containers/{name}/freeze", reply(func(r *http.Request) (any, error) {
		return nil, d.Freeze(r.Context(), r.PathValue("name"))
	}))
	route("POST /v1/containers/{name}/unfreeze", reply(func(r *http.Request) (any, error) {
		return nil, d.Unfreeze(r.Context(), r.PathValue("name"))
	}))
	route("POST /v1/containers/{name}/exec", func(w http.ResponseWriter, r *http.Request) { s.serveExec(w, r, d) })

	if sn, ok := d.(driver.Snapshotter); ok {
		route("POST /v1/containers/{name}/snapshots/{snapshot}", reply(func(r *http.Request) (any, error) {
			return nil, sn.Snapshot(r.Context(), r.PathValue("name"), r.PathValue("snapshot"))
		}))
		route("GET /v1/containers/{name}/snapshots", reply(func(r *http.Request) ([]driver.SnapshotInfo, error) {
			return sn.Snapshots(r.Context(), r.PathValue("name"))
		}))
		route("POST /v1/containers/{name}/snapshots/{snapshot}/restore", reply(func(r *http.Request) (any, error) {
			return nil, sn.Restore(r.Context(), r.PathValue("name"), r.PathValue("snapshot"))
		}))
		route("POST /v1/containers/{name}/clone/{dst}", reply(func(r *http.Request) (*driver.Info, error) {
			return sn.Clone(r.Context(), r.PathValue("name"), r.PathValue("dst"))
		}))
	}
	if t, ok := d.(driver.Transferer); ok {
		route("GET /v1/containers/{name}/export", func(w http.ResponseWriter, r *http.Request) {
			s.audit(r, "export")
			streamResponse(w, func(w io.Writer) error { return t.Export(r.Context(), r.PathValue("name"), w) })
		})
		// The name, if given, renames the imported container.
		importContainer := reply(func(r *http.Request) (*driver.Info, error) {
			s.audit(r, "import")
			return t.Import(r.Context(), requestStream{r.Body}, r.PathValue("name"))
		})
		route("POST /v1/import", importContainer)
		route("POST /v1/import/{name}", importContainer)
		route("POST /v1/containers/{name}/push", func(w http.ResponseWriter, r *http.Request) {
			s.serveTransfer(w, r, "push", func(ctx context.Context, peer *Client, rename string, progress func(int64)) (*driver.Info, error) {
				return driver.Pipe(ctx, t, r.PathValue("name"), peer, rename, progress)
			})
		})
		// The name is the container's on the peer.
		route("POST /v1/pull/{name}", func(w http.ResponseWriter, r *http.Request) {
			s.serveTransfer(w, r, "pull", func(ctx context.Context, peer *Client, rename string, progress func(int64)) (*driver.Info, error) {
				return driver.Pipe(ctx, peer, r.PathValue("name"), t, rename, progress)
			})
		})
	}
	if im, ok := d.(driver.Images); ok {
		route("PUT /v1/images/{name}", reply(func(r *http.Request) (*image.Manifest, error) {
			var m image.Manifest
			if err := headerJSON(r.Header, manifestHeader, &m); err != nil {
				return nil, err
			}
			if m.Name != r.PathValue("name") {
				return nil, errcode.New(errcode.InvalidArgument, "manifest name %q is not the path's %q", m.Name, r.PathValue("name"))
			}
			if m.Digest != "" && (!strings.HasPrefix(m.Digest, "sha256:") || driver.ValidImageRef(m.Digest) != nil) {
				return nil, errcode.New(errcode.InvalidArgument, "manifest digest %q is not sha256:<64 hex digits>", m.Digest)
			}
			s.audit(r, "image import")
			return im.PutImage(r.Context(), &m, requestStream{r.Body})
		}))
		route("GET /v1/images", listReply(func(r *http.Request) ([]*image.Manifest, error) { return im.ListImages(r.Context()) }))
		route("GET /v1/images/{ref}", reply(func(r *http.Request) (*image.Manifest, error) {
			return im.Image(r.Context(), r.PathValue("ref"))
		}))
		route("GET /v1/images/{ref}/blob", func(w http.ResponseWriter, r *http.Request) {
			s.audit(r, "image export")
			m, blob, err := im.OpenImage(r.Context(), r.PathValue("ref"))
			if err != nil {
				wire.WriteError(w, err)
				return
			}
			defer blob.Close()
			if err := setHeaderJSON(w.Header(), manifestHeader, m); err != nil {
				wire.WriteError(w, err)
				return
			}
			streamResponse(w, func(w io.Writer) error { _, err := io.Copy(w, blob); return err })
		})
		route("DELETE /v1/images/{ref}", reply(func(r *http.Request) (any, error) {
			return nil, im.DeleteImage(r.Context(), r.PathValue("ref"))
		}))
	}
	if h, ok := d.(driver.Host); ok {
		route("GET /v1/host", reply(func(r *http.Request) (*driver.HostInfo, error) { return h.HostInfo(r.Context()) }))
	}
	if a, ok := d.(driver.Autostarter); ok {
		route("POST /v1/autostart", reply(func(r *http.Request) ([]string, error) { return a.StartAutostart(r.Context()) }))
	}
	return mux
}

// stopRequest is the body of a stop call.
type stopRequest struct {
	Timeout time.Duration `json:"timeout"`
}

// serveTransfer serves a push or a pull (action): it checks the request,
// dials the peer agent with the server's own credentials, and runs pipe
// between the two, cancelled if the caller goes away. Errors up to the
// dial are ordinary error replies; then the reply streams transferFrames.
func (s *Server) serveTransfer(w http.ResponseWriter, r *http.Request, action string, pipe func(ctx context.Context, peer *Client, rename string, progress func(int64)) (*driver.Info, error)) {
	var req transferRequest
	if err := wire.DecodeBody(r, &req); err != nil {
		wire.WriteError(w, err)
		return
	}
	if err := req.validate(); err != nil {
		wire.WriteError(w, err)
		return
	}
	s.audit(r, action, "agent", req.Peer, "rename", req.Rename)
	peer, err := Dial(r.Context(), req.Peer, s.creds, nil)
	if err != nil {
		wire.WriteError(w, fmt.Errorf("peer: %w", err))
		return
	}
	defer peer.Close()
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	send := func(f transferFrame) {
		if enc.Encode(f) == nil {
			rc.Flush()
		}
	}
	info, err := pipe(r.Context(), peer, req.Rename, func(n int64) { send(transferFrame{Bytes: n}) })
	if err != nil {
		st := wire.StatusOf(err)
		send(transferFrame{Error: &st})
		return
	}
	send(transferFrame{Info: info})
}

// validate checks a push or pull request.
func (req *transferRequest) validate() error {
	if req.Rename != "" {
		if err := names.Label(req.Rename); err != nil {
			return fmt.Errorf("rename: %w", err)
		}
	}
	host, port, err := net.SplitHostPort(req.Peer)
	if err != nil {
		return errcode.New(errcode.InvalidArgument, "peer address %q is not host:port", req.Peer)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return errcode.New(errcode.InvalidArgument, "peer address %q: port %q is not 1 to 65535", req.Peer, port)
	}
	if a, err := netip.ParseAddr(host); err == nil {
		if a.Zone() != "" || a.IsUnspecified() {
			return errcode.New(errcode.InvalidArgument, "peer address %q: the IP address must be specified and have no zone", req.Peer)
		}
		return nil
	}
	if len(host) > 253 {
		return errcode.New(errcode.InvalidArgument, "peer address %q: the host name is longer than 253 bytes", req.Peer)
	}
	for label := range strings.SplitSeq(host, ".") {
		if err := names.Label(label); err != nil {
			return errcode.New(errcode.InvalidArgument, "peer address %q: the host is neither an IP address nor a DNS name: %w", req.Peer, err)
		}
	}
	return nil
}

// pathValidators check the path wildcards that are not DNS labels.
var pathValidators = map[string]func(string) error{
	"ref":      driver.ValidImageRef,
	"instance": discdriver.ValidID,
}

// validated checks every wildcard of the route's pattern before h runs: a
// "ref" is an image reference, an "instance" a discovery instance ID,
// anything else a name (a DNS label).
func validated(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		for _, seg := range strings.Split(r.Pattern, "/") {
			key, ok := strings.CutPrefix(seg, "{")
			if !ok {
				continue
			}
			key = strings.TrimSuffix(key, "}")
			valid, ok := pathValidators[key]
			if !ok {
				valid = names.Label
			}
			if err := valid(r.PathValue(key)); err != nil {
				wire.WriteError(w, errcode.New(errcode.InvalidArgument, "%s: %w", key, err))
				return
			}
		}
		h(w, r)
	}
}

// reply serves a call whose answer is JSON.
func reply[T any](f func(r *http.Request) (T, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		v, err := f(r)
		if err != nil {
			wire.WriteError(w, err)
			return
		}
		wire.WriteJSON(w, http.StatusOK, v)
	}
}

// listReply serves a call whose answer is a list. A client that accepts
// listContentType gets it as JSON lines, one item a line, streamed with a
// status trailer (see streamResponse), so no bound applies to the whole
// list, only to each item (maxListItem). Other clients, from before lists
// were streamed, get a JSON array, bounded by wire.MaxJSONBody.
func listReply[T any](f func(r *http.Request) ([]T, error)) http.HandlerFunc {
	array := reply(f)
	return func(w http.ResponseWriter, r *http.Request) {
		if !accepts(r, listContentType) {
			array(w, r)
			return
		}
		items, err := f(r)
		if err != nil {
			wire.WriteError(w, err)
			return
		}
		w.Header().Set("Content-Type", listContentType)
		streamResponse(w, func(w io.Writer) error {
			enc := json.NewEncoder(w)
			enc.SetEscapeHTML(false) // so an item grows no larger than maxListItem allows for
			for _, item := range items {
				if err := enc.Encode(item); err != nil {
					return err
				}
			}
			return nil
		})
	}
}

// accepts reports whether the request's Accept header lists mediaType.
func accepts(r *http.Request, mediaType string) bool {
	for _, h := range r.Header.Values("Accept") {
		for t := range strings.SplitSeq(h, ",") {
			t, _, _ = strings.Cut(t, ";")
			if strings.EqualFold(strings.TrimSpace(t), mediaType) {
				return true
			}
		}
	}
	return false
}

// streamResponse serves a call whose answer is a stream that produce
// writes. An error before the first byte is an ordinary error reply; after
// it, the error travels in the status trailer, which a success carries too,
// so a client tells a complete stream from a cut one.
func streamResponse(w http.ResponseWriter, produce func(io.Writer) error) {
	sw := &startWriter{w: w}
	err := produce(sw)
	if err != nil && !sw.started {
		wire.WriteError(w, err)
		return
	}
	setHeaderJSON(w.Header(), http.TrailerPrefix+statusHeader, wire.StatusOf(err))
	sw.start()
}

// startWriter sends the response header before the first byte of the body,
// with Content-Type application/octet-stream unless the handler set one.
type startWriter struct {
	w       http.ResponseWriter
	started bool
}

func (s *startWriter) start() {
	if !s.started {
		s.started = true
		if s.w.Header().Get("Content-Type") == "" {
			s.w.Header().Set("Content-Type", "application/octet-stream")
		}
		s.w.WriteHeader(http.StatusOK)
	}
}

func (s *startWriter) Write(p []byte) (int, error) {
	s.start()
	return s.w.Write(p)
}

// requestStream is a streamed request body. A client that dies or
// cancels mid-stream makes it fail with io.ErrUnexpectedEOF (wrapping the
// cause), the usual sign of a cut stream, never with a clean io.EOF.
type requestStream struct{ body io.Reader }

func (s requestStream) Read(p []byte) (int, error) {
	n, err := s.body.Read(p)
	if err != nil && err != io.EOF {
		err = fmt.Errorf("%w: the client's stream broke: %w", io.ErrUnexpectedEOF, err)
	}
	return n, err
}

// serveExec runs a process with the request body as its stdin and streams
// its output and exit status as frames. Output flows while stdin is still
// arriving (HTTP/2 is full duplex); the request's context is the driver's,
// so a client that goes away kills the process.
func (s *Server) serveExec(w http.ResponseWriter, r *http.Request, d driver.Driver) {
	var p driver.Process
	if err := headerJSON(r.Header, processHeader, &p); err != nil {
		wire.WriteError(w, err)
		return
	}
	if len(p.Args) == 0 || p.Args[0] == "" {
		wire.WriteError(w, errcode.New(errcode.InvalidArgument, "exec: no program given"))
		return
	}
	s.audit(r, "exec", "program", p.Args[0])
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "application/octet-stream")
	w.WriteHeader(http.StatusOK)
	if err := rc.Flush(); err != nil {
		return
	}
	fw := &frameWriter{w: w, flush: rc.Flush}
	p.Stdin, p.Stdout, p.Stderr = requestStream{r.Body}, output{fw, frameStdout}, output{fw, frameStderr}
	code, err := d.Exec(r.Context(), r.PathValue("name"), &p)
	fw.finish(code, err)
}
