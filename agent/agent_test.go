package agent

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/musterkit/muster/agent/pki"
	"github.com/musterkit/muster/container/driver"
	"github.com/musterkit/muster/container/drivertest"
	"github.com/musterkit/muster/container/image"
	"github.com/musterkit/muster/container/memcontainer"
	discdriver "github.com/musterkit/muster/discovery/driver"
	"github.com/musterkit/muster/errcode"
	netdriver "github.com/musterkit/muster/network/driver"
)

// memServer returns an in-memory server holding the base image.
func memServer(t testing.TB) *memcontainer.Driver {
	d := memcontainer.New(&memcontainer.Options{Bridges: []string{"br-test"}})
	m, blob := drivertest.BaseImage(t)
	if _, err := d.PutImage(context.Background(), m, bytes.NewReader(blob)); err != nil {
		t.Fatal(err)
	}
	return d
}

var loopback = []netip.Addr{netip.MustParseAddr("127.0.0.1")}

// cluster is a CA with credentials for one agent and one client.
type cluster struct {
	ca            *pki.CA
	agent, client *pki.Credentials
	serverLog     *logBuffer
	networks      map[netdriver.Mode]netdriver.Driver // served by serve
	balancers     *Balancers                          // served by serve
	floating      *FloatingIPs                        // served by serve
	discovery     discdriver.Driver                   // served by serve
	storage       *Storage                            // served by serve

	// serverLogLevel is the level of the records serverLog keeps: Debug
	// if nil. handshakeLogInterval is the servers' HandshakeLogInterval.
	serverLogLevel       slog.Leveler
	handshakeLogInterval time.Duration
}

func newCluster(t testing.TB, opts *pki.CAOptions) *cluster {
	t.Helper()
	ca, err := pki.NewCA("test-cluster", opts)
	if err != nil {
		t.Fatal(err)
	}
	agent, err := ca.Issue("agent0", loopback, time.Hour, pki.UsageAgent)
	if err != nil {
		t.Fatal(err)
	}
	client, err := ca.Issue("cli", nil, time.Hour, pki.UsageClient)
	if err != nil {
		t.Fatal(err)
	}
	return &cluster{ca: ca, agent: agent, client: client, serverLog: &logBuffer{}}
}

// serve runs a Server for d on loopback until the test ends, and checks
// that it then stops cleanly.
func (cl *cluster) serve(t testing.TB, d driver.Driver) string {
	t.Helper()
	return cl.serveUntil(t, context.Background(), d)
}

// serveUntil is serve until ctx ends or the test does.
func (cl *cluster) serveUntil(t testing.TB, ctx context.Context, d driver.Driver) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	var services []Service
	if cl.networks != nil {
		services = append(services, NetworkService(cl.networks))
	}
	if cl.balancers != nil {
		services = append(services, cl.balancers)
	}
	if cl.floating != nil {
		services = append(services, cl.floating)
	}
	if cl.discovery != nil {
		services = append(services, DiscoveryService("memory", cl.discovery))
	}
	if cl.storage != nil {
		services = append(services, cl.storage)
	}
	level := cl.serverLogLevel
	if level == nil {
		level = slog.LevelDebug
	}
	srv := NewServer(cl.agent, d, &ServerOptions{Logger: cl.serverLog.loggerAt(level), ShutdownTimeout: time.Second, Services: services, HandshakeLogInterval: cl.handshakeLogInterval})
	go func() { done <- srv.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return l.Addr().String()
}

