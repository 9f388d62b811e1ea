package fleet

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/musterkit/muster/agent/pki"
	"github.com/musterkit/muster/roottest"
)

func TestSweepRemovesOnlyDeadFleets(t *testing.T) {
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	dead := cmd.Process.Pid
	deadDir := filepath.Join(os.TempDir(), fmt.Sprintf("%s%d-test", dirPrefix, dead))
	liveDir := filepath.Join(os.TempDir(), fmt.Sprintf("%s%d-test", dirPrefix, os.Getppid()))
	for _, d := range []string{deadDir, liveDir} {
		if err := os.MkdirAll(filepath.Join(d, "s0", "containers", "web", "rootfs"), 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(d) })
	}
	if err := Sweep(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(deadDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a dead process's fleet is still there: %v", err)
	}
	if _, err := os.Stat(liveDir); err != nil {
		t.Errorf("a live process's fleet was swept: %v", err)
	}
}

// The agents get their join tokens outside their arguments: no token in
// /proc/PID/cmdline (readable by every user) or in their environment, and
// no token file left once they joined. Each joined with a token bound to
// its name and address: its certificate names exactly those.
func TestAgentsTokenNotInArguments(t *testing.T) {
	roottest.Require(t, roottest.Binary("ip"))
	ctx := context.Background()
	bin, err := BuildAgent(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	f, err := Start(ctx, 2, Options{AgentBinary: bin, Driver: "memory", Networks: []string{"memory"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := f.Close(); err != nil {
			t.Error(err)
		}
	})
	for _, s := range f.Servers {
		s.mu.Lock()
		pid := s.agent.cmd.Process.Pid
		s.mu.Unlock()
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			t.Fatal(err)
		}
		args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
		if !slices.Contains(args, "serve") || !slices.Contains(args, "--token-file") {
			t.Fatalf("%s: /proc/%d/cmdline is not the agent's serve with --token-file: %q", s.Name, pid, args)
		}
		environ, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if err != nil {
			t.Fatal(err)
		}
		for what, text := range map[string]string{"arguments": string(cmdline), "environment": string(environ)} {
			if strings.Contains(text, "muster1.") || slices.Contains(args, "--token") {
				t.Fatalf("%s: a join token is in the agent's %s: %q", s.Name, what, text)
			}
		}
		if tokens, _ := filepath.Glob(filepath.Join(f.dir, "*.token")); len(tokens) > 0 {
			t.Fatalf("token files left after the joins: %v", tokens)
		}
		host, err := s.Client.HostInfo(ctx)
		if err != nil || host.Hostname != s.Name {
			t.Fatalf("%s: HostInfo %+v, %v", s.Name, host, err)
		}
		creds, err := pki.LoadCredentials(filepath.Join(s.Dir, "pki"))
		if err != nil {
			t.Fatal(err)
		}
		if leaf := creds.Cert.Leaf; leaf.Subject.CommonName != s.Name || len(leaf.IPAddresses) != 1 || !leaf.IPAddresses[0].Equal(s.Host.Addr.AsSlice()) {
			t.Fatalf("%s: certificate for %s %v; want %s [%s]", s.Name, leaf.Subject.CommonName, leaf.IPAddresses, s.Name, s.Host.Addr)
		}
	}
}
