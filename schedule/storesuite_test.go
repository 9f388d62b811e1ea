package schedule_test

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/schedule"
	"github.com/musterkit/muster/schedule/storetest"
)

func TestMemStore(t *testing.T) { storetest.Run(t, schedule.NewMemStore()) }

func TestBoltStore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "schedule.db")
	s, err := schedule.OpenStore(path)
	if err != nil {
		t.Fatal(err)
	}
	storetest.Run(t, s)
	if _, err := schedule.OpenStore(path); !errors.Is(err, errcode.Unavailable) {
		t.Fatalf("a second open while held: %v", err)
	}
	s.Close()
	again, err := schedule.OpenStore(path)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if got, err := again.Deployments(t.Context()); err != nil || len(got) != 1 || got[0].Name != "api" {
		t.Fatalf("after reopening: %+v, %v", got, err)
	}
}
