package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/musterkit/muster/agent"
	"github.com/musterkit/muster/agent/pki"
	"github.com/musterkit/muster/container/memcontainer"
)

// rotateAndRevoke shows the cluster's certificates changing under load:
// with a CA, its join server and three agents (agent.Server, in-memory
// drivers) in this process on loopback, it renews an agent's and the
// orchestrator's certificates while calls run, then revokes an agent,
// which every other party refuses from then on.
func rotateAndRevoke(ctx context.Context) error {
	step("certificates: rotation under load, then revocation (a CA, its join server and agents a0-a2 on loopback)")
	var wg sync.WaitGroup // the servers
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // runs first: the servers stop
	ca, err := pki.NewCA("demo", nil)
	if err != nil {
		return err
	}
	lo := []netip.Addr{netip.MustParseAddr("127.0.0.1")}
	listen := func() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }

	joinCreds, err := ca.Issue("join", lo, time.Hour, pki.UsageServer)
	if err != nil {
		return err
	}
	jl, err := listen()
	if err != nil {
		return err
	}
	wg.Go(func() { pki.NewAuthority(ca, nil).Serve(ctx, jl, joinCreds) })
	joinURL := "https://" + jl.Addr().String()

	keyring := func(name string, usage pki.Usage, ips []netip.Addr) (*pki.Keyring, error) {
		creds, err := ca.Issue(name, ips, time.Hour, usage)
		if err != nil {
			return nil, err
		}
		return pki.NewKeyring(creds)
	}
	var keys []*pki.Keyring
	var addrs []string
	for _, name := range []string{"a0", "a1", "a2"} {
		k, err := keyring(name, pki.UsageAgent, lo)
		if err != nil {
			return err
		}
		l, err := listen()
		if err != nil {
			return err
		}
		srv := agent.NewServer(k, memcontainer.New(&memcontainer.Options{Hostname: name}), nil)
		wg.Go(func() { srv.Serve(ctx, l) })
		keys, addrs = append(keys, k), append(addrs, l.Addr().String())
	}
	orch, err := keyring("orchestrator", pki.UsageClient, nil)
	if err != nil {
		return err
	}
	var clients []*agent.Client
	for _, a := range addrs {
		c, err := agent.Dial(ctx, a, orch, nil)
		if err != nil {
			return err
		}
		defer c.Close()
		clients = append(clients, c)
	}

	// Four callers, on the connection kept and on new ones, while a0 and
	// the orchestrator renew three times each.
	serial := func(k *pki.Keyring) string { return fmt.Sprintf("%x", k.Current().Cert.Leaf.SerialNumber)[:8] }
	a0Before, orchBefore := serial(keys[0]), serial(orch)
	var calls, failed atomic.Int64
	lctx, stopLoad := context.WithCancel(ctx)
	var load sync.WaitGroup
	for i := range 4 {
		load.Go(func() {
			for lctx.Err() == nil {
				c := clients[0]
				if i == 0 { // a new connection, and handshake, for each call
					var err error
					if c, err = agent.Dial(lctx, addrs[0], orch, nil); err != nil {
						if lctx.Err() == nil {
							calls.Add(1)
							failed.Add(1)
						}
						continue
					}
				}
				calls.Add(1)
				if _, err := c.HostInfo(lctx); err != nil && lctx.Err() == nil {
					failed.Add(1)
				}
				if i == 0 {
					c.Close()
				}
			}
		})
	}
	for range 3 {
		time.Sleep(50 * time.Millisecond)
		for _, k := range []*pki.Keyring{keys[0], orch} {
			if err := k.Renew(ctx, joinURL); err != nil {
				stopLoad()
				load.Wait()
				return err
			}
		}
	}
	time.Sleep(50 * time.Millisecond)
	stopLoad()
	load.Wait()
	fmt.Printf("  renewed 3 times at the join server, new keys, same names: a0 %s... -> %s..., orchestrator %s... -> %s...\n",
		a0Before, serial(keys[0]), orchBefore, serial(orch))
	fmt.Printf("  meanwhile %d calls to a0 (old and new connections), %d failed\n", calls.Load(), failed.Load())
	if failed.Load() != 0 {
		return fmt.Errorf("%d calls failed during the rotation", failed.Load())
	}

	crl, err := ca.RevokeName("a2")
	if err != nil {
		return err
	}
	if _, err := orch.SetCRL(crl.DER()); err != nil {
		return err
	}
	for _, c := range clients[:2] {
		if err := c.PutCRL(ctx, crl); err != nil {
			return err
		}
	}
	fmt.Printf("  revoked a2: CRL #%v, signed by the CA, pushed to a0 and a1 and taken by the orchestrator\n", crl.Number())
	_, err = clients[2].HostInfo(ctx)
	fmt.Printf("  orchestrator -> a2:   %v\n", err)
	_, err = clients[0].Pull(ctx, addrs[2], "anything", "", nil)
	fmt.Printf("  a0 pulls from a2:     %v\n", err)
	_, err = agent.Dial(ctx, addrs[1], keys[2], nil)
	fmt.Printf("  a2 as a client of a1: %v\n", err)
	h, err := clients[1].HostInfo(ctx)
	if err != nil {
		return errors.Join(errors.New("a1 after the revocation"), err)
	}
	fmt.Printf("  orchestrator -> a1:   ok (%s)\n", h.Hostname)
	return nil
}
