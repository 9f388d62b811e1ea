package consul

import (
	"context"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/musterkit/muster/errcode"
)

// Leadership is a held leader lock.
type Leadership struct {
	lock *api.Lock
	// Lost is closed when the lock is lost: its session was invalidated
	// (the holder's agent failed, or its TTL ran out) or Consul could not
	// be reached. A controller stops acting as leader when it closes.
	Lost <-chan struct{}
}

// Release gives the lock up; another contender may take it at once.
func (l *Leadership) Release() error {
	if err := l.lock.Unlock(); err != nil && err != api.ErrLockNotHeld {
		return consulErr("releasing the lock", err)
	}
	return nil
}

// LockOptions configures Lock. A nil *LockOptions means the defaults.
type LockOptions struct {
	// Holder is stored as the key's value, for operators to see who
	// leads.
	Holder string
	// TTL of the lock's session: if the holder's process stops renewing
	// it (it is renewed every TTL/2), the lock is released after it;
	// 0 means 15s. 10s to 24h.
	TTL time.Duration
	// Delay after a lost lock before another may take it, against a
	// former leader still acting; 0 means none.
	Delay time.Duration
}

// Lock blocks until this caller holds the leader lock on key (a KV path of
// letters, digits and "-_./", not starting with "/"), or ctx ends. Several
// controllers call Lock on one key: one leads at a time.
func (d *Driver) Lock(ctx context.Context, key string, opts *LockOptions) (*Leadership, error) {
	if err := d.checkOpen(); err != nil {
		return nil, err
	}
	if key == "" || strings.HasPrefix(key, "/") || strings.Contains(key, "..") || strings.IndexFunc(key, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./", r))
	}) >= 0 {
		return nil, errcode.New(errcode.InvalidArgument, "consul: lock key %q: want letters, digits and -_./, relative", key)
	}
	if opts == nil {
		opts = &LockOptions{}
	}
	ttl := opts.TTL
	if ttl == 0 {
		ttl = 15 * time.Second
	}
	if ttl < 10*time.Second || ttl > 24*time.Hour {
		return nil, errcode.New(errcode.InvalidArgument, "consul: lock TTL %v out of range 10s..24h", ttl)
	}
	l, err := d.c.LockOpts(&api.LockOptions{
		Key:         key,
		Value:       []byte(opts.Holder),
		SessionName: "muster-lock " + key,
		SessionTTL:  ttl.String(),
		LockDelay:   opts.Delay,
		// Retry the session monitor across short outages rather than
		// drop leadership at the first failed query.
		MonitorRetries: 3,
		// The waiting query is not cancellable: keep it short, so that
		// a cancelled ctx ends Lock within a second.
		LockWaitTime: time.Second,
	})
	if err != nil {
		return nil, consulErr("preparing the lock", err)
	}
	lost, err := l.Lock(ctx.Done())
	if err != nil {
		return nil, consulErr("taking the lock "+key, err)
	}
	if lost == nil { // stopped by ctx
		return nil, ctx.Err()
	}
	return &Leadership{lock: l, Lost: lost}, nil
}
