// Package pki is the cluster's public-key infrastructure and its join
// protocol: a CA that issues the certificates agents and clients
// authenticate with (mutual TLS 1.3, client and server usages), the
// Credentials a server keeps, and the one-time join tokens by which a new
// server gets its certificate.
//
// Joining: an Authority holds the cluster CA and makes one-time tokens,
// "muster1.<secret>.<CA fingerprint>", each bound to the name and IP
// addresses of the server it is for. A new server calls Join with a
// token: it generates its key, talks only to a join server whose
// certificate chains to the pinned CA, and sends a certificate request;
// the Authority redeems the token (single use, expiring) and issues a
// certificate usable as client and server, for exactly the name and
// addresses the token was made for. It keeps a record of the names it
// admitted, and a name already admitted needs a re-join token, which the
// operator asks for explicitly: a new server cannot take an existing
// one's identity. The private key never leaves the server. The join
// service needs no client certificate, so Serve bounds what a stranger can
// hold open or try (JoinLimits).
//
// Whoever holds a certificate from the cluster CA controls every agent's
// driver: guard the CA key (ca.key, mode 0600) and the agents' keys as
// root credentials.
package pki
