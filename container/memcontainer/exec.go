package memcontainer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/musterkit/muster/container/driver"
	"github.com/musterkit/muster/errcode"
)

// Exec implements driver.Driver with the built-in programs listed in the
// package documentation.
func (d *Driver) Exec(ctx context.Context, name string, p *driver.Process) (int, error) {
	if err := d.checkOpen(); err != nil {
		return 0, err
	}
	d.mu.Lock()
	c, err := d.get(name)
	if err == nil && c.state != driver.Running {
		err = errcode.New(errcode.FailedPrecondition, "container %q is %s, not running", name, c.state)
	}
	var spec driver.Spec
	if err == nil {
		spec = cloneSpec(&c.spec)
		spec.Mounts = slices.Clone(c.mounts)
	}
	d.mu.Unlock()
	if err != nil {
		return -1, err
	}
	stdin, stdout, stderr := streams(p)
	prog, found := withFS(d, name, func(t tree) (string, bool) { return t.lookPath(p.Args[0]) })
	if !found {
		fmt.Fprintf(stderr, "sh: %s: not found\n", p.Args[0])
		return 127, nil
	}
	run, ok := builtins[path.Base(prog)]
	if !ok {
		return -1, errcode.New(errcode.Unimplemented, "memcontainer has no built-in %q", path.Base(prog))
	}
	x := &execution{d: d, ctx: ctx, name: name, spec: spec, proc: p, stdin: stdin, stdout: stdout, stderr: stderr}
	code := run(x, p.Args[1:])
	if err := ctx.Err(); err != nil {
		return -1, err
	}
	return code, nil
}

func streams(p *driver.Process) (io.Reader, io.Writer, io.Writer) {
	stdin, stdout, stderr := p.Stdin, p.Stdout, p.Stderr
	if stdin == nil {
		stdin = strings.NewReader("")
	}
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	return stdin, stdout, stderr
}

// withFS runs f on the container's tree under the driver's lock.
func withFS[T any](d *Driver, name string, f func(tree) (T, bool)) (T, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var zero T
	c, ok := d.containers[name]
	if !ok {
		return zero, false
	}
	return f(c.fs)
}

// execution is one run of a built-in program.
type execution struct {
	d              *Driver
	ctx            context.Context
	name           string
	spec           driver.Spec
	proc           *driver.Process
	stdin          io.Reader
	stdout, stderr io.Writer
}

var builtins = map[string]func(x *execution, args []string) int{
	"true":  func(*execution, []string) int { return 0 },
	"false": func(*execution, []string) int { return 1 },
	"echo": func(x *execution, args []string) int {
		fmt.Fprintln(x.stdout, strings.Join(args, " "))
		return 0
	},
	"cat": func(x *execution, args []string) int {
		if len(args) == 0 {
			return x.copyOut(x.stdin)
		}
		code := 0
		for _, a := range args {
			data, err := x.readFile(a)
			if err != nil {
				fmt.Fprintf(x.stderr, "cat: %v\n", err)
				code = 1
				continue
			}
			x.stdout.Write(data)
		}
		return code
	},
	"tee": func(x *execution, args []string) int {
		data, err := io.ReadAll(x.stdin)
		if err != nil {
			return 1
		}
		code := 0
		for _, a := range args {
			if err := x.writeFile(a, data); err != nil {
				fmt.Fprintf(x.stderr, "tee: %v\n", err)
				code = 1
			}
		}
		x.stdout.Write(data)
		return code
	},
	"sleep": func(x *execution, args []string) int {
		if len(args) != 1 {
			fmt.Fprintln(x.stderr, "usage: sleep SECONDS")
			return 1
		}
		secs, err := strconv.ParseFloat(args[0], 64)
		if err != nil || secs < 0 {
			fmt.Fprintf(x.stderr, "sleep: invalid number %q\n", args[0])
			return 1
		}
		select {
		case <-time.After(time.Duration(secs * float64(time.Second))):
			return 0
		case <-x.ctx.Done():
			return 137
		}
	},
	"env": func(x *execution, args []string) int {
		for _, kv := range x.proc.Env {
			fmt.Fprintln(x.stdout, kv)
		}
		return 0
	},
	"pwd": func(x *execution, args []string) int {
		dir := x.proc.Dir
		if dir == "" {
			dir = "/"
		}
		fmt.Fprintln(x.stdout, dir)
		return 0
	},
	"rm": func(x *execution, args []string) int {
		return x.edit("rm", args, 1, func(t tree, args []string) error {
			for _, a := range args {
				if n, ok := t[x.abs(a)]; !ok || n.mode.IsDir() {
					return fmt.Errorf("cannot remove %s: not a file", a)
				}
				delete(t, x.abs(a))
			}
			return nil
		})
	},
	"chmod": func(x *execution, args []string) int {
		return x.edit("chmod", args, 2, func(t tree, args []string) error {
			mode, err := strconv.ParseUint(args[0], 8, 12)
			if err != nil {
				return fmt.Errorf("invalid mode %q", args[0])
			}
			for _, a := range args[1:] {
				n, ok := t[x.abs(a)]
				if !ok {
					return fmt.Errorf("%s: No such file or directory", a)
				}
				cp := *n
				cp.mode = n.mode&^fs.ModePerm | fs.FileMode(mode)&fs.ModePerm
				t[x.abs(a)] = &cp
			}
			return nil
		})
	},
	// ln -sf TARGET NAME makes NAME a symlink to TARGET, replacing a file.
	"ln": func(x *execution, args []string) int {
		return x.edit("ln", args, 3, func(t tree, args []string) error {
			if len(args) != 3 || args[0] != "-sf" {
				return errors.New("usage: ln -sf TARGET NAME")
			}
			p := x.abs(args[2])
			if n, ok := t[p]; ok && n.mode.IsDir() {
				return fmt.Errorf("%s: Is a directory", args[2])
			}
			t[p] = &node{mode: fs.ModeSymlink | 0o777, target: args[1], mtime: time.Now()}
			return nil
		})
	},
	"hostname": func(x *execution, args []string) int {
		fmt.Fprintln(x.stdout, x.name)
		return 0
	},
}

