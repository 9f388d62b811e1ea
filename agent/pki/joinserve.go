package pki

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// Serve serves joins over TLS on l with creds (a server certificate of the
// authority's CA) until ctx is done, then shuts down gracefully.
func (a *Authority) Serve(ctx context.Context, l net.Listener, creds *Credentials) error {
	srv := &http.Server{
		Handler:           a.Handler(),
		TLSConfig:         &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{creds.Cert}},
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelDebug),
	}
	a.log.Info("serving joins", "addr", l.Addr(), "ca", creds.CAFingerprint)
	done := make(chan error, 1)
	go func() { done <- srv.ServeTLS(l, "", "") }()
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
