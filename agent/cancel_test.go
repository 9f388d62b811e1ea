package agent

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/musterkit/muster/container/driver"
	"github.com/musterkit/muster/container/image"
	"github.com/musterkit/muster/errcode"
	hadriver "github.com/musterkit/muster/ha/driver"
	"github.com/musterkit/muster/ha/memha"
)

// stalling is a driver whose streaming calls send or take a little and
// then stall, ignoring their context, until the test ends: a peer that
// never gives up.
type stalling struct {
	driver.Driver
	stalled chan struct{} // closed when a call stalls
	release chan struct{} // closed when the test ends
	// silent: Export sends nothing before it stalls (a puller would
	// refuse the first bytes of a made-up archive, and end early).
	silent bool
}

func newStalling(t *testing.T) *stalling {
	s := &stalling{Driver: memServer(t), stalled: make(chan struct{}), release: make(chan struct{})}
	return s
}

// stall signals that a call stalled and waits for the test's end.
func (s *stalling) stall() {
	s.signal()
	<-s.release
}

// signal closes stalled once.
func (s *stalling) signal() {
	select {
	case <-s.stalled:
	default:
		close(s.stalled)
	}
}

func (s *stalling) Exec(ctx context.Context, name string, p *driver.Process) (int, error) {
	if p.Stdout != nil {
		p.Stdout.Write([]byte("partial output\n"))
	}
	s.stall()
	return -1, errors.New("released")
}

func (s *stalling) Export(ctx context.Context, name string, w io.Writer) error {
	if !s.silent {
		w.Write(make([]byte, 64<<10))
	}
	s.stall()
	return errors.New("released")
}

func (s *stalling) Import(ctx context.Context, r io.Reader, rename string) (*driver.Info, error) {
	s.signal()
	io.Copy(io.Discard, r)
	s.stall()
	return nil, errors.New("released")
}

func (s *stalling) PutImage(ctx context.Context, m *image.Manifest, blob io.Reader) (*image.Manifest, error) {
	s.signal()
	io.Copy(io.Discard, blob)
	s.stall()
	return nil, errors.New("released")
}

func (s *stalling) OpenImage(ctx context.Context, ref string) (*image.Manifest, io.ReadCloser, error) {
	m, blob, err := s.Driver.(driver.Images).OpenImage(ctx, ref)
	if err != nil {
		return nil, nil, err
	}
	blob.Close()
	return m, io.NopCloser(io.MultiReader(bytes.NewReader(make([]byte, 64<<10)), stallReader{s})), nil
}

func (s *stalling) Image(ctx context.Context, ref string) (*image.Manifest, error) {
	return s.Driver.(driver.Images).Image(ctx, ref)
}

func (s *stalling) ListImages(ctx context.Context) ([]*image.Manifest, error) {
	return s.Driver.(driver.Images).ListImages(ctx)
}

func (s *stalling) DeleteImage(ctx context.Context, ref string) error {
	return s.Driver.(driver.Images).DeleteImage(ctx, ref)
}

// stallReader stalls its stalling driver on the first Read.
type stallReader struct{ s *stalling }

func (r stallReader) Read([]byte) (int, error) {
	r.s.stall()
	return 0, io.ErrUnexpectedEOF
}

// stalledInput is a caller's reader that never yields: a terminal nobody
// types into.
type stalledInput struct{ release chan struct{} }

func (r stalledInput) Read([]byte) (int, error) {
	<-r.release
	return 0, io.EOF
}

// firstWrite closes its channel on the first Write: the caller has
// received part of a stream, so the response's headers have arrived.
type firstWrite chan struct{}

func (f firstWrite) Write(p []byte) (int, error) {
	select {
	case <-f:
	default:
		close(f)
	}
	return len(p), nil
}

// cancelled calls call with a context it cancels once stalled is closed,
// and fails unless call returns the
// context's error within a few seconds.
func cancelled(t *testing.T, stalled <-chan struct{}, call func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- call(ctx) }()
	select {
	case <-stalled:
	case err := <-done:
		t.Fatalf("the call returned before it stalled: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the call never reached its stall")
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) || errcode.Of(err) != errcode.Canceled {
			t.Fatalf("a cancelled call returned %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the call did not return within 5 s of its cancellation")
	}
}

