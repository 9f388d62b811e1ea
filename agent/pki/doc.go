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
// Rotation: a Keyring holds credentials that change while they are in
// use; the TLS configurations made from it (ServerConfig, ClientConfig,
// and the agent's Server and Dial) read the certificate at every
// handshake, so rotating it (Rotate, Renew, KeepRenewed) needs no
// restart, and connections made before go on. A renewal (RenewPath on
// the join server) authenticates with the current certificate, valid and
// not revoked, and gets one for the same name, addresses and usage, for a
// new key. LoadCredentials refuses expired and not yet valid certificates
// with errcode.FailedPrecondition.
//
// Revocation: the CA records every certificate it issues (in its
// directory once saved, shared by the processes using it) and revokes
// them by serial (Revoke) or by name (RevokeName) by signing an X.509 CRL
// whose CRL number grows with each. A Keyring takes a CRL (SetCRL) only if
// the CA signed it and it is not older than the one it holds, keeps it in
// its directory (crl.pem), and from then on its TLS configurations refuse
// the certificates it lists. The join server serves the CRL at CRLPath.
//
// Whoever holds a certificate from the cluster CA controls every agent's
// driver: guard the CA key (ca.key, mode 0600) and the agents' keys as
// root credentials.
package pki
