package daemon

import (
	"os/exec"
	"testing"
	"time"
)

func TestStartStop(t *testing.T) {
	// A daemon that ignores SIGTERM and has a child: Stop kills the group.
	p, err := Start(exec.Command("sh", "-c", "trap '' TERM; while :; do sleep 0.05; done"))
	if err != nil {
		t.Fatal(err)
	}
	if !p.Running() || p.Pid() == 0 {
		t.Fatal("not running")
	}
	time.Sleep(200 * time.Millisecond) // until the shell ignores TERM
	start := time.Now()
	p.Stop(200 * time.Millisecond)
	if took := time.Since(start); p.Running() || took < 200*time.Millisecond || took > 5*time.Second {
		t.Fatalf("running %v after %v", p.Running(), took)
	}
	select {
	case <-p.Done():
	default:
		t.Fatal("Done not closed")
	}
	if p.Err() == nil || !p.Stopped() {
		t.Fatalf("a stopped daemon: exit %v, Stopped %v", p.Err(), p.Stopped())
	}
	q, err := Start(exec.Command("true"))
	if err != nil {
		t.Fatal(err)
	}
	<-q.Done()
	if q.Err() != nil || q.Running() || q.Stopped() {
		t.Fatalf("true: %v, Stopped %v", q.Err(), q.Stopped())
	}
}