func (cl *cluster) dial(t testing.TB, addr string) *Client {
	t.Helper()
	c, err := Dial(context.Background(), addr, cl.client, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// remote serves d and returns a client of it.
func remote(t testing.TB, d driver.Driver) *Client {
	cl := newCluster(t, nil)
	return cl.dial(t, cl.serve(t, d))
}

func TestConformance(t *testing.T) {
	drivertest.RunConformanceTests(t, drivertest.Harness{
		Open:        func(t *testing.T) driver.Driver { return remote(t, memServer(t)) },
		Image:       "base",
		Bridge:      "br-test",
		Subnet:      netip.MustParsePrefix("198.19.0.0/24"),
		MountSource: t.TempDir(),
	})
}

// tlsRead opens a raw TLS connection to addr presenting cert (none if nil)
// and reads the first byte: an agent that accepts the client sends its
// HTTP/2 settings, one that refuses it sends an alert.
func tlsRead(addr string, roots *x509.CertPool, cert *tls.Certificate) error {
	conn, err := tls.Dial("tcp", addr, &tls.Config{
		RootCAs:    roots,
		ServerName: "127.0.0.1",
		NextProtos: []string{"h2"},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if cert == nil {
				return &tls.Certificate{}, nil
			}
			return cert, nil
		},
	})
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	_, err = conn.Read(make([]byte, 1))
	return err
}

func TestMutualTLSRefusals(t *testing.T) {
	cl := newCluster(t, nil)
	addr := cl.serve(t, memServer(t))
	if err := tlsRead(addr, cl.client.CAPool, &cl.client.Cert); err != nil {
		t.Fatalf("a valid client certificate was refused: %v", err)
	}

	other := newCluster(t, nil)
	expired, err := cl.ca.IssueBetween("late", nil, time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour), pki.UsageAgent)
	if err != nil {
		t.Fatal(err)
	}
	serverOnly, err := cl.ca.Issue("server-only", nil, time.Hour, pki.UsageServer)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		cert *tls.Certificate
	}{
		{"no certificate", nil},
		{"another CA", &other.client.Cert},
		{"expired", &expired.Cert},
		{"server usage only", &serverOnly.Cert},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := tlsRead(addr, cl.client.CAPool, tt.cert)
			if oe, ok := errors.AsType[*net.OpError](err); !ok || oe.Op != "remote error" {
				t.Fatalf("TLS connection: got %v, want a TLS alert from the agent", err)
			}
			creds := &pki.Credentials{CAPool: cl.client.CAPool}
			if tt.cert != nil {
				creds.Cert = *tt.cert
			}
			if c, err := Dial(context.Background(), addr, creds, nil); err == nil {
				c.Close()
				t.Fatal("Dial succeeded")
			}
		})
	}
	if n := strings.Count(cl.serverLog.String(), "agent call"); n != 0 {
		t.Fatalf("the agent served %d calls to refused clients:\n%s", n, cl.serverLog)
	}

	t.Run("server from another CA", func(t *testing.T) {
		_, err := Dial(context.Background(), other.serve(t, memServer(t)), cl.client, nil)
		if !errors.Is(err, errcode.PermissionDenied) {
			t.Fatalf("Dial to an agent of another CA: got %v, want PermissionDenied", err)
		}
	})
	t.Run("wrong server name", func(t *testing.T) {
		_, err := Dial(context.Background(), addr, cl.client, &ClientOptions{ServerName: "agent9"})
		if !errors.Is(err, errcode.PermissionDenied) {
			t.Fatalf("Dial expecting another agent: got %v, want PermissionDenied", err)
		}
		c, err := Dial(context.Background(), addr, cl.client, &ClientOptions{ServerName: "agent0"})
		if err != nil {
			t.Fatalf("Dial by the agent's DNS name: %v", err)
		}
		c.Close()
	})
}

func TestUnreachable(t *testing.T) {
	cl := newCluster(t, nil)
	addr := closedPort(t)
	if _, err := Dial(context.Background(), addr, cl.client, nil); !errors.Is(err, errcode.Unavailable) {
		t.Fatalf("Dial to a closed port: got %v, want Unavailable", err)
	}
}

func TestExecStreamsLargeStdin(t *testing.T) {
	c := remote(t, memServer(t))
	ctx := context.Background()
	if _, err := c.Create(ctx, &driver.Spec{Name: "ex", Image: "base"}); err != nil {
		t.Fatal(err)
	}
	if err := c.Start(ctx, "ex"); err != nil {
		t.Fatal(err)
	}
	in := make([]byte, 10<<20)
	rand.Read(in)
	var out, errOut bytes.Buffer
	code, err := c.Exec(ctx, "ex", &driver.Process{Args: []string{"cat"}, Stdin: bytes.NewReader(in), Stdout: &out, Stderr: &errOut})
	if err != nil || code != 0 {
		t.Fatalf("cat: code %d, err %v", code, err)
	}
	if !bytes.Equal(out.Bytes(), in) || errOut.Len() != 0 {
		t.Fatalf("cat returned %d of %d bytes (equal %v), stderr %q", out.Len(), len(in), bytes.Equal(out.Bytes(), in), errOut.String())
	}
	out.Reset()
	code, err = c.Exec(ctx, "ex", &driver.Process{Args: []string{"cat", "/etc/hostname", "/nonexistent"}, Stdout: &out, Stderr: &errOut})
	if err != nil || code != 1 || out.String() != "ex\n" || !strings.Contains(errOut.String(), "nonexistent") {
		t.Fatalf("cat of one file and a missing one: code %d, err %v, stdout %q, stderr %q", code, err, out.String(), errOut.String())
	}
}

