// Package consul builds Consul 1.13.9 (MPL-2.0, the last line under that
// licence) from the Go module proxy, for the tests of drivers/consul:
//
//	go build -o consul github.com/hashicorp/consul
//
// It is a module of its own so that Consul's dependencies stay out of
// Muster's. `make consul` runs it and caches the binary.
package consul
