package drivertest

import (
	"time"

	"github.com/musterkit/muster/lb/driver"
)

// Fixed self-signed certificates (valid for a century) for golden files:
// a.example.test (SANs a.example.test, www.a.example.test) and
// b.example.test.
const (
	fixtureCertA = `-----BEGIN CERTIFICATE-----
MIIBuTCCAWCgAwIBAgIUDoFZMsZRFo+w0X9uOjyJdjPVeggwCgYIKoZIzj0EAwIw
GTEXMBUGA1UEAwwOYS5leGFtcGxlLnRlc3QwIBcNMjYxMTI1MjAxMTM5WhgPMjEy
NjExMDEyMDExMzlaMBkxFzAVBgNVBAMMDmEuZXhhbXBsZS50ZXN0MFkwEwYHKoZI
zj0CAQYIKoZIzj0DAQcDQgAEdkzfVXBqigp86h0xeyb4+rWKHS+I75TvHb3VIU/s
Q5qWau1kbN4/yaSGuN2nTq1KrXLzvWqv0JyyED4mLKU6P6OBgzCBgDAdBgNVHQ4E
FgQUSt/x/ydHTKdxK6Qxu2Cv/2aNJ5QwHwYDVR0jBBgwFoAUSt/x/ydHTKdxK6Qx
u2Cv/2aNJ5QwDwYDVR0TAQH/BAUwAwEB/zAtBgNVHREEJjAkgg5hLmV4YW1wbGUu
dGVzdIISd3d3LmEuZXhhbXBsZS50ZXN0MAoGCCqGSM49BAMCA0cAMEQCIHjP+2Da
aj2zbn1M9hV+hwvCa+dmYn24wusn2sxJI0nFAiBFhQ62Exzn8HXQ6JXOeiRYfeEi
fR9UcOwmp7ck2Ph6uA==
-----END CERTIFICATE-----
`
	fixtureKeyA = `-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgZYxpb3ia6STM1rlD
qRhmJ+mFLX+8Pc86MiYxeM8/rsahRANCAAR2TN9VcGqKCnzqHTF7Jvj6tYodL4jv
lO8dvdUhT+xDmpZq7WRs3j/JpIa43adOrUqtcvO9aq/QnLIQPiYspTo/
-----END PRIVATE KEY-----
`
	fixtureCertB = `-----BEGIN CERTIFICATE-----
MIIBpDCCAUqgAwIBAgIUe6lZxSEA2OFNhqPYAI/CtnWQlrEwCgYIKoZIzj0EAwIw
GTEXMBUGA1UEAwwOYi5leGFtcGxlLnRlc3QwIBcNMjYxMTI1MjAxMTM5WhgPMjEy
NjExMDEyMDExMzlaMBkxFzAVBgNVBAMMDmIuZXhhbXBsZS50ZXN0MFkwEwYHKoZI
zj0CAQYIKoZIzj0DAQcDQgAEu/dynnsDAjyjIwAdDLeRiDYhI5sBN87w3jtYYAO5
Qt7LPewtL/p1TCPzqj2VdG3/vifx/j7qaG7ndBXP9MOJYaNuMGwwHQYDVR0OBBYE
FDDLQmHMFmwHzQYlaIzdVqSe7CZiMB8GA1UdIwQYMBaAFDDLQmHMFmwHzQYlaIzd
VqSe7CZiMA8GA1UdEwEB/wQFMAMBAf8wGQYDVR0RBBIwEIIOYi5leGFtcGxlLnRl
c3QwCgYIKoZIzj0EAwIDSAAwRQIgQvSOka9jYD85ndbWALeDg2kdDfhe18lrNdts
DGaPVq0CIQDpqZ6fwpI5AK4X+k58fSeAqgYypLnKCYgoX86nba8xIg==
-----END CERTIFICATE-----
`
	fixtureKeyB = `-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgaaX2AHtLyzZtfxAz
XV32OVW5A3zALjA5BkA6O8tLyiahRANCAAS793KeewMCPKMjAB0Mt5GINiEjmwE3
zvDeO1hgA7lC3ss97C0v+nVMI/OqPZV0bf++J/H+Pupobud0Fc/0w4lh
-----END PRIVATE KEY-----
`
)

