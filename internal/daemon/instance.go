package daemon

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"github.com/google/renameio/v2"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/internal/orphan"
)

// StopGrace is how long Stop waits after SIGTERM before it kills the
// daemon's process group.
const StopGrace = 5 * time.Second

// NotLoaded marks err, returned by a Spec.Reload, as saying that the
// daemon refused the new file and goes on running the one it ran before
// (HAProxy's "Loading failure!", Nginx's [emerg]): Apply then puts the
// previous file back without asking the daemon to load it again. err's
// message and chain (its errcode) stay as they are.
func NotLoaded(err error) error { return notLoaded{err} }

type notLoaded struct{ error }

func (e notLoaded) Unwrap() error { return e.error }

// DefaultTimeout bounds a start and a reload unless Spec.Timeout says.
const DefaultTimeout = 15 * time.Second

// Spec says how to check, start and reload one daemon. Every field but
// FilesDir, Timeout, Logger and Started is required.
type Spec struct {
	// Name is the program's name and its processes' name (/proc comm):
	// messages start with it, and New ends processes of that name.
	Name string
	// Dir is the instance directory, an absolute path that exists and
	// belongs to this instance alone. The names below are files in it.
	Dir string
	// ConfigFile is the file the daemon reads its configuration from.
	ConfigFile string
	// PidFile is where the daemon records its pid: New ends the processes
	// named Name in that pid's process group, which an earlier run left
	// running when its manager died (orphan.Reap).
	PidFile string
	// LogFile receives the daemon's output (appended) unless Command sets
	// Stdout or Stderr; errors of a start quote its end.
	LogFile string
	// FilesDir, if set, holds the files a configuration refers to, named
	// after their content (certificates): after a successful Apply, the
	// files in it that the configuration does not name are removed.
	FilesDir string
	// Timeout bounds a start and a reload (AwaitReload); 0 means
	// DefaultTimeout.
	Timeout time.Duration
	// Logger receives a record per start and reload; nil discards.
	Logger *slog.Logger

	// Check returns the real binary's check of the configuration file at
	// path (haproxy -c -f path, nginx -t -c path, keepalived -t -f path),
	// which accepts it by exiting with status 0. Its output is the
	// rejection's message; it runs in Dir unless it sets its own.
	Check func(path string) *exec.Cmd
	// Command returns the command that runs the daemon in the foreground
	// on ConfigFile (it may prepare files first); it runs in Dir unless it
	// sets its own. Files it sets as Stdout or Stderr are closed once the
	// daemon started, or failed to: the daemon holds its own copies.
	Command func() (*exec.Cmd, error)
	// Started, if set, is called as soon as the daemon runs, before Ready.
	Started func(*Process)
	// Ready reports whether a started daemon serves; it is asked every
	// 20 ms until it does, the daemon exits, or Timeout passes.
	Ready func(*Process) bool
	// Reload makes the running daemon p load ConfigFile and returns once
	// it has. An error marked by NotLoaded says the daemon kept the
	// configuration it ran; any other error leaves that open.
	Reload func(ctx context.Context, p *Process) error
}

// Instance is one managed daemon and its configuration file. Pid,
// Running and Reloads may be called at any time; the driver serializes
// the other calls (under its own lock).
type Instance struct {
	spec Spec
	log  *slog.Logger
	conf []byte // the file in force; nil until a configuration ran

	mu      sync.Mutex // guards proc and reloads
	proc    *Process
	reloads int
}

// New returns the instance s describes, after it ended what an earlier run
// left (see Spec.PidFile). Nothing starts until Apply.
func New(s Spec) *Instance {
	in := &Instance{spec: s, log: s.Logger}
	if in.log == nil {
		in.log = slog.New(slog.DiscardHandler)
	}
	if in.spec.Timeout == 0 {
		in.spec.Timeout = DefaultTimeout
	}
	orphan.Reap(in.path(s.PidFile), s.Name, in.log)
	return in
}

func (in *Instance) path(name string) string { return filepath.Join(in.spec.Dir, name) }

