package drivertest

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/musterkit/muster/lb/driver"
)

// OKBackend starts an HTTP server on loopback that answers "ok", until the
// test ends, and returns its port.
func OKBackend(t *testing.T) uint16 {
	t.Helper()
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	t.Cleanup(backend.Close)
	port, err := strconv.Atoi(backend.URL[strings.LastIndex(backend.URL, ":")+1:])
	if err != nil {
		t.Fatal(err)
	}
	return uint16(port)
}

// ServesTLS applies to d, a fresh balancer, an HTTPS frontend on loopback
// (with a certificate of a throw-away CA) in front of an OKBackend, then
// makes each change (which may modify the configuration in force and
// apply it), and checks after the first apply and after every change that
// a GET through the frontend answers "ok". Drivers' own tests use it for
// what they must serve through: an instance directory that needs quoting,
// a reload path, a runtime change.
func ServesTLS(t *testing.T, d driver.Driver, changes ...func(cfg *driver.Config) error) {
	t.Helper()
	ca := NewCA(t)
	addr, port := LoopbackBind(t)
	cfg := &driver.Config{
		Pools: []driver.Pool{{Name: "web", Servers: []driver.Server{{Name: "a", Address: "127.0.0.1", Port: OKBackend(t)}}}},
		Frontends: []driver.Frontend{{Name: "www", Protocol: driver.HTTP, Address: addr, Port: port, DefaultPool: "web",
			TLS: &driver.TLS{Certificates: []driver.Certificate{ca.Issue(t, "a", "a.example.test")}}}},
	}
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool, ServerName: "a.example.test"}}}
	defer c.CloseIdleConnections()
	apply := func(cfg *driver.Config) error { return ApplyRebinding(t.Context(), t, d, cfg, LoopbackBind) }
	for i, change := range append([]func(*driver.Config) error{apply}, changes...) {
		if err := change(cfg); err != nil {
			t.Fatalf("change %d: %v", i, err)
		}
		// The frontend's address once applied: another if that was taken meanwhile.
		url := fmt.Sprintf("https://%s:%d/", cfg.Frontends[0].Address, cfg.Frontends[0].Port)
		if body, err := Get(c, url); err != nil || body != "ok" {
			t.Fatalf("after change %d: GET %s = %q, %v", i, url, body, err)
		}
	}
}