// TestStreamingCallsEndWhenCancelled cancels every streaming call of the
// client while the peer stalls (ignoring cancellation) or the caller's
// input stalls, and checks that each returns promptly.
func TestStreamingCallsEndWhenCancelled(t *testing.T) {
	setup := func(t *testing.T) (*stalling, *Client, stalledInput) {
		s := newStalling(t)
		cl := newCluster(t, nil)
		c := cl.dial(t, cl.serve(t, s))
		in := stalledInput{release: make(chan struct{})}
		t.Cleanup(func() { close(s.release); close(in.release) }) // runs before the server stops
		return s, c, in
	}
	ctx := context.Background()
	cases := map[string]func(t *testing.T){
		"exec, stalled stdin and peer": func(t *testing.T) {
			_, c, in := setup(t)
			got := make(firstWrite)
			cancelled(t, got, func(ctx context.Context) error {
				_, err := c.Exec(ctx, "x", &driver.Process{Args: []string{"sh"}, Stdin: in, Stdout: got})
				return err
			})
		},
		"exec, stalled stdin": func(t *testing.T) {
			d := &blockingExec{Driver: memServer(t), started: make(chan struct{}), ended: make(chan error, 1)}
			c := remote(t, d)
			in := stalledInput{release: make(chan struct{})}
			t.Cleanup(func() { close(in.release) })
			cancelled(t, d.started, func(ctx context.Context) error {
				_, err := c.Exec(ctx, "x", &driver.Process{Args: []string{"sh"}, Stdin: in})
				return err
			})
		},
		"export, stalled peer": func(t *testing.T) {
			_, c, _ := setup(t)
			got := make(firstWrite)
			cancelled(t, got, func(ctx context.Context) error { return c.Export(ctx, "x", got) })
		},
		"import, stalled input": func(t *testing.T) {
			s, c, in := setup(t)
			cancelled(t, s.stalled, func(ctx context.Context) error { _, err := c.Import(ctx, in, ""); return err })
		},
		"import, stalled peer": func(t *testing.T) {
			s, c, _ := setup(t)
			cancelled(t, s.stalled, func(ctx context.Context) error {
				_, err := c.Import(ctx, bytes.NewReader(make([]byte, 1<<20)), "")
				return err
			})
		},
		"put image, stalled input": func(t *testing.T) {
			s, c, in := setup(t)
			cancelled(t, s.stalled, func(ctx context.Context) error {
				_, err := c.PutImage(ctx, &image.Manifest{Name: "img", Digest: "sha256:" + string(bytes.Repeat([]byte("0"), 64))}, in)
				return err
			})
		},
		"open image, stalled peer": func(t *testing.T) {
			_, c, _ := setup(t)
			got := make(firstWrite)
			cancelled(t, got, func(ctx context.Context) error {
				_, blob, err := c.OpenImage(ctx, "base")
				if err != nil {
					return err
				}
				defer blob.Close()
				_, err = io.Copy(got, blob)
				return err
			})
		},
		"push, stalled target": func(t *testing.T) {
			cl := newCluster(t, nil)
			srcDriver, _ := withMover(t)
			src := cl.dial(t, cl.serve(t, srcDriver))
			s := newStalling(t)
			target := cl.serve(t, s)
			t.Cleanup(func() { close(s.release) })
			cancelled(t, s.stalled, func(ctx context.Context) error { _, err := src.Push(ctx, "mover", target, "", nil); return err })
		},
		"pull, stalled source": func(t *testing.T) {
			cl := newCluster(t, nil)
			s := newStalling(t)
			s.silent = true
			source := cl.serve(t, s)
			dst := cl.dial(t, cl.serve(t, memServer(t)))
			t.Cleanup(func() { close(s.release) })
			cancelled(t, s.stalled, func(ctx context.Context) error { _, err := dst.Pull(ctx, source, "x", "", nil); return err })
		},
	}
	for name, f := range cases {
		t.Run(name, f)
	}

	t.Run("floating-IP events", func(t *testing.T) {
		addr := netip.MustParsePrefix("198.18.0.1/24")
		c, _, _ := floatingServer(t, memha.NewNetwork(nil), addr)
		f := c.FloatingIP("memory", "vip")
		t.Cleanup(func() { f.Close() })
		err := f.Apply(ctx, &hadriver.Config{Name: "vip", VirtualRouterID: 9, Interface: "eth0", Addresses: []netip.Addr{netip.MustParseAddr("198.18.0.200")},
			Source: addr.Addr(), Peers: []netip.Addr{netip.MustParseAddr("198.18.0.2")}, Priority: 150, AdvertInterval: 100 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithCancel(ctx)
		events, err := f.Watch(wctx)
		if err != nil {
			t.Fatal(err)
		}
		cancel()
		deadline := time.After(5 * time.Second)
		for {
			select {
			case _, ok := <-events:
				if !ok {
					return
				}
			case <-deadline:
				t.Fatal("the event stream did not end within 5 s of its cancellation")
			}
		}
	})
}