// Apply makes conf the daemon's configuration: it writes the files conf
// refers to (path to content; those that exist are left alone, since
// their names say their content), checks conf with Spec.Check,
// atomically replaces ConfigFile with it, and reloads the running daemon
// or starts it. If the reload or start fails, the previous file goes back
// (or, if there was none, the new one is removed) and a daemon that may
// have loaded conf loads the previous file again, even if ctx ended: so a
// configuration that fails never replaces the one in force. A conf equal
// to the one in force, while the daemon runs, is a no-op.
//
// A check that fails is errcode.InvalidArgument carrying the binary's
// message; a daemon that exits at start is errcode.FailedPrecondition and
// one that does not serve within Spec.Timeout errcode.Unavailable, both
// quoting LogFile's end.
func (in *Instance) Apply(ctx context.Context, conf []byte, files map[string][]byte) error {
	if in.Running() && bytes.Equal(conf, in.conf) {
		return nil
	}
	for path, data := range files {
		if _, err := os.Stat(path); err == nil {
			continue
		}
		if err := renameio.WriteFile(path, data, 0o600); err != nil {
			return err
		}
	}
	if err := in.Check(ctx, conf); err != nil {
		return err
	}
	if err := renameio.WriteFile(in.path(in.spec.ConfigFile), conf, 0o600); err != nil {
		return err
	}
	var err error
	if p := in.running(); p != nil {
		err = in.reload(ctx, p)
	} else {
		err = in.start(ctx)
	}
	if err != nil {
		return errors.Join(err, in.rollback(ctx, err))
	}
	in.conf = conf
	in.removeFiles(files)
	return nil
}

// rollback puts the file in force back after a reload or start failed
// with cause, and has a running daemon that may have loaded the failed
// file load it.
func (in *Instance) rollback(ctx context.Context, cause error) error {
	path := in.path(in.spec.ConfigFile)
	if in.conf == nil {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	}
	if err := renameio.WriteFile(path, in.conf, 0o600); err != nil {
		return err
	}
	p := in.running()
	if p == nil || errors.As(cause, new(notLoaded)) {
		return nil
	}
	in.log.WarnContext(ctx, in.spec.Name+" reloads the previous configuration", "dir", in.spec.Dir, "err", cause)
	return in.reload(context.WithoutCancel(ctx), p)
}

// removeFiles removes the files in FilesDir that files does not name.
func (in *Instance) removeFiles(files map[string][]byte) {
	if in.spec.FilesDir == "" {
		return
	}
	entries, _ := os.ReadDir(in.path(in.spec.FilesDir))
	for _, e := range entries {
		p := filepath.Join(in.path(in.spec.FilesDir), e.Name())
		if _, ok := files[p]; !ok {
			os.Remove(p)
		}
	}
}

// Check runs Spec.Check on conf, written to a candidate file beside
// ConfigFile; the daemon and ConfigFile are left alone. A rejection is
// errcode.InvalidArgument and carries the binary's message.
func (in *Instance) Check(ctx context.Context, conf []byte) error {
	cand := in.path("candidate-" + in.spec.ConfigFile)
	if err := os.WriteFile(cand, conf, 0o600); err != nil {
		return err
	}
	defer os.Remove(cand)
	cmd := in.spec.Check(cand)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if cmd.Dir == "" {
		cmd.Dir = in.spec.Dir
	}
	if err := cmd.Start(); err != nil {
		return errcode.Wrap(errcode.Unavailable, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			return errcode.New(errcode.InvalidArgument, "%s rejects the configuration: %v: %s", in.spec.Name, err, bytes.TrimSpace(out.Bytes()))
		}
		return nil
	case <-ctx.Done():
		cmd.Process.Kill()
		<-done
		return ctx.Err()
	}
}

// Record makes conf the file in force without a check or a reload, for a
// configuration the running daemon already runs (changed through its
// runtime API) and that passed Check.
func (in *Instance) Record(conf []byte) error {
	if err := renameio.WriteFile(in.path(in.spec.ConfigFile), conf, 0o600); err != nil {
		return err
	}
	in.conf = conf
	return nil
}

// Reload has the running daemon load the file in force again (to undo
// changes made through its runtime API, say). errcode.FailedPrecondition
// if the daemon does not run.
func (in *Instance) Reload(ctx context.Context) error {
	p := in.running()
	if p == nil {
		return errcode.New(errcode.FailedPrecondition, "%s does not run", in.spec.Name)
	}
	return in.reload(ctx, p)
}

func (in *Instance) reload(ctx context.Context, p *Process) error {
	if err := in.spec.Reload(ctx, p); err != nil {
		return err
	}
	in.counted()
	in.log.InfoContext(ctx, in.spec.Name+" reloaded", "dir", in.spec.Dir, "pid", p.Pid())
	return nil
}

// start runs the daemon on ConfigFile and waits until it serves; on
// failure nothing of it runs.
func (in *Instance) start(ctx context.Context) error {
	cmd, err := in.spec.Command()
	if err != nil {
		return err
	}
	if cmd.Stdout == nil && cmd.Stderr == nil {
		logf, err := os.OpenFile(in.path(in.spec.LogFile), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return err
		}
		cmd.Stdout, cmd.Stderr = logf, logf
	}
	if cmd.Dir == "" {
		cmd.Dir = in.spec.Dir
	}
	p, err := Start(cmd)
	for _, w := range []any{cmd.Stdout, cmd.Stderr} {
		if f, ok := w.(*os.File); ok {
			f.Close() // the second close of a shared file fails harmlessly
		}
	}
	if err != nil {
		return errcode.Wrap(errcode.Unavailable, err)
	}
	in.mu.Lock()
	in.proc = p
	in.mu.Unlock()
	if in.spec.Started != nil {
		in.spec.Started(p)
	}
	err = in.poll(ctx, p, 20*time.Millisecond, "start", func() (bool, error) { return in.spec.Ready(p), nil })
	if errors.Is(err, errExited) {
		return errcode.New(errcode.FailedPrecondition, "%s exited at start (%v): %s", in.spec.Name, p.Err(), in.Tail())
	}
	if err != nil {
		in.Stop()
		return err
	}
	in.counted()
	in.log.InfoContext(ctx, in.spec.Name+" started", "dir", in.spec.Dir, "pid", p.Pid())
	return nil
}

