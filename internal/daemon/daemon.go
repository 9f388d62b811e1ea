// Package daemon runs the long-lived processes that drivers manage
// (HAProxy, Nginx and keepalived today; the storage daemons next) and
// reconfigures them.
//
// A Process is one started daemon, in a process group of its own, so that
// ending it ends its workers too, always by the group's id, never by name.
//
// An Instance is a daemon with its configuration file in an instance
// directory. It owns the steps every config-rendering driver takes after
// its pure render: check the rendered bytes with the real binary, swap
// them atomically into place, reload the running daemon or start it, and
// put the previous file back (and have the daemon load it again, unless it
// said it kept the old one) if that fails, so a configuration that fails
// never replaces the running one. New first ends the daemon an earlier run
// left running (internal/orphan). The driver supplies what differs between
// daemons: the check's command line, the start command and when a started
// daemon serves, and how to reload (a signal, a master CLI, waiting for
// new workers).
package daemon

import (
	"os/exec"
	"sync/atomic"
	"syscall"
	"time"
)

// Process is a started daemon.
type Process struct {
	cmd     *exec.Cmd
	done    chan struct{}
	err     error
	stopped atomic.Bool
}

// Start starts cmd as the leader of a new process group and watches for
// its end.
func Start(cmd *exec.Cmd) (*Process, error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true // a signal to the caller's group is not ours
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &Process{cmd: cmd, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	return p, nil
}

// Pid is the daemon's pid, which is also its process group's id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the daemon has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Err is how the daemon exited; valid once Done is closed.
func (p *Process) Err() error { return p.err }

// Running reports whether the daemon has not exited.
func (p *Process) Running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// Signal sends sig to the daemon (not its group).
func (p *Process) Signal(sig syscall.Signal) error { return p.cmd.Process.Signal(sig) }

// Stopped reports whether Stop was called: an exit after it was asked for.
func (p *Process) Stopped() bool { return p.stopped.Load() }

// Stop asks the daemon to end (SIGTERM), and after grace kills its whole
// process group (SIGKILL), then waits until it has exited.
func (p *Process) Stop(grace time.Duration) {
	p.stopped.Store(true)
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		syscall.Kill(-p.Pid(), syscall.SIGKILL)
		<-p.done
	}
}
