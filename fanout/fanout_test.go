package fanout_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/fanout"
)

func drain(ch <-chan int) []int {
	var out []int
	for {
		select {
		case v, ok := <-ch:
			if !ok {
				return out
			}
			out = append(out, v)
		default:
			return out
		}
	}
}

func TestSlowSubscriberLosesTheOldest(t *testing.T) {
	h := fanout.New[int](3)
	fast, _ := h.Subscribe(t.Context())
	slow, _ := h.Subscribe(t.Context())
	var got []int
	for i := 1; i <= 5; i++ {
		h.Publish(i)
		got = append(got, drain(fast)...)
	}
	if !slices.Equal(got, []int{1, 2, 3, 4, 5}) {
		t.Fatalf("a subscriber keeping up got %v", got)
	}
	if got := drain(slow); !slices.Equal(got, []int{3, 4, 5}) {
		t.Fatalf("a subscriber 5 behind with a buffer of 3 got %v, want the newest 3", got)
	}
}

func TestSubscriptionsEnd(t *testing.T) {
	h := fanout.New[int](0)
	ctx, cancel := context.WithCancel(context.Background())
	ch, _ := h.Subscribe(ctx)
	kept, _ := h.Subscribe(context.Background())
	cancel()
	select {
	case _, ok := <-ch:
		if ok {
			t.Fatal("an event after the subscription's context ended")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the channel was not closed when its context ended")
	}
	h.Publish(1) // reaches kept only; no panic on the closed one
	h.Close()
	h.Close()
	if got := drain(kept); !slices.Equal(got, []int{1}) {
		t.Fatalf("kept subscriber got %v", got)
	}
	if _, ok := <-kept; ok {
		t.Fatal("Close left a channel open")
	}
	if _, err := h.Subscribe(context.Background()); !errors.Is(err, errcode.FailedPrecondition) {
		t.Fatalf("Subscribe after Close: %v", err)
	}
	h.Publish(2) // after Close: nothing, no panic
}

func TestConcurrentPublishers(t *testing.T) {
	h := fanout.New[int](1000)
	ch, _ := h.Subscribe(t.Context())
	done := make(chan struct{})
	for p := range 4 {
		go func() {
			for i := range 100 {
				h.Publish(p*100 + i)
			}
			done <- struct{}{}
		}()
	}
	for range 4 {
		<-done
	}
	if got := drain(ch); len(got) != 400 {
		t.Fatalf("got %d events of 400", len(got))
	}
}
