// Package lxc is the container driver for LXC: it implements
// driver.Driver, driver.Images, driver.Snapshotter, driver.Transferer,
// driver.Host and driver.Autostarter of package container/driver with
// liblxc, through github.com/lxc/go-lxc (imported as golxc).
//
// # Requirements
//
// The driver runs as root and makes privileged containers. It needs the
// Debian packages lxc (liblxc and the lxc-start program) and, to build,
// lxc-dev and a C compiler, since go-lxc uses cgo. The kernel must have
// cgroups mounted as LXC expects: cgroup v1 (a hierarchy per controller
// under /sys/fs/cgroup), v2 (unified) or both (hybrid). Open reads the
// layout from /proc/self/mountinfo and writes each limit with the key of
// the hierarchy that manages its controller: memory.limit_in_bytes or
// memory.max, cpu.cfs_quota_us and cpu.cfs_period_us or cpu.max, pids.max.
// AppArmor is not used (lxc.apparmor.profile = unconfined). Containers boot
// /sbin/init and are halted with SIGUSR2, on which the base image's init
// ends its processes and exits (as busybox init powers off).
//
// # Layout
//
// Open(ctx, dir, opts) keeps a server's state in dir: its containers in
// dir/containers, which is the LXC path (lxcpath) of this driver alone,
// never the system's /var/lib/lxc, and its images in the store dir/images.
// So several simulated servers share one machine, each with its own
// directory. A container's directory holds LXC's config, rootfs/, lxc.log,
// snapshots/, muster.json, Muster's record of its spec and creation
// time, and init, the init process of the last start. The config is rendered from muster.json by a pure function, which
// checks every value it writes; Start renders it again. Containers,
// imports, snapshots and restores are assembled in staging directories
// (.staging-*) of the lxcpath and renamed into place, so a failed or
// crashed operation leaves nothing half made; Open removes staging
// directories a crash left behind.
//
// Host-side veth names are "mst" plus a hash of the container's directory
// and the network's index, unique on the machine. Start puts them on their
// bridges itself, through netlink: LXC would look bridges up under
// /sys/class/net, which shows the network namespace of whoever mounted /sys.
//
// # Network namespaces
//
// LXC's command socket is an abstract unix socket, and those are scoped to
// a network namespace. Every call of a driver must run in the network
// namespace from which its containers were started; seen from another
// namespace LXC reports a running container stopped. Start records the
// container's init (PID and start time), so that from another namespace
// Get still reports it running, and Start, Stop, Delete and the other
// operations fail with errcode.FailedPrecondition instead of starting it
// twice or removing its files under it. In production the agent process runs in the server's
// namespace. Enter it with nsenter --net=/run/netns/NAME, which keeps the
// mount namespace: ip netns exec mounts a new /sys without the cgroup
// filesystems, and LXC then cannot apply limits. Bridges are looked up, and
// veths created, in the same namespace.
//
// # Processes
//
// Start runs lxc-start rather than starting the container in this process,
// because LXC moves the process that starts a container into the
// container's monitor cgroup. Exec attaches with liblxc: the process is a
// child of the caller, with a clean environment (PATH and HOME, plus
// Process.Env).
package lxc