// blockingExec's Exec waits for its context and reports how it ended.
type blockingExec struct {
	driver.Driver
	started chan struct{}
	ended   chan error
}

func (b *blockingExec) Exec(ctx context.Context, name string, p *driver.Process) (int, error) {
	close(b.started)
	<-ctx.Done()
	b.ended <- ctx.Err()
	return -1, ctx.Err()
}

func TestExecCancelReachesDriver(t *testing.T) {
	d := &blockingExec{Driver: memServer(t), started: make(chan struct{}), ended: make(chan error, 1)}
	c := remote(t, d)
	stdin, w := io.Pipe() // stdin stays open
	defer w.Close()
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-d.started
		cancel()
	}()
	_, err := c.Exec(ctx, "x", &driver.Process{Args: []string{"sleep", "60"}, Stdin: stdin})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Exec returned %v, want context.Canceled", err)
	}
	select {
	case err := <-d.ended:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("driver's context ended with %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the driver's context was not cancelled")
	}
}

// codeDriver's Get fails with the errcode whose number is the name's
// last digit ("code3" -> InvalidArgument); it has no optional interfaces.
type codeDriver struct {
	driver.Driver
	gets int
}

func (d *codeDriver) Get(ctx context.Context, name string) (*driver.Info, error) {
	d.gets++
	c := errcode.Code(name[len(name)-1] - '0')
	return nil, errcode.New(c, "container %q: failed with %v", name, c)
}

func TestErrorsKeepTheirCode(t *testing.T) {
	d := &codeDriver{Driver: memServer(t)}
	c := remote(t, d)
	ctx := context.Background()
	for code := errcode.Unknown; code <= errcode.Internal; code++ {
		name := fmt.Sprintf("code%d", code)
		_, err := c.Get(ctx, name)
		if errcode.Of(err) != code || !errors.Is(err, code) {
			t.Errorf("Get(%s): got %v with code %v, want code %v", name, err, errcode.Of(err), code)
		}
		if want := fmt.Sprintf("container %q: failed with %v", name, code); err == nil || err.Error() != want {
			t.Errorf("Get(%s): message %q, want %q", name, err, want)
		}
	}

	gets := d.gets
	for _, name := range []string{"../etc", "Upper", "a b", "x/y", strings.Repeat("a", 64), "-dash"} {
		if _, err := c.Get(ctx, name); !errors.Is(err, errcode.InvalidArgument) {
			t.Errorf("Get(%q): got %v, want InvalidArgument", name, err)
		}
	}
	if _, err := c.Create(ctx, &driver.Spec{Name: "ok", Image: "base", Mounts: []driver.Mount{{Source: "relative", Target: "/mnt"}}}); !errors.Is(err, errcode.InvalidArgument) {
		t.Errorf("Create with a relative mount source: got %v, want InvalidArgument", err)
	}
	if d.gets != gets {
		t.Errorf("invalid names reached the driver %d times", d.gets-gets)
	}

	mem := remote(t, memServer(t))
	for _, ref := range []string{"sha256:abc", "sha256:" + strings.Repeat("A", 64), "Base", "../base"} {
		if _, err := mem.Image(ctx, ref); !errors.Is(err, errcode.InvalidArgument) {
			t.Errorf("Image(%q): got %v, want InvalidArgument", ref, err)
		}
	}

	// codeDriver hides memcontainer's optional interfaces.
	if err := c.Snapshot(ctx, "x", "s"); !errors.Is(err, errcode.Unimplemented) {
		t.Errorf("Snapshot on a driver without snapshots: got %v, want Unimplemented", err)
	}
	if _, err := c.HostInfo(ctx); !errors.Is(err, errcode.Unimplemented) {
		t.Errorf("HostInfo on a driver without it: got %v, want Unimplemented", err)
	}
	m, blob := drivertest.BaseImage(t)
	if _, err := c.PutImage(ctx, m, bytes.NewReader(blob)); !errors.Is(err, errcode.Unimplemented) {
		t.Errorf("PutImage on a driver without images: got %v, want Unimplemented", err)
	}
}

