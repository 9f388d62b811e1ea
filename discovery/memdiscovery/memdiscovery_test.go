package memdiscovery_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/musterkit/muster/discovery/driver"
	"github.com/musterkit/muster/discovery/drivertest"
	"github.com/musterkit/muster/discovery/memdiscovery"
	"github.com/musterkit/muster/errcode"
)

func TestConformance(t *testing.T) {
	drivertest.RunConformanceTests(t, drivertest.Harness{
		Open: func(t *testing.T) driver.Driver {
			r := memdiscovery.New(nil)
			t.Cleanup(func() { r.Close() })
			return r
		},
		CheckInterval: 200 * time.Millisecond,
	})
}

func TestWaitIndexesAndClose(t *testing.T) {
	r := memdiscovery.New(nil)
	ctx := context.Background()
	if err := r.Register(ctx, &driver.Instance{ID: "a-1", Service: "a", Address: "127.0.0.1", Port: 1}); err != nil {
		t.Fatal(err)
	}
	res, err := r.Wait(ctx, "a", 0)
	if err != nil || len(res.Entries) != 1 {
		t.Fatalf("Wait: %+v, %v", res, err)
	}
	if again, err := r.Wait(ctx, "a", res.Index+1000); err != nil || again.Index != res.Index {
		t.Fatalf("Wait with an index from the future (another registry's): %+v, %v", again, err)
	}
	done := make(chan error, 1)
	go func() { _, err := r.Wait(ctx, "a", res.Index); done <- err }()
	time.Sleep(50 * time.Millisecond)
	r.Close()
	if err := <-done; !errors.Is(err, errcode.FailedPrecondition) {
		t.Fatalf("Wait across Close: %v", err)
	}
}
