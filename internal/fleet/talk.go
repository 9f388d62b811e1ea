package fleet

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"time"

	"github.com/musterkit/muster/container"
)

// Talk sends msg over TCP from container from on server src to container to
// on server dst, which listens at addr, with busybox nc in both, and
// returns what the listener received. It retries the connection for a few
// seconds, while the listener starts, and gives up after 30 seconds.
func Talk(ctx context.Context, src *container.Server, from string, dst *container.Server, to string, addr netip.Addr, msg string) (string, error) {
	type result struct {
		out  string
		code int
		err  error
	}
	got := make(chan result, 1)
	lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	go func() {
		var out strings.Builder
		// The listener's stdin stays open: at its end nc would half-close
		// the connection, and the sender, seeing that, could quit before
		// it sent anything.
		stdin, open := io.Pipe()
		defer open.Close()
		code, err := dst.Exec(lctx, to, &container.Process{Args: []string{"nc", "-l", "-p", "7000"}, Stdin: stdin, Stdout: &out, Stderr: &out})
		got <- result{out.String(), code, err}
	}()
	for try := 0; ; try++ {
		code, err := src.Exec(lctx, from, &container.Process{
			Args:  []string{"nc", "-w", "2", addr.String(), "7000"},
			Stdin: strings.NewReader(msg),
		})
		if err != nil {
			return "", err
		}
		if code == 0 {
			break
		}
		if try == 50 {
			return "", fmt.Errorf("%s cannot connect to %s at %v:7000", from, to, addr)
		}
		time.Sleep(100 * time.Millisecond)
	}
	r := <-got
	if r.err != nil || r.code != 0 {
		return r.out, fmt.Errorf("the listener in %s: exit %d, %v", to, r.code, r.err)
	}
	return r.out, nil
}