// edit runs f, a change of the container's tree by the program prog, on
// args (at least min of them) and reports its error as prog would.
func (x *execution) edit(prog string, args []string, min int, f func(tree, []string) error) int {
	err := fmt.Errorf("missing operand")
	if len(args) >= min {
		err, _ = withFS(x.d, x.name, func(t tree) (error, bool) { return f(t, args), true })
	}
	if err != nil {
		fmt.Fprintf(x.stderr, "%s: %v\n", prog, err)
		return 1
	}
	return 0
}

func (x *execution) copyOut(r io.Reader) int {
	if _, err := io.Copy(x.stdout, r); err != nil {
		return 1
	}
	return 0
}

// abs makes p absolute against the process's working directory.
func (x *execution) abs(p string) string {
	if path.IsAbs(p) {
		return path.Clean(p)
	}
	dir := x.proc.Dir
	if dir == "" {
		dir = "/"
	}
	return path.Join(dir, p)
}

// mountFor returns the bind mount that holds p and p's path inside it.
func (x *execution) mountFor(p string) (driver.Mount, string, bool) {
	for _, m := range x.spec.Mounts {
		if rel, ok := strings.CutPrefix(p, m.Target); ok && (rel == "" || rel[0] == '/') {
			return m, strings.TrimPrefix(rel, "/"), true
		}
	}
	return driver.Mount{}, "", false
}

func (x *execution) readFile(p string) ([]byte, error) {
	p = x.abs(p)
	if m, rel, ok := x.mountFor(p); ok {
		root, err := os.OpenRoot(m.Source)
		if err != nil {
			return nil, err
		}
		defer root.Close()
		return root.ReadFile(orDot(rel))
	}
	type result struct {
		data []byte
		err  error
	}
	r, _ := withFS(x.d, x.name, func(t tree) (result, bool) {
		data, err := t.readFile(p)
		return result{data, err}, true
	})
	return r.data, r.err
}

func (x *execution) writeFile(p string, data []byte) error {
	p = x.abs(p)
	if m, rel, ok := x.mountFor(p); ok {
		if m.ReadOnly {
			return fmt.Errorf("%s: Read-only file system", p)
		}
		root, err := os.OpenRoot(m.Source)
		if err != nil {
			return err
		}
		defer root.Close()
		return root.WriteFile(orDot(rel), data, 0o644)
	}
	err, _ := withFS(x.d, x.name, func(t tree) (error, bool) {
		return t.writeFile(p, data, 0o644), true
	})
	return err
}

func orDot(rel string) string {
	if rel == "" {
		return "."
	}
	return rel
}
