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
	lock    *api.Lock
	kv      *api.KV
	key     string
	session string // the lock's session, which holds the key while it leads
	// Lost is closed when the lock is lost: its session was invalidated
	// (the holder's agent failed, or its TTL ran out) or Consul could not
	// be reached. A controller stops acting as leader when it closes.
	Lost <-chan struct{}
}

// Fence returns nil if this leadership still holds its key, asked of
// Consul's leader with a consistent read: the key's session is still this
// lock's. Otherwise, or when Consul cannot answer, it is an error
// (errcode.FailedPrecondition, or Unavailable): a controller asks it
// before each action (schedule.ControllerOptions.Fence), so that a leader
// deposed while Lost has not yet closed never acts.
func (l *Leadership) Fence(ctx context.Context) error {
	select {
	case <-l.Lost:
		return errcode.New(errcode.FailedPrecondition, "consul: the leadership of %s was lost", l.key)
	default:
	}
	pair, _, err := l.kv.Get(l.key, (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err != nil {
		return consulErr("checking the leadership of "+l.key, err)
	}
	if pair == nil || pair.Session != l.session {
		return errcode.New(errcode.FailedPrecondition, "consul: the leadership of %s has passed to another session", l.key)
	}
	return nil
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
	if err := kvPath(key); err != nil {
		return nil, err
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
	pair, _, err := d.c.KV().Get(key, (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err != nil {
		l.Unlock()
		return nil, consulErr("reading the lock "+key, err)
	}
	if pair == nil || pair.Session == "" {
		l.Unlock()
		return nil, errcode.New(errcode.Internal, "consul: the lock %s has no session after it was taken", key)
	}
	return &Leadership{lock: l, kv: d.c.KV(), key: key, session: pair.Session, Lost: lost}, nil
}

// kvPath checks a KV path given to Lock or ScheduleStore: letters, digits
// and "-_./", relative, without "..".
func kvPath(key string) error {
	if key == "" || strings.HasPrefix(key, "/") || strings.Contains(key, "..") || strings.IndexFunc(key, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./", r))
	}) >= 0 {
		return errcode.New(errcode.InvalidArgument, "consul: KV path %q: want letters, digits and -_./, relative", key)
	}
	return nil
}
