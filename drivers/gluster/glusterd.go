package gluster

import (
	"bytes"
	"context"
	"encoding/xml"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/internal/daemon"
)

// runner runs a member's glusterd in its own mount namespace and the
// gluster CLI against it.
type runner struct {
	dir  string
	opts *Options
	log  *slog.Logger

	mu   sync.Mutex
	proc *daemon.Process
}

// glusterdScript runs in the new mount namespace: $1..$4 are dir's run,
// state, log and bricks, $5 the volfile, $6 glusterd. The paths are
// arguments, never part of the script.
const glusterdScript = `mount --bind "$1" /run && mount --bind "$2" /var/lib/glusterd && ` +
	`mount --bind "$3" /var/log/glusterfs && mount --bind "$4" ` + BrickRoot + ` && exec "$6" -N -f "$5"`

// volfile is glusterd's own volfile: glusterd.vol as Debian ships it, but
// with a ping timeout of 5 s towards peers (Debian's 0 leaves a cut-off
// peer's operations hanging until the CLI gives up) and short TCP
// keepalives.
const volfile = `volume management
    type mgmt/glusterd
    option working-directory /var/lib/glusterd
    option transport-type socket
    option transport.socket.keepalive-time 5
    option transport.socket.keepalive-interval 1
    option transport.socket.keepalive-count 3
    option transport.socket.read-fail-log off
    option transport.socket.listen-port 24007
    option ping-timeout 5
    option event-threads 1
    option max-port 60999
end-volume
`

func seconds(d time.Duration) int { return max(1, int((d+time.Second-1)/time.Second)) }

// inNetNS returns the command line that runs argv in Options.NetNS.
func (r *runner) inNetNS(argv ...string) []string {
	if r.opts.NetNS == "" {
		return argv
	}
	return append([]string{"nsenter", "--net=" + r.opts.NetNS}, argv...)
}

func (r *runner) pid() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc != nil && r.proc.Running() {
		return r.proc.Pid()
	}
	return 0
}

