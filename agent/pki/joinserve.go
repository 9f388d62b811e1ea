package pki

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// maxJoinHeaderBytes bounds a join request's headers (a join sends a few
// hundred bytes of them); net/http allows 4 KiB more.
const maxJoinHeaderBytes = 4 << 10

// Serve serves joins over TLS on l with creds (a server certificate of the
// authority's CA) until ctx is done, then shuts down gracefully. It needs
// no client certificate, so it holds what a stranger can take within the
// Authority's JoinLimits: a connection per source up to
// MaxConnsPerSource (more are closed at once), each closed once its
// handshake and headers, its request, its reply or its wait for the next
// request outlasts its timeout. It speaks HTTP/1.1 only. It also serves
// renewals at RenewPath, which authenticate with a client certificate of
// the CA (asked for, not required), and the CA's CRL at CRLPath.
func (a *Authority) Serve(ctx context.Context, l net.Listener, creds *Credentials) error {
	lim := a.opts.Limits
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	srv := &http.Server{
		Handler:           a.withRenewal(a.Handler()),
		TLSConfig:         renewalTLS(&tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{creds.Cert}}, creds),
		Protocols:         &protocols,
		ReadHeaderTimeout: lim.ReadHeaderTimeout,
		ReadTimeout:       lim.ReadTimeout,
		WriteTimeout:      lim.WriteTimeout,
		IdleTimeout:       lim.IdleTimeout,
		MaxHeaderBytes:    maxJoinHeaderBytes,
		ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelDebug),
	}
	a.log.Info("serving joins", "addr", l.Addr(), "ca", creds.CAFingerprint,
		"max_conns_per_source", lim.MaxConnsPerSource, "read_timeout", lim.ReadTimeout, "idle_timeout", lim.IdleTimeout)
	done := make(chan error, 1)
	go func() { done <- srv.ServeTLS(newSourceCapListener(l, lim.MaxConnsPerSource, a.refusals), "", "") }()
	defer a.refusals.flush()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := srv.Shutdown(sctx)
	<-done
	return err
}