// AwaitReload is for Spec.Reload: it runs ask, which asks the daemon p
// to load ConfigFile (a signal, a command to its master), then asks loaded
// every 10 ms whether p has, until it has (nil), or LogFile gained a line
// holding refused since ask ran (errcode.FailedPrecondition marked by
// NotLoaded, quoting what the log gained), or p exits or Spec.Timeout
// passes (errcode.Unavailable, quoting the log's end), or ctx ends (its
// error). An error of ask is returned as it is.
func (in *Instance) AwaitReload(ctx context.Context, p *Process, refused string, ask func() error, loaded func() bool) error {
	log := in.path(in.spec.LogFile)
	var offset int64
	if fi, err := os.Stat(log); err == nil {
		offset = fi.Size()
	}
	if err := ask(); err != nil {
		return err
	}
	err := in.poll(ctx, p, 10*time.Millisecond, "reload", func() (bool, error) {
		if msg := readFrom(log, offset); bytes.Contains(msg, []byte(refused)) {
			return false, NotLoaded(errcode.New(errcode.FailedPrecondition, "%s could not load the new configuration; the old one keeps serving: %s", in.spec.Name, bytes.TrimSpace(msg)))
		}
		return loaded(), nil
	})
	if errors.Is(err, errExited) {
		return errcode.New(errcode.Unavailable, "%s exited during a reload: %s", in.spec.Name, in.Tail())
	}
	return err
}

// readFrom returns what file holds after offset (at most 64 KiB).
func readFrom(file string, offset int64) []byte {
	f, err := os.Open(file)
	if err != nil {
		return nil
	}
	defer f.Close()
	b, _ := io.ReadAll(io.LimitReader(io.NewSectionReader(f, offset, 1<<62), 64<<10))
	return b
}

// errExited is poll's error when the daemon exits.
var errExited = errors.New("the daemon exited")

// poll asks done every interval until it reports true or an error (that
// error), or ctx ends (its error), or p exits (errExited), or Spec.Timeout
// passes (errcode.Unavailable: the daemon did not <what> in time).
func (in *Instance) poll(ctx context.Context, p *Process, every time.Duration, what string, done func() (bool, error)) error {
	deadline := time.Now().Add(in.spec.Timeout)
	for {
		if ok, err := done(); ok || err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return errcode.New(errcode.Unavailable, "%s did not %s within %v: %s", in.spec.Name, what, in.spec.Timeout, in.Tail())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-p.Done():
			return errExited
		case <-time.After(every):
		}
	}
}

func (in *Instance) counted() {
	in.mu.Lock()
	in.reloads++
	in.mu.Unlock()
}

// Tail returns the end of LogFile (at most 800 bytes), for messages.
func (in *Instance) Tail() string {
	b, _ := os.ReadFile(in.path(in.spec.LogFile))
	if len(b) > 800 {
		b = b[len(b)-800:]
	}
	return string(bytes.TrimSpace(b))
}

// Config returns the configuration in force: the last one applied (or
// recorded) with success, nil before.
func (in *Instance) Config() []byte { return in.conf }

// running returns the daemon's process if it runs, else nil.
func (in *Instance) running() *Process {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.proc != nil && in.proc.Running() {
		return in.proc
	}
	return nil
}

// Running reports whether the daemon runs.
func (in *Instance) Running() bool { return in.running() != nil }

// Pid returns the daemon's pid, or 0 if it does not run.
func (in *Instance) Pid() int {
	if p := in.running(); p != nil {
		return p.Pid()
	}
	return 0
}

// Reloads counts the starts and reloads that succeeded.
func (in *Instance) Reloads() int {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.reloads
}

// Stop ends the daemon (Process.Stop with StopGrace) if it runs; the
// configuration file stays, and the next Apply starts it again.
func (in *Instance) Stop() {
	in.mu.Lock()
	p := in.proc
	in.mu.Unlock()
	if p == nil {
		return
	}
	p.Stop(StopGrace)
	in.mu.Lock()
	if in.proc == p {
		in.proc = nil
	}
	in.mu.Unlock()
}
