// Package e2e holds end-to-end tests: real muster-agent processes with the
// LXC driver on simulated servers (internal/fleet), driven through
// container.Cluster. It has no code of its own.
package e2e