// ensure starts glusterd unless it runs, and waits until it answers. It
// reports whether it started it.
func (r *runner) ensure(ctx context.Context) (bool, error) {
	if r.pid() != 0 {
		return false, nil
	}
	if _, err := os.Stat(r.opts.Glusterd); err != nil {
		return false, errcode.Wrap(errcode.Unavailable, fmt.Errorf("gluster: glusterd (Debian package glusterfs-server): %w", err))
	}
	r.reap(ctx)
	run := filepath.Join(r.dir, "run")
	if err := os.RemoveAll(run); err != nil {
		return false, errcode.Syscall(err, "gluster: clearing %s", run)
	}
	if err := os.MkdirAll(filepath.Join(run, filepath.Base(BrickRoot)), 0o700); err != nil {
		return false, errcode.Syscall(err, "gluster: %s", run)
	}
	vol := filepath.Join(r.dir, "glusterd.vol")
	if err := os.WriteFile(vol, []byte(volfile), 0o600); err != nil {
		return false, errcode.Syscall(err, "gluster: writing %s", vol)
	}
	logf, err := os.OpenFile(filepath.Join(r.dir, "log", "glusterd.stderr"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return false, errcode.Syscall(err, "gluster: glusterd's log")
	}
	defer logf.Close()
	argv := r.inNetNS("unshare", "-m", "--propagation", "private", "sh", "-c", glusterdScript, "sh",
		run, filepath.Join(r.dir, "state"), filepath.Join(r.dir, "log"), filepath.Join(r.dir, "bricks"), vol, r.opts.Glusterd)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr, cmd.Dir = logf, logf, r.dir
	p, err := daemon.Start(cmd)
	if err != nil {
		return false, errcode.Wrap(errcode.Unavailable, fmt.Errorf("gluster: starting glusterd: %w", err))
	}
	r.mu.Lock()
	r.proc = p
	r.mu.Unlock()
	deadline := time.Now().Add(r.opts.Timeout)
	for {
		if _, err := r.cli(ctx, "pool", "list"); err == nil {
			r.log.InfoContext(ctx, "glusterd started", "dir", r.dir, "pid", p.Pid())
			return true, nil
		}
		var why error
		select {
		case <-ctx.Done():
			why = ctx.Err()
		case <-p.Done():
			why = errcode.New(errcode.FailedPrecondition, "gluster: glusterd exited at start (%v): %s", p.Err(), r.tail())
		case <-time.After(100 * time.Millisecond):
			if time.Now().After(deadline) {
				why = errcode.New(errcode.Unavailable, "gluster: glusterd did not answer within %v: %s", r.opts.Timeout, r.tail())
			}
		}
		if why != nil {
			r.stop()
			return false, why
		}
	}
}

// tail returns the end of glusterd's logs, for messages.
func (r *runner) tail() string {
	var b []byte
	for _, name := range []string{"glusterd.stderr", "glusterd.log"} {
		data, _ := os.ReadFile(filepath.Join(r.dir, "log", name))
		b = append(b, data...)
	}
	if len(b) > 800 {
		b = b[len(b)-800:]
	}
	return string(bytes.TrimSpace(b))
}

// stop ends glusterd and every other process of its namespace.
func (r *runner) stop() {
	r.mu.Lock()
	p := r.proc
	r.proc = nil
	r.mu.Unlock()
	if p != nil {
		p.Stop(daemon.StopGrace)
		r.log.Info("glusterd stopped", "dir", r.dir, "pid", p.Pid())
	}
	r.reap(context.Background())
}

// reap ends every process whose /run is this instance's run directory:
// glusterd, its bricks and its daemons, of this run or an earlier one.
// FUSE clients run in the caller's mount namespace and are not among them.
func (r *runner) reap(ctx context.Context) {
	pids := r.processes()
	if len(pids) == 0 {
		return
	}
	for _, pid := range pids {
		r.log.InfoContext(ctx, "gluster: ending a process of glusterd's namespace", "pid", pid, "dir", r.dir)
		syscall.Kill(pid, syscall.SIGTERM)
	}
	if waitGone(pids, 3*time.Second) {
		return
	}
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	waitGone(pids, 3*time.Second)
}

// processes lists the pids whose /run is dir/run, by device and inode.
func (r *runner) processes() []int {
	own, err := os.Stat(filepath.Join(r.dir, "run"))
	if err != nil {
		return nil
	}
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		fi, err := os.Stat(filepath.Join("/proc", e.Name(), "root", "run"))
		if err == nil && os.SameFile(fi, own) && alive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// alive reports whether a thread of pid exists and is not a zombie.
func alive(pid int) bool {
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, t.Name()))
		if err != nil {
			continue
		}
		if i := bytes.LastIndexByte(b, ')'); i > 0 && i+2 < len(b) && b[i+2] != 'Z' && b[i+2] != 'X' {
			return true
		}
	}
	return false
}

