// Package fanout delivers events to any number of subscribers, the one way
// every Muster package and driver does it. Publish never blocks: each
// subscriber has a buffer, and one that falls more than the buffer behind
// loses its oldest events, so that what it reads next is the most recent
// (the state a watcher acts on). A subscriber that must know it missed
// events reads the current state through its driver's Status.
package fanout

import (
	"context"
	"sync"

	"github.com/musterkit/muster/errcode"
)

// DefaultBuffer is the buffer of a subscriber when New is given none.
const DefaultBuffer = 64

// Hub is a set of subscribers. The zero value is not usable; call New. It
// is safe for concurrent use.
type Hub[T any] struct {
	buffer int

	mu     sync.Mutex
	subs   map[chan T]struct{}
	closed bool
}

// New returns a Hub whose subscribers each buffer buffer events
// (DefaultBuffer if buffer < 1).
func New[T any](buffer int) *Hub[T] {
	if buffer < 1 {
		buffer = DefaultBuffer
	}
	return &Hub[T]{buffer: buffer, subs: map[chan T]struct{}{}}
}

// Subscribe returns a channel of the events published from now on. It is
// closed when ctx is done or the hub is closed. After Close, Subscribe
// fails with errcode.FailedPrecondition.
func (h *Hub[T]) Subscribe(ctx context.Context) (<-chan T, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, errcode.New(errcode.FailedPrecondition, "the event source is closed")
	}
	ch := make(chan T, h.buffer)
	h.subs[ch] = struct{}{}
	context.AfterFunc(ctx, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		if _, ok := h.subs[ch]; ok {
			delete(h.subs, ch)
			close(ch)
		}
	})
	return ch, nil
}

// Publish sends ev to every subscriber, dropping a full subscriber's
// oldest event to make room. It never blocks; after Close it does nothing.
func (h *Hub[T]) Publish(ev T) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for ch := range h.subs {
		for {
			select {
			case ch <- ev:
			default:
				select {
				case <-ch: // drop the oldest; the subscriber may have taken it meanwhile
				default:
				}
				continue
			}
			break
		}
	}
}

// Close closes every subscriber's channel; later Subscribe calls fail.
// Closing twice does nothing.
func (h *Hub[T]) Close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	for ch := range h.subs {
		delete(h.subs, ch)
		close(ch)
	}
}
