package orphan

import (
	"os/exec"
	"slices"
	"testing"
)

func TestEndUnder(t *testing.T) {
	dir := t.TempDir()
	inside := exec.Command("sh", "-c", "sleep 60", dir+"/daemon")
	outside := exec.Command("sh", "-c", "sleep 60", dir+"-other/daemon")
	for _, c := range []*exec.Cmd{inside, outside} {
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { outside.Process.Kill(); outside.Wait() })
	done := make(chan error, 1)
	go func() { done <- inside.Wait() }()
	if killed := EndUnder(dir); !slices.Contains(killed, inside.Process.Pid) || slices.Contains(killed, outside.Process.Pid) {
		t.Fatalf("EndUnder killed %v; want %d and not %d", killed, inside.Process.Pid, outside.Process.Pid)
	}
	if err := <-done; err == nil {
		t.Fatal("the process under dir exited cleanly")
	}
	if err := UnmountUnder(dir); err != nil {
		t.Fatalf("UnmountUnder with nothing mounted: %v", err)
	}
}
