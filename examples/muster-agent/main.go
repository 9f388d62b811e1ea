// Command muster-agent runs a server's agent: it hosts the server's
// container driver for the cluster over mutual TLS (see package agent).
//
//	muster-agent ca init --dir /etc/muster/ca            # once, on the admin host
//	muster-agent join-server --dir /etc/muster/ca --listen :7443
//	muster-agent token --dir /etc/muster/ca --name node5 --ip 10.0.0.5 --out node5.token
//	# copy node5.token to node5 (mode 0600), then on node5:
//	muster-agent serve --dir /var/lib/muster --listen 10.0.0.5:7444 --name node5 \
//	    --join https://10.0.0.1:7443 --token-file node5.token
//
// A token admits one server: the name and the IP addresses it was made
// for, once, within its --ttl. A name that has already joined needs a
// token made with --rejoin, so that a new server cannot take an existing
// one's identity. serve reads the token from --token-file or from the
// environment variable MUSTER_JOIN_TOKEN, never from its arguments, which
// every user can read in /proc/PID/cmdline; --token is refused.
//
// The first serve joins the cluster and keeps its credentials in DIR/pki;
// later starts reuse them and need no token. With --driver lxc (the
// default) the containers live in DIR (see drivers/lxc) and the agent must
// run as root, in the network namespace of the server; --driver memory
// serves an in-memory server, for trying things out. --network names the
// network drivers served (their state is kept in DIR/networks and restored
// at start); --balancer the load-balancer kinds offered (HAProxy, Nginx,
// LVS, in-memory), whose instances live in DIR/balancers and are deployed
// again at start; --storage the storage kinds offered (Gluster, MooseFS,
// NFS, in-memory), whose pools' parts live in DIR/storage and come back at
// start, before containers that mount their volumes autostart. serve starts the containers marked autostart, then
// serves until SIGINT or SIGTERM.
//
// Certificates are rotated without a restart: serve renews its own at the
// join server once --renew-at of its lifetime has passed (2/3 by default),
// presents the new one from the next connection on and saves it in
// DIR/pki. To revoke a server or a client,
//
//	muster-agent ca revoke --dir /etc/muster/ca --name node5
//
// signs a new CRL; agents fetch it from the join server every
// --crl-interval (or an orchestrator pushes it, agent.Client.PutCRL), keep
// it in DIR/pki/crl.pem and refuse node5's certificates from then on.
// `ca certs` lists what the CA issued.
//
// TCP MD5 signatures (BGP passwords) need plain TCP listeners: the kernel
// refuses MD5 keys on the MPTCP sockets Go listens with by default.
//
//go:debug multipathtcp=0
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/musterkit/muster/agent"
	"github.com/musterkit/muster/agent/pki"
	"github.com/musterkit/muster/container"
	"github.com/musterkit/muster/container/driver"
	"github.com/musterkit/muster/discovery"
	"github.com/musterkit/muster/drivers/consul"
	"github.com/musterkit/muster/errcode"
	netdriver "github.com/musterkit/muster/network/driver"
	"github.com/musterkit/muster/network/restore"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRoot().ExecuteContext(ctx)
	stop()
	if err != nil {
		os.Exit(1)
	}
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:          "muster-agent",
		Short:        "Run a server's Muster agent, and the cluster CA's join service",
		SilenceUsage: true,
	}
	var level slog.Level
	root.PersistentFlags().TextVar(&level, "log-level", slog.LevelInfo, "log level: debug, info, warn or error")
	logger := func() *slog.Logger {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	}
	root.AddCommand(serveCmd(logger), caCmd(), tokenCmd(), joinServerCmd(logger))
	return root
}