// failingStreams is a memcontainer whose Export and image blobs fail after
// sending part of their data.
type failingStreams struct {
	*memcontainer.Driver
}

var errDisk = errcode.New(errcode.Internal, "disk on fire")

func (f failingStreams) Export(ctx context.Context, name string, w io.Writer) error {
	if _, err := f.Driver.Get(ctx, name); err != nil {
		return err
	}
	if _, err := w.Write(make([]byte, 1<<20)); err != nil {
		return err
	}
	return errDisk
}

func (f failingStreams) OpenImage(ctx context.Context, ref string) (*image.Manifest, io.ReadCloser, error) {
	m, rc, err := f.Driver.OpenImage(ctx, ref)
	if err != nil {
		return nil, nil, err
	}
	blob, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		return nil, nil, err
	}
	return m, io.NopCloser(io.MultiReader(bytes.NewReader(blob[:len(blob)/2]), failingReader{errDisk})), nil
}

type failingReader struct{ err error }

func (f failingReader) Read([]byte) (int, error) { return 0, f.err }

func TestStreamErrorAfterBodyStarted(t *testing.T) {
	d := failingStreams{memServer(t)}
	c := remote(t, d)
	ctx := context.Background()
	if _, err := c.Create(ctx, &driver.Spec{Name: "ex", Image: "base"}); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	err := c.Export(ctx, "ex", &buf)
	if !errors.Is(err, errcode.Internal) || !strings.Contains(fmt.Sprint(err), "disk on fire") {
		t.Fatalf("Export failing after 1 MiB: got %v, want the driver's Internal error", err)
	}
	if buf.Len() != 1<<20 {
		t.Fatalf("Export passed on %d bytes before the error, want %d", buf.Len(), 1<<20)
	}
	if err := c.Export(ctx, "missing", &buf); !errors.Is(err, errcode.NotFound) {
		t.Fatalf("Export of a missing container: got %v, want NotFound", err)
	}

	m, rc, err := c.OpenImage(ctx, "base")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if base, _ := drivertest.BaseImage(t); m.Digest != base.Digest {
		t.Fatalf("OpenImage manifest digest %s, want %s", m.Digest, base.Digest)
	}
	if _, err := io.ReadAll(rc); !errors.Is(err, errcode.Internal) {
		t.Fatalf("reading a blob that fails half way: got %v, want Internal", err)
	}
}

// watchedImport reports how the stream of every Import its driver runs
// ended, and the Import's outcome.
type watchedImport struct {
	*memcontainer.Driver
	reading chan struct{} // closed once the driver has read some of the stream
	done    chan importResult
}

type importResult struct {
	streamErr, err error
}

func (w *watchedImport) Import(ctx context.Context, r io.Reader, rename string) (*driver.Info, error) {
	s := &watchedStream{r: r, reading: w.reading}
	info, err := w.Driver.Import(ctx, s, rename)
	// The driver may stop at its context's end before the stream's: read
	// on to see how the stream itself ends.
	io.Copy(io.Discard, s)
	w.done <- importResult{s.err, err}
	return info, err
}

type watchedStream struct {
	r       io.Reader
	reading chan struct{}
	once    sync.Once
	err     error // the first error other than io.EOF
}

func (s *watchedStream) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if n > 0 {
		s.once.Do(func() { close(s.reading) })
	}
	if err != nil && err != io.EOF && s.err == nil {
		s.err = err
	}
	return n, err
}

