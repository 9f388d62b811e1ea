// Package agent is the per-server daemon of a cluster and its client: a
// Server hosts a server's local container driver, and a Client, dialled to
// it, is a remote driver.Driver (with driver.Images, Snapshotter,
// Transferer, Host, Autostarter, Endpoint, Pusher and Puller), so an
// operation on a remote container is the same call as on a local one.
//
// Protocol: HTTP/2 over TLS 1.3 with mutual authentication against the
// cluster CA (both sides present CA-issued certificates; clients need the
// client-auth usage, servers the server-auth usage); with a pki.Keyring
// the certificates rotate without a restart and a CRL (PUT /v1/pki/crl)
// revokes peers, cutting off their connections. Each driver method is
// a route under /v1/ (GET /v1/containers/{name}, POST
// /v1/containers/{name}/start, ...) whose path parameters are checked (names
// are DNS labels, image references names or sha256 digests) before the
// driver sees them; arguments and results are JSON; an error is a JSON
// {"code", "message"} with a matching HTTP status, rebuilt on the client
// with the same errcode. Bodies stream: exec sends stdin as the request
// body while stdout, stderr and finally the exit status come back as
// frames (a stream-id byte, a 4-byte big-endian length, the payload) in
// the response, full duplex; export and image blobs stream as the
// response body with a status trailer, so a failure after the first byte
// is an error on the client, never a truncated success; import and put
// image stream the request body, and a client that dies mid-stream leaves
// the driver a broken stream, so it rolls back. Cancelling a call's
// context resets its HTTP/2 stream, which cancels the driver's context on
// the server.
//
// Push and pull move a container between two agents without the caller
// relaying it: POST /v1/containers/{name}/push and POST /v1/pull/{name}
// (the name is the container's on the peer) take a JSON {"peer",
// "rename"}; the agent checks them, dials the peer agent with its own
// credentials, so the cluster CA vouches for both ends, and pipes one
// driver's export into the other's import, cancelling both if either
// fails. The reply is newline-delimited JSON: {"bytes": N} progress
// frames, then {"info": ...} or {"error": {"code", "message"}}.
//
// Joining and certificates are package agent/pki's.
//
// Privileges: the package itself needs none beyond a port to listen on;
// the hosted driver needs its own (drivers/lxc: root). Whoever holds a
// certificate from the cluster CA controls every agent's driver, which can
// bind-mount any directory of its server into a container: guard the CA
// key (ca.key, mode 0600) and the agents' keys as root credentials.
package agent