func serveCmd(logger func() *slog.Logger) *cobra.Command {
	var (
		dir, listen, name, joinURL, tokenFile, driverName string
		tokenArg, publishConsul                           string
		publishEvery                                      time.Duration
		ips                                               []net.IP
		networks, balancers, floating, storage            []string
		discoveryKind                                     string
	)
	var renew renewal
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve this server's containers to the cluster",
		Long: `Serve this server's containers to the cluster.

The first start joins the cluster: it needs --join, --name and a join token
(muster-agent token) made for this --name and for exactly the addresses the
certificate is to name (--ip, or the --listen IP). The token is read from
--token-file (a file only its owner may read: mode 0600) or from the
environment variable ` + tokenEnv + `, which serve removes from its
environment at once so that the processes it starts do not inherit it.
--token is refused: the arguments of a process stay readable by every user
in /proc/PID/cmdline for as long as it runs. Later starts reuse the
credentials kept in DIR/pki and need no token.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, log := cmd.Context(), logger()
			token, err := joinToken(cmd.Flags().Changed("token"), tokenFile)
			if err != nil {
				return err
			}
			addrs, err := certIPs(ips, listen)
			if err != nil {
				return err
			}
			creds, err := credentials(ctx, log, filepath.Join(dir, "pki"), joinURL, token, name, addrs)
			if err != nil {
				return err
			}
			keys, stopRenewing, err := renew.start(ctx, log, filepath.Join(dir, "pki"), joinURL)
			if err != nil {
				return err
			}
			defer stopRenewing()
			openers, err := pick(containerDrivers, []string{driverName}, "container driver")
			if err != nil {
				return err
			}
			hostname := creds.Cert.Leaf.Subject.CommonName
			// Storage first: containers that autostart mount its volumes.
			st, err := openStorage(ctx, storage, filepath.Join(dir, "storage"), hostname, storageAddr(addrs, listen), log)
			if st == nil {
				return err
			}
			if err != nil {
				log.Error("restoring storage pools", "err", err)
			}
			defer st.Close()
			d, err := openers[driverName](ctx, dir, hostname, st, log)
			if err != nil {
				return err
			}
			defer d.Close()
			nets, err := openNetworks(ctx, networks, filepath.Join(dir, "networks"), log)
			if err != nil {
				return err
			}
			defer func() {
				for _, n := range nets {
					n.Close()
				}
			}()
			bs, err := openBalancers(ctx, balancers, filepath.Join(dir, "balancers"), log)
			if bs == nil {
				return err
			}
			if err != nil {
				log.Error("restoring balancers", "err", err)
			}
			defer bs.Close()
			fs, err := openFloatingIPs(ctx, floating, filepath.Join(dir, "floating-ips"), log)
			if fs == nil {
				return err
			}
			if err != nil {
				log.Error("restoring floating IPs", "err", err)
			}
			defer fs.Close()
			services := []agent.Service{agent.NetworkService(nets), bs, fs, st}
			if discoveryKind != "" {
				openers, err := pick(discoveryKinds, []string{discoveryKind}, "discovery kind")
				if err != nil {
					return err
				}
				reg := openers[discoveryKind](log)
				defer reg.Close()
				services = append(services, agent.DiscoveryService(discoveryKind, reg))
			}
			if a, ok := d.(driver.Autostarter); ok {
				started, err := a.StartAutostart(ctx)
				if err != nil {
					log.Error("autostart", "err", err)
				} else {
					log.Info("autostart", "started", started)
				}
			}
			if publishConsul != "" {
				stop, err := publish(ctx, publishConsul, publishEvery, creds.Cert.Leaf.Subject.CommonName, d, log)
				if err != nil {
					return err
				}
				defer stop()
			}
			l, err := net.Listen("tcp", listen)
			if err != nil {
				return err
			}
			log.Info("serving", "name", creds.Cert.Leaf.Subject.CommonName, "addr", l.Addr(), "driver", driverName, "ca", creds.CAFingerprint)
			err = agent.NewServer(keys, d, &agent.ServerOptions{Logger: log, Services: services}).Serve(ctx, l)
			log.Info("stopped")
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "dir", "/var/lib/muster", "state directory: credentials in DIR/pki, the driver's containers and images in DIR")
	f.StringVar(&listen, "listen", ":7444", "address to serve on")
	f.StringVar(&name, "name", "", "this server's name in the cluster (a DNS label); needed to join")
	f.IPSliceVar(&ips, "ip", nil, "IP address the certificate names, repeatable (default: the --listen IP, if one is given)")
	f.StringVar(&joinURL, "join", "", "URL of the join server: the first start joins there, and serve renews its certificate and fetches the CRL there (remembered in DIR/pki/join-url)")
	f.StringVar(&tokenFile, "token-file", "", "file holding the join token (muster-agent token --out), mode 0600, for the first start; or set "+tokenEnv)
	f.StringVar(&tokenArg, "token", "", "refused: a token in the arguments is readable by every user in /proc/PID/cmdline; use --token-file or "+tokenEnv)
	f.StringVar(&driverName, "driver", "lxc", "container driver: "+kindList(containerDrivers))
	f.StringSliceVar(&networks, "network", []string{"vxlan"}, "network drivers to serve, repeatable: "+kindList(networkDrivers)+" (memory: in memory, every mode)")
	f.StringVar(&publishConsul, "publish-consul", "", "publish the services of this server's labelled containers (muster.io/service, muster.io/port) to the Consul agent at this host:port")
	f.DurationVar(&publishEvery, "publish-interval", 10*time.Second, "how often --publish-consul syncs; a dead agent's services expire after three of these")
	f.StringVar(&discoveryKind, "discovery", "", "serve a service registry to the cluster (agent.Client.Discovery): "+kindList(discoveryKinds)+" (the embedded registry, with real health checks); none if empty")
	f.StringSliceVar(&floating, "floating-ip", []string{"keepalived"}, "floating-IP speaker kinds to offer: "+kindList(floatingIPKinds)+", or none (an empty value)")
	f.StringSliceVar(&balancers, "balancer", slices.Sorted(maps.Keys(balancerKinds)), "load-balancer kinds to offer, repeatable: "+kindList(balancerKinds))
	f.StringSliceVar(&storage, "storage", slices.Sorted(maps.Keys(storageKinds)), "storage kinds to offer, repeatable: "+kindList(storageKinds))
	renew.flags(f)
	return cmd
}

// tokenEnv names the environment variable serve takes a join token from.
const tokenEnv = "MUSTER_JOIN_TOKEN"

// maxTokenFile bounds what serve reads of a --token-file.
const maxTokenFile = 4 << 10

// joinToken returns a function that reads the join token from file or,
// if file is empty, from the environment (empty if neither gives one).
// It removes the token from this process's environment at once, so that
// no child inherits it. A token given as an argument (tokenArg) is refused.
func joinToken(tokenArg bool, file string) (func() (string, error), error) {
	env, inEnv := os.LookupEnv(tokenEnv)
	os.Unsetenv(tokenEnv)
	switch {
	case tokenArg:
		return nil, fmt.Errorf("--token is refused: the arguments of a process are readable by every user in /proc/PID/cmdline; " +
			"pass the join token in a file only its owner may read (--token-file) or in " + tokenEnv)
	case file != "" && inEnv:
		return nil, fmt.Errorf("a join token in --token-file and in %s: give it one way", tokenEnv)
	case file == "":
		return func() (string, error) { return strings.TrimSpace(env), nil }, nil
	}
	return func() (string, error) { return readTokenFile(file) }, nil
}

// readTokenFile reads a join token from path, which others may not read
// or write if it is a regular file.
func readTokenFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("--token-file: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("--token-file: %w", err)
	}
	if st.Mode().IsRegular() && st.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("--token-file %s has mode %v: others may read the join token; chmod 600 it (muster-agent token --out writes it so)", path, st.Mode().Perm())
	}
	data, err := io.ReadAll(io.LimitReader(f, maxTokenFile+1))
	if err != nil {
		return "", fmt.Errorf("--token-file: %w", err)
	}
	token := strings.TrimSpace(string(data))
	if len(data) > maxTokenFile || token == "" || strings.ContainsAny(token, " \t\r\n") {
		return "", fmt.Errorf("--token-file %s holds no join token: want one line, as muster-agent token prints", path)
	}
	return token, nil
}

// credentials loads the agent's credentials from dir or, on the first
// start, joins the cluster with the token that readToken gives and saves
// them there.
func credentials(ctx context.Context, log *slog.Logger, dir, joinURL string, readToken func() (string, error), name string, ips []netip.Addr) (*pki.Credentials, error) {
	creds, err := pki.LoadCredentials(dir)
	if err == nil {
		if joinURL != "" {
			log.Info("already joined; ignoring --join and the join token", "credentials", dir)
		}
		return creds, nil
	}
	if !errors.Is(err, errcode.NotFound) {
		return nil, err
	}
	token, err := readToken()
	if err != nil {
		return nil, err
	}
	if joinURL == "" || token == "" || name == "" {
		return nil, fmt.Errorf("no credentials in %s: the first start needs --join, --name and a join token (--token-file or %s)", dir, tokenEnv)
	}
	creds, err = pki.Join(ctx, joinURL, token, name, ips)
	if err != nil {
		return nil, err
	}
	if err := creds.Save(dir); err != nil {
		return nil, err
	}
	log.Info("joined the cluster", "name", name, "ips", ips, "ca", creds.CAFingerprint, "expires", creds.Cert.Leaf.NotAfter)
	return creds, nil
}

// openNetworks opens the network drivers named, in this process's network
// namespace (the server's), each keeping what it applies under
// stateDir/<name> (package network/restore), and restores what an earlier
// run applied: networks whose state lives in this process (userspace
// WireGuard, BGP speakers) carry traffic again without the orchestrator.
func openNetworks(ctx context.Context, kinds []string, stateDir string, log *slog.Logger) (map[netdriver.Mode]netdriver.Driver, error) {
	openers, err := pick(networkDrivers, kinds, "network driver")
	if err != nil {
		return nil, err
	}
	nets := map[netdriver.Mode]netdriver.Driver{}
	for name, open := range openers {
		d, err := open(ctx, log)
		if err != nil {
			return nil, err
		}
		kept, err := restore.Wrap(d, filepath.Join(stateDir, name), log)
		if err != nil {
			return nil, err
		}
		ids, err := kept.Restore(ctx)
		if err != nil {
			log.Error("restoring networks", "driver", name, "err", err)
		}
		if len(ids) > 0 {
			log.Info("networks restored", "driver", name, "networks", ids)
		}
		for _, mode := range d.Capabilities().Modes {
			nets[mode] = kept
		}
	}
	return nets, nil
}

// openBalancers offers the load-balancer kinds named, with their
// instances under dir, and deploys again those an earlier run kept. HAProxy
// and Nginx outlive an agent that dies (the data plane keeps serving while
// the control plane is away); the restarted agent's drivers end them and
// start their own when they deploy the kept configurations. A graceful stop
// stops them. A nil result comes with the error that prevented it;
// otherwise the error says which balancers did not come back.
func openBalancers(ctx context.Context, kinds []string, dir string, log *slog.Logger) (*agent.Balancers, error) {
	openers, err := pick(balancerKinds, kinds, "balancer kind")
	if err != nil {
		return nil, err
	}
	offered := map[string]agent.BalancerKind{}
	for name, open := range openers {
		offered[name] = open(log)
	}
	return agent.OpenBalancers(ctx, dir, offered, log)
}

// openStorage offers the storage kinds named, with each pool's part under
// dir, and applies again those an earlier run kept: their daemons start
// and their mounts come back (or are taken back where they outlived the
// agent). A nil result comes with the error that prevented it; otherwise
// the error says which pools did not come back.
func openStorage(ctx context.Context, kinds []string, dir, hostname string, addr netip.Addr, log *slog.Logger) (*agent.Storage, error) {
	openers, err := pick(storageKinds, kinds, "storage kind")
	if err != nil {
		return nil, err
	}
	offered := map[string]agent.StorageKind{}
	for name, open := range openers {
		offered[name] = open(hostname, addr, log)
	}
	return agent.OpenStorage(ctx, dir, offered, log)
}

// storageAddr is the address this server's storage is reached at: its
// certificate's first address, else the --listen address's.
func storageAddr(certIPs []netip.Addr, listen string) netip.Addr {
	if len(certIPs) > 0 {
		return certIPs[0]
	}
	ap, _ := netip.ParseAddrPort(listen)
	return ap.Addr()
}

// publish keeps the services of the server's labelled containers
// registered in the Consul agent at addr until the returned stop is
// called, which withdraws them. An unreachable Consul is retried, so that
// the agent serves meanwhile.
func publish(ctx context.Context, addr string, every time.Duration, server string, d driver.Driver, log *slog.Logger) (stop func(), err error) {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return nil, fmt.Errorf("--publish-consul %q: %w", addr, err)
	}
	pctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := consul.Open(pctx, &consul.Options{Address: addr})
			if err == nil {
				reg, err := discovery.New(c, &discovery.Options{Logger: log})
				if err != nil {
					log.Error("publishing services", "err", err)
					return
				}
				defer reg.Close()
				p, err := discovery.NewPublisher(reg, server, container.NewServer(d, nil), &discovery.PublisherOptions{Interval: every, Logger: log})
				if err != nil {
					log.Error("publishing services", "err", err)
					return
				}
				log.Info("publishing services", "consul", addr)
				if err := p.Run(pctx); err != nil {
					log.Error("withdrawing published services", "err", err)
				}
				return
			}
			log.Warn("publishing services: consul not reachable; retrying", "consul", addr, "err", err)
			select {
			case <-pctx.Done():
				return
			case <-time.After(5 * time.Second):
			}
		}
	}()
	return func() { cancel(); <-done }, nil
}

// openFloatingIPs offers the floating-IP speaker kinds named (keepalived,
// run in this process's network namespace: the server's), with their
// instances under dir, and applies again those an earlier run kept.
func openFloatingIPs(ctx context.Context, kinds []string, dir string, log *slog.Logger) (*agent.FloatingIPs, error) {
	openers, err := pick(floatingIPKinds, slices.DeleteFunc(kinds, func(k string) bool { return k == "" }), "floating-IP kind")
	if err != nil {
		return nil, err
	}
	offered := map[string]agent.FloatingIPKind{}
	for name, open := range openers {
		offered[name] = open(log)
	}
	return agent.OpenFloatingIPs(ctx, dir, offered, log)
}

// certIPs returns ips, or the IP of listen if ips is empty and listen
// names one.
func certIPs(ips []net.IP, listen string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, ip := range ips {
		a, _ := netip.AddrFromSlice(ip)
		out = append(out, a.Unmap())
	}
	if len(out) > 0 {
		return out, nil
	}
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return nil, fmt.Errorf("--listen %q: %w", listen, err)
	}
	if a, err := netip.ParseAddr(host); err == nil && !a.IsUnspecified() {
		out = append(out, a)
	}
	return out, nil
}

func caCmd() *cobra.Command {
	ca := &cobra.Command{Use: "ca", Short: "Manage the cluster CA"}
	var dir, name, alg string
	initCmd := &cobra.Command{
		Use:   "init",
		Short: "Create the cluster CA in --dir",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			for _, f := range []string{"ca.crt", "ca.key"} {
				if _, err := os.Stat(filepath.Join(dir, f)); !errors.Is(err, os.ErrNotExist) {
					return fmt.Errorf("%s: a CA or agent credentials may live there (%v); not overwriting", filepath.Join(dir, f), err)
				}
			}
			c, err := pki.NewCA(name, &pki.CAOptions{Algorithm: pki.KeyAlgorithm(alg)})
			if err != nil {
				return err
			}
			if err := c.Save(dir); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "CA %q created in %s\nfingerprint %s\n", name, dir, c.Fingerprint())
			return nil
		},
	}
	initCmd.Flags().StringVar(&dir, "dir", "", "directory for the CA certificate and key")
	initCmd.Flags().StringVar(&name, "name", "muster", "the CA's name")
	initCmd.Flags().StringVar(&alg, "algorithm", string(pki.ECDSAP256), "key algorithm: ecdsa-p256 or ed25519")
	initCmd.MarkFlagRequired("dir")
	ca.AddCommand(initCmd, revokeCmd(), certsCmd())
	return ca
}

func tokenCmd() *cobra.Command {
	var (
		dir, name, out string
		ips            []net.IP
		ttl            time.Duration
		rejoin         bool
	)
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Make a one-time join token for the server --name, of the CA in --dir",
		Long: `Make a one-time join token for the server --name, of the CA in --dir, and
print it, or write it to --out (mode 0600).

The token admits that server only: its certificate names --name and exactly
the --ip addresses given (none: no address), and serve must ask for the same
(--name, and --ip or its --listen IP). Unspecified, broadcast and multicast
addresses are refused. A name that has already joined the cluster is
refused unless --rejoin is given: a re-join gives that server a new
certificate (its state was lost, or its address changed). Give the token to
serve with --token-file or MUSTER_JOIN_TOKEN, never on its command line.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ca, err := pki.LoadCA(dir)
			if err != nil {
				return err
			}
			var addrs []netip.Addr
			for _, ip := range ips {
				a, _ := netip.AddrFromSlice(ip)
				addrs = append(addrs, a.Unmap())
			}
			token, err := pki.NewAuthority(ca, &pki.AuthorityOptions{Dir: dir}).NewToken(name, ttl, &pki.TokenOptions{IPs: addrs, Rejoin: rejoin})
			if err != nil {
				return err
			}
			if out == "" {
				fmt.Fprintln(cmd.OutOrStdout(), token)
				return nil
			}
			f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return fmt.Errorf("--out: %w (not overwriting)", err)
			}
			if _, err := fmt.Fprintln(f, token); err != nil {
				f.Close()
				return err
			}
			return f.Close()
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "dir", "", "the CA's directory (ca init)")
	f.StringVar(&name, "name", "", "the name of the server the token admits (a DNS label)")
	f.IPSliceVar(&ips, "ip", nil, "an IP address the server's certificate names, repeatable; exactly these")
	f.BoolVar(&rejoin, "rejoin", false, "the server has joined before: give it a new certificate")
	f.DurationVar(&ttl, "ttl", time.Hour, "how long the token stays valid")
	f.StringVar(&out, "out", "", "write the token to this new file (mode 0600) instead of printing it")
	cmd.MarkFlagRequired("dir")
	cmd.MarkFlagRequired("name")
	return cmd
}