func TestImportBrokenStreamLeavesNothing(t *testing.T) {
	ctx := context.Background()
	src := memServer(t)
	if _, err := src.Create(ctx, &driver.Spec{Name: "mover", Image: "base"}); err != nil {
		t.Fatal(err)
	}
	var archive bytes.Buffer
	if err := src.Export(ctx, "mover", &archive); err != nil {
		t.Fatal(err)
	}
	half := archive.Bytes()[:archive.Len()/2]

	for _, tt := range []struct {
		name    string
		rest    func(cancel func()) io.Reader // what the client sends after half the archive
		wantErr error                         // what the client's Import returns
	}{
		{"client cancelled", func(cancel func()) io.Reader { return cancelOnRead{cancel} }, context.Canceled},
		{"source fails", func(func()) io.Reader { return failingReader{errDisk} }, errDisk},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := &watchedImport{Driver: memServer(t), reading: make(chan struct{}), done: make(chan importResult, 1)}
			c := remote(t, d)
			ctx, cancel := context.WithCancel(ctx)
			defer cancel()
			// The rest is sent once the driver is reading, so the break
			// happens mid-stream.
			rest := &waitThen{wait: d.reading, r: tt.rest(cancel)}
			_, err := c.Import(ctx, io.MultiReader(bytes.NewReader(half), rest), "copy")
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Import: got %v, want %v", err, tt.wantErr)
			}
			select {
			case res := <-d.done:
				if !errors.Is(res.streamErr, io.ErrUnexpectedEOF) || res.err == nil {
					t.Fatalf("the driver read %v and its Import returned %v; want io.ErrUnexpectedEOF and an error", res.streamErr, res.err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the driver's Import did not end")
			}
			if infos, err := d.List(ctx); err != nil || len(infos) != 0 {
				t.Fatalf("after a broken import the server holds %d containers (%v)", len(infos), err)
			}
		})
	}
}

// cancelOnRead cancels the call when read.
type cancelOnRead struct{ cancel func() }

func (c cancelOnRead) Read([]byte) (int, error) {
	c.cancel()
	select {} // the transport gives up on the body; the read never returns
}

// waitThen reads r once wait is closed.
type waitThen struct {
	wait chan struct{}
	r    io.Reader
}

func (w *waitThen) Read(p []byte) (int, error) {
	<-w.wait
	return w.r.Read(p)
}

func TestShutdownCancelsCallsInFlight(t *testing.T) {
	cl := newCluster(t, nil)
	d := &blockingExec{Driver: memServer(t), started: make(chan struct{}), ended: make(chan error, 1)}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- NewServer(cl.agent, d, &ServerOptions{ShutdownTimeout: 200 * time.Millisecond}).Serve(ctx, l)
	}()
	c := cl.dial(t, l.Addr().String())
	execErr := make(chan error, 1)
	go func() {
		_, err := c.Exec(context.Background(), "x", &driver.Process{Args: []string{"sleep", "60"}})
		execErr <- err
	}()
	<-d.started
	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after its context ended")
	}
	select {
	case err := <-d.ended:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("driver's exec context: %v", err)
		}
	default:
		t.Fatal("Serve returned before the call in flight ended")
	}
	if err := <-execErr; !errors.Is(err, errcode.Unavailable) {
		t.Fatalf("Exec cut by shutdown: got %v, want Unavailable", err)
	}
	if _, err := c.List(context.Background()); !errors.Is(err, errcode.Unavailable) {
		t.Fatalf("List after shutdown: got %v, want Unavailable", err)
	}
}

// exportDriver's Export writes size zero bytes.
type exportDriver struct {
	driver.Driver
	chunk []byte
	size  int
}

func (e *exportDriver) Export(ctx context.Context, name string, w io.Writer) error {
	for n := 0; n < e.size; n += len(e.chunk) {
		if _, err := w.Write(e.chunk); err != nil {
			return err
		}
	}
	return nil
}

func (e *exportDriver) Import(context.Context, io.Reader, string) (*driver.Info, error) {
	return nil, errcode.New(errcode.Unimplemented, "no import")
}

func BenchmarkRemoteExport(b *testing.B) {
	d := &exportDriver{Driver: memcontainer.New(nil), chunk: make([]byte, 256<<10), size: 64 << 20}
	c := remote(b, d)
	ctx := context.Background()
	b.SetBytes(int64(d.size))
	for b.Loop() {
		if err := c.Export(ctx, "x", io.Discard); err != nil {
			b.Fatal(err)
		}
	}
}

// logBuffer collects log output.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuffer) logger() *slog.Logger { return l.loggerAt(slog.LevelDebug) }

// loggerAt returns a logger into l that keeps records at level or above.
func (l *logBuffer) loggerAt(level slog.Leveler) *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: level}))
}
