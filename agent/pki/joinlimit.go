package pki

import (
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"
)

// JoinLimits bound what one client of the join service can hold open or
// try. A zero field means its default. The defaults fit what a join is: one
// request of about a kilobyte (a token and a certificate request) and a
// reply of about as much, from a server that holds a valid token, over any
// link that can carry the cluster's traffic.
type JoinLimits struct {
	// ReadHeaderTimeout bounds the TLS handshake, and reading a request's
	// headers from its start; default 5s.
	ReadHeaderTimeout time.Duration
	// ReadTimeout bounds reading a whole request, body included, from its
	// start; default 10s. A client that trickles its body is cut off then.
	ReadTimeout time.Duration
	// WriteTimeout bounds writing the reply, from the end of the request's
	// headers; default 10s.
	WriteTimeout time.Duration
	// IdleTimeout bounds how long a kept-alive connection may wait for its
	// next request; default 5s. (A refused join's connection is closed
	// after the reply: the client must connect again to try again.)
	IdleTimeout time.Duration
	// MaxConnsPerSource caps the connections open at once from one source,
	// an IPv4 address or an IPv6 /64; more are closed as soon as they are
	// accepted. Default 8: a join takes one, for well under a second, and
	// a few servers behind one NAT may join together.
	MaxConnsPerSource int
	// MaxBody bounds a join request's body; default 16 KiB (a request
	// naming the most IP addresses a token may bind is about 2 KiB).
	MaxBody int64
	// FailureBurst is how many failed joins a source may make before it
	// is throttled; default 5, room for an operator's typos.
	FailureBurst int
	// FailureRefill is how long a throttled source waits for each further
	// attempt; default 10s, so at most 6 failed joins a minute from one
	// source. Until then its joins are refused with PermissionDenied
	// without looking at their tokens.
	FailureRefill time.Duration
	// WarnInterval rate-limits the WARN lines of refused joins: the first
	// refusal of an interval is logged with its details, the others are
	// counted in one summary line at the interval's end; default 1 minute.
	WarnInterval time.Duration
}

// withDefaults returns l with its zero fields set to their defaults.
func (l JoinLimits) withDefaults() JoinLimits {
	set := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	set(&l.ReadHeaderTimeout, 5*time.Second)
	set(&l.ReadTimeout, 10*time.Second)
	set(&l.WriteTimeout, 10*time.Second)
	set(&l.IdleTimeout, 5*time.Second)
	set(&l.FailureRefill, 10*time.Second)
	set(&l.WarnInterval, time.Minute)
	if l.MaxConnsPerSource <= 0 {
		l.MaxConnsPerSource = 8
	}
	if l.MaxBody <= 0 {
		l.MaxBody = 16 << 10
	}
	if l.FailureBurst <= 0 {
		l.FailureBurst = 5
	}
	return l
}

// maxTrackedSources bounds the sources a throttle remembers. Past it, the
// sources that are not throttled are forgotten first.
const maxTrackedSources = 10000

// source is where a connection or request comes from, as limits count it:
// an IPv4 address or an IPv6 /64 (one host usually has a whole /64). The
// zero source stands for anything else.
type source netip.Prefix

func sourceOf(addr string) source {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return source{}
	}
	ip := ap.Addr().Unmap().WithZone("")
	bits := 32
	if ip.Is6() {
		bits = 64
	}
	p, _ := ip.Prefix(bits)
	return source(p)
}

func (s source) String() string {
	p := netip.Prefix(s)
	if !p.IsValid() {
		return "unknown"
	}
	if p.Addr().Is4() {
		return p.Addr().String()
	}
	return p.String()
}

// sourceCapListener closes the connections it accepts from a source that
// already has max open.
type sourceCapListener struct {
	net.Listener
	max      int
	refusals *refusalLog

	mu   sync.Mutex
	open map[source]int
}

func newSourceCapListener(l net.Listener, max int, refusals *refusalLog) *sourceCapListener {
	return &sourceCapListener{Listener: l, max: max, refusals: refusals, open: map[source]int{}}
}

func (l *sourceCapListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		src := sourceOf(c.RemoteAddr().String())
		l.mu.Lock()
		over := l.open[src] >= l.max
		if !over {
			l.open[src]++
		}
		l.mu.Unlock()
		if !over {
			return &cappedConn{Conn: c, release: func() { l.release(src) }}, nil
		}
		c.Close()
		l.refusals.overCap(src, l.max)
	}
}

func (l *sourceCapListener) release(src source) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open[src]--; l.open[src] <= 0 {
		delete(l.open, src)
	}
}

