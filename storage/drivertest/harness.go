// Package drivertest is the conformance suite every storage driver
// passes: the same subtests, by the same names, for the in-memory driver
// and for Gluster, MooseFS and NFS on their real daemons.
package drivertest

import (
	"net/netip"
	"testing"

	"github.com/musterkit/muster/storage/driver"
)

// Harness opens a driver's instances for the suite.
type Harness struct {
	// Servers returns n servers (n is 2 to 4) for one subtest, fresh to
	// the storage driver: nothing of an earlier subtest's pools on them.
	// The suite makes pools whose members are the first Layout's members
	// and uses the others as clients.
	Servers func(t *testing.T, n int) []Server
	// Layout is the layout of the suite's pools and Members how many
	// servers they span (Replicate with Copies 2 over 2 members for
	// Gluster, Single over 1 for NFS).
	Layout  driver.Layout
	Members int
	// Files, if set, reads and writes a volume's files from srv, whose
	// driver is d: through d's mount of it if the suite mounted it there,
	// else as a client of the volume (status is the volume's status on the
	// coordinator, with its Source), for drivers that cannot mount here
	// (Capabilities().Mount is false). If nil, the suite reads and writes
	// the mount's Path with package os.
	Files func(t *testing.T, d driver.Driver, srv Server, status driver.VolumeStatus) Files
}

// Server is one server for the suite.
type Server struct {
	Name string
	Addr netip.Addr
	// Open opens the server's part in pool (the driver of that pool on
	// that server, in a directory of its own); opening it again after
	// Close gives a driver on the same directory, as an agent that
	// restarts does.
	Open func(t *testing.T, pool string) driver.Driver
}

// Files reads and writes files at the top of a volume.
type Files interface {
	WriteFile(name string, data []byte) error
	ReadFile(name string) ([]byte, error)
}