func joinServerCmd(logger func() *slog.Logger) *cobra.Command {
	var dir, listen, name string
	var ips []net.IP
	var certTTL time.Duration
	cmd := &cobra.Command{
		Use:   "join-server",
		Short: "Serve joins: issue certificates to servers that present a token",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, log := cmd.Context(), logger()
			ca, err := pki.LoadCA(dir)
			if err != nil {
				return err
			}
			addrs, err := certIPs(ips, listen)
			if err != nil {
				return err
			}
			// Joining servers check this certificate against the CA their
			// token pins, not against a name.
			creds, err := ca.Issue(name, addrs, 365*24*time.Hour, pki.UsageServer)
			if err != nil {
				return err
			}
			l, err := net.Listen("tcp", listen)
			if err != nil {
				return err
			}
			a := pki.NewAuthority(ca, &pki.AuthorityOptions{Dir: dir, Logger: log, CertTTL: certTTL})
			err = a.Serve(ctx, l, creds)
			log.Info("stopped")
			return err
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "the CA's directory (ca init); tokens are shared through it")
	cmd.Flags().StringVar(&listen, "listen", ":7443", "address to serve on")
	cmd.Flags().StringVar(&name, "name", "muster-join", "name in the join server's certificate")
	cmd.Flags().IPSliceVar(&ips, "ip", nil, "IP address the certificate names, repeatable (default: the --listen IP)")
	cmd.Flags().DurationVar(&certTTL, "cert-ttl", 365*24*time.Hour, "lifetime of the certificates joins and renewals issue")
	cmd.MarkFlagRequired("dir")
	return cmd
}