// GoldenConfigs returns the configs every rendering driver keeps golden
// files of, by file name stem. They cover every feature of the model.
func GoldenConfigs() map[string]*driver.Config {
	web := driver.Pool{Name: "web", Servers: []driver.Server{
		{Name: "web-1", Address: "198.18.0.1", Port: 8080},
		{Name: "web-2", Address: "198.18.0.2", Port: 8080, Weight: 3},
		{Name: "spare", Address: "spare.example.test", Port: 8080, Backup: true},
	}}
	return map[string]*driver.Config{
		"empty": {},
		"tcp": {
			Pools: []driver.Pool{{Name: "db", Algorithm: driver.LeastConnections, Servers: []driver.Server{
				{Name: "db-1", Address: "198.18.0.1", Port: 5432},
				{Name: "db-2", Address: "2001:db8::2", Port: 5432, State: driver.Drain},
				{Name: "db-3", Address: "198.18.0.3", Port: 5432, State: driver.Maintenance},
			}, HealthCheck: &driver.HealthCheck{Type: driver.TCPCheck, Interval: 500 * time.Millisecond, Rise: 2, Fall: 3}}},
			Frontends: []driver.Frontend{{Name: "db", Protocol: driver.TCP, Address: "198.18.0.254", Port: 5432, DefaultPool: "db"}},
		},
		"algorithms": {
			Pools: []driver.Pool{
				{Name: "rr", Algorithm: driver.RoundRobin, Servers: web.Servers[:2]},
				{Name: "static", Algorithm: driver.Weighted, Servers: web.Servers[:2]},
				{Name: "lc", Algorithm: driver.LeastConnections, Servers: web.Servers[:2]},
				{Name: "sticky", Algorithm: driver.SourceHash, Servers: web.Servers[:2]},
			},
			Frontends: []driver.Frontend{
				{Name: "rr", Protocol: driver.HTTP, Address: "0.0.0.0", Port: 8001, DefaultPool: "rr"},
				{Name: "static", Protocol: driver.HTTP, Address: "0.0.0.0", Port: 8002, DefaultPool: "static"},
				{Name: "lc", Protocol: driver.TCP, Address: "0.0.0.0", Port: 8003, DefaultPool: "lc"},
				{Name: "sticky", Protocol: driver.TCP, Address: "::", Port: 8004, DefaultPool: "sticky"},
			},
		},
		"ingress": {
			Pools: []driver.Pool{web, {Name: "api", Servers: []driver.Server{{Name: "api-1", Address: "198.18.0.4", Port: 9000}},
				HealthCheck: &driver.HealthCheck{Type: driver.HTTPCheck, Path: "/healthz", ExpectStatus: 204, Interval: time.Second, Timeout: 300 * time.Millisecond, Rise: 1, Fall: 2}}},
			Frontends: []driver.Frontend{{
				Name: "www", Protocol: driver.HTTP, Address: "198.18.0.254", Port: 80, DefaultPool: "web",
				Routes: []driver.Route{
					{Name: "api", Host: "api.example.test", PathPrefix: "/v1", Pool: "api",
						RequestHeaders:  []driver.Header{{Name: "X-Forwarded-Prefix", Value: "/v1"}},
						ResponseHeaders: []driver.Header{{Name: "Cache-Control", Value: "no-store"}}},
					{Name: "static", PathPrefix: "/static", Pool: "web", ResponseHeaders: []driver.Header{{Name: "Cache-Control", Value: "max-age=3600"}}},
					{Name: "old-site", Host: "old.example.test", Redirect: &driver.Redirect{Host: "www.example.test", Scheme: "https", StatusCode: 301}},
					{Name: "alt-port", Host: "alt.example.test", Redirect: &driver.Redirect{Host: "alt.example.test", Port: 8443}},
				},
			}},
		},
		"tls": {
			Pools: []driver.Pool{web, {Name: "tcp", Servers: web.Servers}},
			Frontends: []driver.Frontend{
				{Name: "https", Protocol: driver.HTTP, Address: "198.18.0.254", Port: 443, DefaultPool: "web",
					TLS: &driver.TLS{Certificates: []driver.Certificate{
						{Name: "a", CertPEM: []byte(fixtureCertA), KeyPEM: []byte(fixtureKeyA)},
						{Name: "b", CertPEM: []byte(fixtureCertB), KeyPEM: []byte(fixtureKeyB), ServerNames: []string{"b.example.test", "*.b.example.test"}},
					}},
					Routes: []driver.Route{{Name: "b", Host: "b.example.test", Pool: "web"}}},
				{Name: "http", Protocol: driver.HTTP, Address: "198.18.0.254", Port: 80,
					Routes: []driver.Route{{Name: "to-https", Redirect: &driver.Redirect{Scheme: "https", StatusCode: 308}}}},
				{Name: "tls-tcp", Protocol: driver.TCP, Address: "198.18.0.254", Port: 8443, DefaultPool: "tcp",
					TLS: &driver.TLS{Certificates: []driver.Certificate{{Name: "a", CertPEM: []byte(fixtureCertA), KeyPEM: []byte(fixtureKeyA)}}}},
			},
		},
	}
}

// FuzzConfig builds a config whose every text field comes from the
// arguments, for fuzzing renderers: a frontend (HTTP if n is odd) with a
// route, a pool with a server and an HTTP health check. Callers skip
// configs that fail Validate.
func FuzzConfig(name, host, path, headerName, headerValue, address string, n uint8) *driver.Config {
	proto := driver.TCP
	var routes []driver.Route
	if n%2 == 1 {
		proto = driver.HTTP
		routes = []driver.Route{{Name: name, Host: host, PathPrefix: path, Pool: name,
			RequestHeaders:  []driver.Header{{Name: headerName, Value: headerValue}},
			ResponseHeaders: []driver.Header{{Name: headerName, Value: headerValue}}}}
		if n%4 == 3 {
			routes = append(routes, driver.Route{Name: "r", Host: host, Redirect: &driver.Redirect{Host: host, Port: uint16(n)}})
		}
	}
	return &driver.Config{
		Pools: []driver.Pool{{Name: name, Algorithm: []driver.Algorithm{driver.RoundRobin, driver.Weighted, driver.LeastConnections, driver.SourceHash}[n%4],
			Servers:     []driver.Server{{Name: name, Address: address, Port: uint16(n) + 1, Weight: int(n), Backup: n > 128, State: []driver.AdminState{driver.Ready, driver.Drain, driver.Maintenance}[n%3]}},
			HealthCheck: &driver.HealthCheck{Type: driver.HTTPCheck, Path: path}}},
		Frontends: []driver.Frontend{{Name: name, Protocol: proto, Address: "198.18.0.254", Port: 80, DefaultPool: name, Routes: routes}},
	}
}