// waitGone waits until none of pids is alive, up to wait.
func waitGone(pids []int, wait time.Duration) bool {
	for deadline := time.Now().Add(wait); ; time.Sleep(20 * time.Millisecond) {
		if !slices.ContainsFunc(pids, alive) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

// cliOutput is the gluster CLI's --xml answer, with the parts this driver
// reads.
type cliOutput struct {
	OpRet     int        `xml:"opRet"`
	OpErrstr  string     `xml:"opErrstr"`
	Output    string     `xml:"output"`
	VolInfo   volInfo    `xml:"volInfo>volumes"`
	VolStatus volStatus  `xml:"volStatus>volumes"`
	Peers     []peerXML  `xml:"peerStatus>peer"`
	Heal      []healXML  `xml:"healInfo>bricks>brick"`
	Quota     []quotaXML `xml:"volQuota>limit"`
}

type volInfo struct {
	Volumes []volumeXML `xml:"volume"`
}

type volumeXML struct {
	Name       string      `xml:"name"`
	Status     int         `xml:"status"`
	TypeStr    string      `xml:"typeStr"`
	BrickCount int         `xml:"brickCount"`
	Replica    int         `xml:"replicaCount"`
	Arbiter    int         `xml:"arbiterCount"`
	Disperse   int         `xml:"disperseCount"`
	Redundancy int         `xml:"redundancyCount"`
	Bricks     []brickXML  `xml:"bricks>brick"`
	Options    []optionXML `xml:"options>option"`
}

type brickXML struct {
	Name    string `xml:"name"`
	Arbiter int    `xml:"isArbiter"`
}

type optionXML struct {
	Name  string `xml:"name"`
	Value string `xml:"value"`
}

type volStatus struct {
	Volumes []struct {
		Name  string    `xml:"volName"`
		Nodes []nodeXML `xml:"node"`
	} `xml:"volume"`
}

type nodeXML struct {
	Hostname  string `xml:"hostname"`
	Path      string `xml:"path"`
	Status    int    `xml:"status"`
	SizeTotal int64  `xml:"sizeTotal"`
	SizeFree  int64  `xml:"sizeFree"`
	Device    string `xml:"device"`
}

type peerXML struct {
	Hostname  string `xml:"hostname"`
	Connected int    `xml:"connected"`
	State     int    `xml:"state"`
	StateStr  string `xml:"stateStr"`
}

type healXML struct {
	Name    string `xml:"name"`
	Status  string `xml:"status"`
	Entries string `xml:"totalNumberOfEntries"`
}

type quotaXML struct {
	Path      string `xml:"path"`
	HardLimit int64  `xml:"hard_limit"`
	Used      int64  `xml:"used_space"`
}

// retryable are the CLI's answers when another operation holds the pool's
// lock; the operation is tried again.
var retryable = []string{"Another transaction is in progress", "ocking failed", "Lock for", "try again", errNoAnswer}

// errNoAnswer marks a CLI that exited without an answer (as it does when
// glusterd drops its request while a peer is found unreachable).
const errNoAnswer = "exited without an answer"

// cli runs the gluster CLI in glusterd's namespaces with args and returns
// its parsed --xml answer. A refusal is errcode.FailedPrecondition (NotFound,
// AlreadyExists where its message says so) carrying gluster's message; a
// glusterd that does not run or answer is errcode.Unavailable. An operation
// refused because another holds the pool's lock is tried again until
// Options.Timeout.
func (r *runner) cli(ctx context.Context, args ...string) (*cliOutput, error) {
	deadline := time.Now().Add(r.opts.Timeout)
	for delay := 200 * time.Millisecond; ; delay = min(2*delay, 2*time.Second) {
		out, err := r.cliOnce(ctx, args...)
		if err == nil || !slices.ContainsFunc(retryable, func(s string) bool { return strings.Contains(err.Error(), s) }) || time.Now().Add(delay).After(deadline) {
			return out, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(delay):
		}
	}
}

func (r *runner) cliOnce(ctx context.Context, args ...string) (*cliOutput, error) {
	pid := r.pid()
	if pid == 0 {
		return nil, errcode.New(errcode.Unavailable, "gluster: glusterd does not run on this server")
	}
	what := strings.Join(args, " ")
	cctx, cancel := context.WithTimeout(ctx, r.opts.Timeout+5*time.Second)
	defer cancel()
	argv := append([]string{"-t", strconv.Itoa(pid), "-m", "-n", r.opts.Gluster, "--mode=script", "--xml",
		"--timeout=" + strconv.Itoa(seconds(r.opts.Timeout))}, args...)
	cmd := exec.CommandContext(cctx, "nsenter", argv...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if cctx.Err() != nil {
		return nil, errcode.New(errcode.Unavailable, "gluster %s: no answer within %v", what, r.opts.Timeout)
	}
	var out cliOutput
	if err := xml.Unmarshal(stdout.Bytes(), &out); err != nil {
		msg := strings.TrimSpace(stdout.String() + " " + stderr.String())
		if msg == "" {
			msg = errNoAnswer
		}
		return nil, errcode.New(errcode.Unavailable, "gluster %s: %v: %.400s", what, runErr, msg)
	}
	if out.OpRet != 0 {
		msg := cmp(strings.TrimSpace(out.OpErrstr), strings.TrimSpace(out.Output))
		code := errcode.FailedPrecondition
		switch {
		case strings.Contains(msg, "does not exist"):
			code = errcode.NotFound
		case strings.Contains(msg, "already exists"):
			code = errcode.AlreadyExists
		case strings.Contains(msg, "not connected") || strings.Contains(msg, "is down") || strings.Contains(msg, "are down"):
			code = errcode.Unavailable
		}
		return &out, errcode.New(code, "gluster %s: %s", what, msg)
	}
	return &out, nil
}
