package agent

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"
)

// peerName is the caller's identity: the common name of the certificate
// it presented, which the CA issued to it.
func peerName(r *http.Request) string {
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		return r.TLS.PeerCertificates[0].Subject.CommonName
	}
	return ""
}

// callNote is what a handler tells logged about its call, through the
// request's context.
type callNote struct{ audited bool }

type callNoteKey struct{}

// noting returns r with a fresh callNote in its context.
func noting(r *http.Request) (*http.Request, *callNote) {
	n := &callNote{}
	return r.WithContext(context.WithValue(r.Context(), callNoteKey{}, n)), n
}

// audit logs at Info, whatever the method, that the caller of r is about
// to take a whole container or image out of the server, put one in, move
// one between agents or run a program in one, with the caller's name and
// address and args; logged then logs the call's outcome at Info too. An
// exec is logged with its program, not its arguments, which may hold
// secrets.
func (s *Server) audit(r *http.Request, action string, args ...any) {
	if n, ok := r.Context().Value(callNoteKey{}).(*callNote); ok {
		n.audited = true
	}
	attrs := append([]any{"action", action, "peer", peerName(r), "addr", r.RemoteAddr, "path", r.URL.Path}, args...)
	s.log.InfoContext(r.Context(), "agent audit", attrs...)
}

// handshakeLog is the http.Server's error log. It reports failed TLS
// handshakes (a client without an acceptable certificate, or one that is
// not speaking TLS) at Warn, at most once an interval: the first failure
// after a quiet interval at once, then one summary an interval with the
// number of failures since and the last one's source and error, so a flood
// of bad handshakes costs a line an interval. The server's other messages
// stay at Debug.
type handshakeLog struct {
	log      *slog.Logger
	interval time.Duration

	mu       sync.Mutex
	count    int         // failures not yet reported
	lastFrom string      // the source of the last of them
	lastErr  string      // and its error
	timer    *time.Timer // ends the interval; nil while quiet
	closed   bool
}

// handshakePrefix begins the message net/http logs for a failed handshake:
// "http: TLS handshake error from <address>: <error>".
const handshakePrefix = "http: TLS handshake error from "

// newHandshakeLog returns a handshakeLog into log that reports at most
// once an interval (1 minute if 0).
func newHandshakeLog(log *slog.Logger, interval time.Duration) *handshakeLog {
	if interval <= 0 {
		interval = time.Minute
	}
	return &handshakeLog{log: log, interval: interval}
}

// Write takes one message of the server's log.Logger.
func (h *handshakeLog) Write(p []byte) (int, error) {
	msg := strings.TrimSuffix(string(p), "\n")
	rest, ok := strings.CutPrefix(msg, handshakePrefix)
	if !ok {
		h.log.Debug(msg)
		return len(p), nil
	}
	from, reason, _ := strings.Cut(rest, ": ")
	h.mu.Lock()
	defer h.mu.Unlock()
	h.count++
	h.lastFrom, h.lastErr = from, reason
	if h.timer == nil || h.closed {
		h.report()
		if !h.closed {
			h.timer = time.AfterFunc(h.interval, h.tick)
		}
	}
	return len(p), nil
}

// tick ends an interval: it reports the failures during it, and opens
// another if there were any.
func (h *handshakeLog) tick() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.count == 0 || h.closed {
		h.timer = nil
		return
	}
	h.report()
	h.timer.Reset(h.interval)
}

// report logs the failures not yet reported. h.mu is held.
func (h *handshakeLog) report() {
	h.log.Warn("agent: TLS handshakes failed", "count", h.count, "last_source", h.lastFrom, "last_err", h.lastErr, "interval", h.interval)
	h.count = 0
}

// close reports what is pending. Failures after it are reported one by
// one, as the server should no longer be accepting connections.
func (h *handshakeLog) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	if h.timer != nil {
		h.timer.Stop()
		h.timer = nil
	}
	if h.count > 0 {
		h.report()
	}
}
