package lxc

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	golxc "github.com/lxc/go-lxc"
	"golang.org/x/sys/unix"

	"github.com/musterkit/muster/container/driver"
	"github.com/musterkit/muster/errcode"
)

// execEnv is the environment every process starts with; Process.Env adds
// to it and overrides it.
var execEnv = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root"}

// Exec implements driver.Driver. The process is attached to every
// namespace and the cgroup of the container with a clean environment. It
// is a child of this process, so Exec waits for it and kills it directly
// when ctx is done. Exec returns once the process has exited and what it
// wrote to its output streams is copied; output written later by processes
// it left running in the background is not waited for.
func (d *Driver) Exec(ctx context.Context, name string, p *driver.Process) (int, error) {
	if err := d.checkOpen(); err != nil {
		return 0, err
	}
	if len(p.Args) == 0 {
		return -1, errcode.New(errcode.InvalidArgument, "exec: no program given")
	}
	for _, s := range append(append([]string{p.Dir}, p.Args...), p.Env...) {
		if strings.IndexByte(s, 0) >= 0 {
			return -1, errcode.New(errcode.InvalidArgument, "exec: argument, environment or directory holds a NUL byte")
		}
	}
	c, _, err := d.open(name)
	if err != nil {
		return -1, err
	}
	defer c.Release()
	if st, err := d.state(c, name); err != nil || st != driver.Running {
		return -1, cmp.Or(err, notState(name, st, "running"))
	}
	trimLog(d.path(name, "lxc.log"))
	s, err := openStreams(p)
	if err != nil {
		return -1, err
	}
	defer s.close()
	opts := golxc.DefaultAttachOptions
	opts.Cwd = "/"
	if p.Dir != "" {
		opts.Cwd = p.Dir
	}
	opts.ClearEnv = true
	opts.Env = append(append([]string(nil), execEnv...), p.Env...)
	// Fd puts the child's ends in blocking mode, as a process expects.
	opts.StdinFd, opts.StdoutFd, opts.StderrFd = s.child[0].Fd(), s.child[1].Fd(), s.child[2].Fd()
	pid, err := c.RunCommandNoWait(p.Args, opts)
	s.closeChild()
	if err != nil {
		if st := stateOf(c); st != driver.Running {
			return -1, notState(name, st, "running")
		}
		return -1, errcode.New(errcode.Internal, "exec in container %q: %w", name, err)
	}
	// LXC creates the process as our child. FindProcess holds a pidfd on
	// it, so Kill can never hit a recycled PID.
	proc, err := os.FindProcess(pid)
	if err != nil {
		return -1, errcode.New(errcode.Internal, "exec in container %q: %w", name, err)
	}
	defer proc.Release()
	s.copy(p)
	stopKill := context.AfterFunc(ctx, func() { proc.Kill() })
	ps, werr := proc.Wait()
	stopKill()
	cerr := s.finish()
	if err := ctx.Err(); err != nil {
		return -1, err
	}
	if werr != nil {
		return -1, errcode.New(errcode.Internal, "exec in container %q: wait: %w", name, werr)
	}
	code := ps.ExitCode()
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		code = 128 + int(ws.Signal()) // as a shell reports it
	}
	if cerr != nil {
		return code, fmt.Errorf("exec in container %q: copying output: %w", name, cerr)
	}
	return code, nil
}

// maxLog bounds a running container's LXC log, to which LXC adds a line
// or two per attach.
const maxLog = 1 << 20

// trimLog empties a container's LXC log once it exceeds maxLog. LXC
// appends to it, so emptying it under a running container is safe.
func trimLog(file string) {
	if fi, err := os.Stat(file); err == nil && fi.Size() > maxLog {
		os.Truncate(file, 0)
	}
}

// streams are the pipes between Exec's caller and the process.
type streams struct {
	devNull *os.File    // a nil stream reads nothing or discards
	child   [3]*os.File // stdin, stdout, stderr as the process gets them
	stdin   *os.File    // write end of the stdin pipe, or nil
	out     [2]*os.File // read ends of the stdout and stderr pipes, or nil
	wg      sync.WaitGroup
	errs    [2]error
}

