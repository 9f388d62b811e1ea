package fleet

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
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