// cappedConn gives its place back to its source when it is closed.
type cappedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *cappedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// throttle is a token bucket of failed joins per source: each failure
// takes one; one comes back every refill, up to burst.
type throttle struct {
	burst  int
	refill time.Duration

	mu      sync.Mutex
	buckets map[source]*bucket
}

type bucket struct {
	tokens float64
	at     time.Time // when tokens was counted
}

func newThrottle(burst int, refill time.Duration) *throttle {
	return &throttle{burst: burst, refill: refill, buckets: map[source]*bucket{}}
}

// level brings b up to now and returns its tokens.
func (t *throttle) level(b *bucket, now time.Time) float64 {
	if d := now.Sub(b.at); d > 0 {
		b.tokens = min(float64(t.burst), b.tokens+float64(d)/float64(t.refill))
		b.at = now
	}
	return b.tokens
}

// wait returns how long src must wait before it may try again; zero if
// it may now.
func (t *throttle) wait(src source, now time.Time) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	b, ok := t.buckets[src]
	if !ok {
		return 0
	}
	tokens := t.level(b, now)
	if tokens >= 1 {
		return 0
	}
	return time.Duration((1 - tokens) * float64(t.refill))
}

// fail takes a token from src's bucket.
func (t *throttle) fail(src source, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	b, ok := t.buckets[src]
	if !ok {
		if len(t.buckets) >= maxTrackedSources {
			t.forget(now)
		}
		b = &bucket{tokens: float64(t.burst), at: now}
		t.buckets[src] = b
	}
	t.level(b, now)
	b.tokens = max(0, b.tokens-1)
}

// forget drops the sources whose buckets are full again, then, if that is
// not enough, those that may still try, then any.
func (t *throttle) forget(now time.Time) {
	for _, floor := range []float64{float64(t.burst), 1, 0} {
		for src, b := range t.buckets {
			if t.level(b, now) >= floor {
				delete(t.buckets, src)
			}
		}
		if len(t.buckets) < maxTrackedSources/2 {
			return
		}
	}
}

// refusalLog writes the WARN lines of refused joins and connections, at
// most one with details per interval, the rest counted in a summary line
// at the interval's end.
type refusalLog struct {
	log      *slog.Logger
	interval time.Duration
	now      func() time.Time

	mu         sync.Mutex
	last       time.Time // when the last line was written
	joins      int       // refused joins not logged since
	throttled  int       // of which refused for too many failures
	conns      int       // connections closed over the per-source cap, not logged since
	sources    map[source]bool
	lastRemote string
	lastErr    error
	timer      *time.Timer
}

func newRefusalLog(log *slog.Logger, interval time.Duration, now func() time.Time) *refusalLog {
	return &refusalLog{log: log, interval: interval, now: now, sources: map[source]bool{}}
}

// refused records a refused join.
func (r *refusalLog) refused(remote string, throttled bool, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.quiet() {
		r.joins++
		if throttled {
			r.throttled++
		}
		r.noteSource(sourceOf(remote))
		r.lastRemote, r.lastErr = remote, err
		return
	}
	r.log.Warn("join refused", "remote", remote, "err", err)
}

// overCap records a connection closed because its source had max open.
func (r *refusalLog) overCap(src source, max int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.quiet() {
		r.conns++
		r.noteSource(src)
		return
	}
	r.log.Warn("join server: connection closed: too many open from one source", "source", src.String(), "max", max)
}

func (r *refusalLog) noteSource(src source) {
	if len(r.sources) < 1000 {
		r.sources[src] = true
	}
}

// quiet reports whether a line was written less than an interval ago, and
// then makes sure a summary comes at the interval's end. If not, it counts
// the line about to be written. r.mu is held.
func (r *refusalLog) quiet() bool {
	now := r.now()
	if !r.last.IsZero() && now.Sub(r.last) < r.interval {
		if r.timer == nil {
			r.timer = time.AfterFunc(r.interval-now.Sub(r.last), r.flush)
		}
		return true
	}
	r.last = now
	return false
}

// flush writes the summary of what was not logged, if anything.
func (r *refusalLog) flush() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.timer != nil {
		r.timer.Stop()
		r.timer = nil
	}
	if r.joins == 0 && r.conns == 0 {
		return
	}
	r.log.Warn("join refusals (summary)", "refused_joins", r.joins, "throttled", r.throttled,
		"connections_over_cap", r.conns, "sources", len(r.sources), "interval", r.interval,
		"last_remote", r.lastRemote, "last_err", r.lastErr)
	r.last = r.now()
	r.joins, r.throttled, r.conns = 0, 0, 0
	r.lastRemote, r.lastErr = "", nil
	clear(r.sources)
}