func openStreams(p *driver.Process) (*streams, error) {
	s := &streams{}
	var err error
	if s.devNull, err = os.OpenFile(os.DevNull, os.O_RDWR, 0); err != nil {
		return nil, err
	}
	s.child = [3]*os.File{s.devNull, s.devNull, s.devNull}
	if p.Stdin != nil {
		if s.child[0], s.stdin, err = os.Pipe(); err != nil {
			s.close()
			return nil, err
		}
	}
	for i, w := range []io.Writer{p.Stdout, p.Stderr} {
		if w == nil {
			continue
		}
		if i == 1 && sameWriter(p.Stdout, p.Stderr) {
			// As in os/exec: one pipe, so one goroutine writes to w.
			s.child[2] = s.child[1]
			continue
		}
		if s.out[i], s.child[i+1], err = os.Pipe(); err != nil {
			s.close()
			return nil, err
		}
	}
	return s, nil
}

// sameWriter reports whether a and b are the same writer.
func sameWriter(a, b io.Writer) (same bool) {
	defer func() {
		if recover() != nil { // not comparable
			same = false
		}
	}()
	return a == b
}

// closeChild closes the process's ends once it holds its own copies.
func (s *streams) closeChild() {
	for i, f := range s.child {
		if f != nil && f != s.devNull && (i != 2 || f != s.child[1]) {
			f.Close()
		}
	}
	s.child = [3]*os.File{}
	if s.devNull != nil {
		s.devNull.Close()
		s.devNull = nil
	}
}

// copy starts copying p.Stdin to the process and its output to p's writers.
func (s *streams) copy(p *driver.Process) {
	if s.stdin != nil {
		go func() {
			io.Copy(s.stdin, p.Stdin) // ends early if the process exits first
			s.stdin.Close()
		}()
	}
	for i, w := range []io.Writer{p.Stdout, p.Stderr} {
		if s.out[i] == nil {
			continue
		}
		s.wg.Go(func() { s.errs[i] = copyOutput(w, s.out[i]) })
	}
}

// finish, called once the process has exited, stops feeding its stdin and
// waits until its output is copied: to the end of the streams, or, if
// processes it left behind keep them open, to the end of what is buffered.
func (s *streams) finish() error {
	if s.stdin != nil {
		s.stdin.Close()
	}
	for _, r := range s.out {
		if r != nil {
			r.SetReadDeadline(time.Now())
		}
	}
	s.wg.Wait()
	return errors.Join(s.errs[:]...)
}

func (s *streams) close() {
	s.closeChild()
	for _, f := range []*os.File{s.stdin, s.out[0], s.out[1]} {
		if f != nil {
			f.Close()
		}
	}
}

// copyOutput copies r to w until r ends or its read deadline passes; then
// it copies what r holds, without waiting and at most the pipe's capacity,
// so that a process left writing in the background cannot keep it going.
// After an error from w it keeps reading, so the process never blocks on a
// full pipe, and returns that error.
func copyOutput(w io.Writer, r *os.File) error {
	buf := make([]byte, 32<<10)
	var werr error
	write := func(b []byte) {
		if werr == nil {
			_, werr = w.Write(b)
		}
	}
	for {
		n, err := r.Read(buf)
		write(buf[:n])
		if err == io.EOF {
			return werr
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			return errors.Join(werr, err)
		}
	}
	rc, err := r.SyscallConn()
	if err != nil {
		return errors.Join(werr, err)
	}
	left := 1 << 20 // pipe-max-size by default
	rc.Control(func(fd uintptr) {
		if size, err := unix.FcntlInt(fd, unix.F_GETPIPE_SZ, 0); err == nil {
			left = size
		}
	})
	for left > 0 {
		var n int
		var rerr error
		if err := rc.Control(func(fd uintptr) { n, rerr = unix.Read(int(fd), buf[:min(left, len(buf))]) }); err != nil {
			return errors.Join(werr, err)
		}
		if rerr == unix.EINTR {
			continue
		}
		if n <= 0 { // end of stream, or nothing buffered (EAGAIN)
			break
		}
		write(buf[:n])
		left -= n
	}
	return werr
}
