// Go's MPTCP listeners refuse TCP MD5 keys; the BGP speakers need them.
//
//go:debug multipathtcp=0
package bgp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/network/driver"
	"github.com/musterkit/muster/testhost"
)

// The driver must run in its server's namespace (see the package doc), so
// each simulated server's driver runs in a helper process: this test
// binary, started by Host.Command inside the host's namespace with
// helperEnv set, serving the driver's methods as JSON lines on stdin and
// stdout. remote is the test side of that pipe and a driver.Driver itself.

const helperEnv = "MUSTER_BGP_TEST_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" {
		os.Exit(serveHelper(os.Stdin, os.Stdout))
	}
	os.Exit(m.Run())
}

type request struct {
	Op    string       `json:"op"` // ensure, delete, peers, networks, close
	Spec  *driver.Spec `json:"spec,omitempty"`
	ID    string       `json:"id,omitempty"`
	Peers []driver.Peer
}

type response struct {
	Status   *driver.Status   `json:"status,omitempty"`
	Statuses []*driver.Status `json:"statuses,omitempty"`
	Code     errcode.Code     `json:"code,omitempty"`
	Err      string           `json:"err,omitempty"`
}

func errResponse(err error) response {
	if err == nil {
		return response{}
	}
	return response{Code: errcode.Of(err), Err: err.Error()}
}

// serveHelper opens a driver in the process's namespace and serves
// requests until stdin closes; then it closes the driver.
func serveHelper(in io.Reader, out io.Writer) int {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx := context.Background()
	enc, dec := json.NewEncoder(out), json.NewDecoder(in)
	d, err := Open(ctx, &Options{Logger: log})
	enc.Encode(errResponse(err))
	if err != nil {
		return 1
	}
	for {
		var req request
		if err := dec.Decode(&req); err != nil {
			break
		}
		var resp response
		switch req.Op {
		case "ensure":
			st, err := d.EnsureNetwork(ctx, req.Spec)
			resp = errResponse(err)
			resp.Status = st
		case "delete":
			resp = errResponse(d.DeleteNetwork(ctx, req.ID))
		case "peers":
			resp = errResponse(d.SetPeers(ctx, req.ID, req.Peers))
		case "networks":
			sts, err := d.Networks(ctx)
			resp = errResponse(err)
			resp.Statuses = sts
		case "close":
			resp = errResponse(d.Close())
		default:
			resp = errResponse(fmt.Errorf("unknown op %q", req.Op))
		}
		if err := enc.Encode(resp); err != nil {
			break
		}
	}
	if err := d.Close(); err != nil {
		log.Error("closing the driver", "err", err)
		return 1
	}
	return 0
}

// remote is a driver running in a helper process inside a test host.
type remote struct {
	mu     sync.Mutex
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	enc    *json.Encoder
	dec    *json.Decoder
	stderr *syncBuffer
}

var _ driver.Driver = (*remote)(nil)

// startRemote starts a driver in h's namespace; t.Cleanup closes it
// (the driver removes its routes) and waits for the process.
func startRemote(t *testing.T, h *testhost.Host) *remote {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := h.Command(context.Background(), self)
	// A binary built with -race sleeps a second as it exits, to let
	// reports of other goroutines in: the helper need not.
	cmd.Env = append(os.Environ(), helperEnv+"=1", "GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	// If the test binary dies, so does the helper (it also exits when its
	// stdin closes).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	r := &remote{cmd: cmd, stderr: &syncBuffer{}}
	cmd.Stderr = r.stderr
	if r.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r.enc, r.dec = json.NewEncoder(r.stdin), json.NewDecoder(stdout)
	t.Cleanup(func() {
		if err := r.stop(); err != nil {
			t.Errorf("driver in %s: %v", h.Name, err)
		}
		if t.Failed() {
			t.Logf("driver in %s logged:\n%s", h.Name, r.stderr)
		}
	})
	var ready response
	if err := r.dec.Decode(&ready); err != nil || ready.Err != "" {
		t.Fatalf("starting the driver in %s: %v %s\n%s", h.Name, err, ready.Err, r.stderr)
	}
	return r
}

func (r *remote) call(req request) response {
	r.mu.Lock()
	defer r.mu.Unlock()
	var resp response
	if r.stdin == nil {
		return errResponse(errors.New("helper: ended"))
	}
	if err := r.enc.Encode(req); err != nil {
		return errResponse(err)
	}
	if err := r.dec.Decode(&resp); err != nil {
		return errResponse(fmt.Errorf("helper: %w", err))
	}
	return resp
}

func (resp response) err() error {
	if resp.Err == "" {
		return nil
	}
	return errcode.Wrap(resp.Code, errors.New(resp.Err))
}

func (r *remote) EnsureNetwork(ctx context.Context, spec *driver.Spec) (*driver.Status, error) {
	resp := r.call(request{Op: "ensure", Spec: spec})
	return resp.Status, resp.err()
}

func (r *remote) DeleteNetwork(ctx context.Context, id string) error {
	return r.call(request{Op: "delete", ID: id}).err()
}

func (r *remote) SetPeers(ctx context.Context, id string, peers []driver.Peer) error {
	return r.call(request{Op: "peers", ID: id, Peers: peers}).err()
}

func (r *remote) Networks(ctx context.Context) ([]*driver.Status, error) {
	resp := r.call(request{Op: "networks"})
	return resp.Statuses, resp.err()
}

func (r *remote) Capabilities() driver.Capabilities {
	return (&Driver{}).Capabilities()
}

// Close closes the driver in the helper, which keeps serving its calls
// (the closed driver answers them).
func (r *remote) Close() error {
	return r.call(request{Op: "close"}).err()
}

// stop ends the helper: it closes the driver (again) when its stdin
// closes. A helper that does not exit within 30s is killed.
func (r *remote) stop() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stdin == nil {
		return nil
	}
	r.stdin.Close()
	r.stdin = nil
	done := make(chan error, 1)
	go func() { done <- r.cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(30 * time.Second):
		r.cmd.Process.Kill()
		<-done
		return errors.New("the helper did not exit; killed")
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
