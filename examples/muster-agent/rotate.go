package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/musterkit/muster/agent/pki"
)

// joinURLFile keeps, beside the credentials, the URL of the join server
// that serve renews its certificate at and fetches the CRL from.
const joinURLFile = "join-url"

// renewal is how serve keeps its credentials current: its flags, and the
// Keyring it serves with.
type renewal struct {
	at       float64
	crlEvery time.Duration
}

func (r *renewal) flags(f *pflag.FlagSet) {
	f.Float64Var(&r.at, "renew-at", 2.0/3, "renew the certificate at the join server when this fraction of its lifetime has passed, without restarting")
	f.DurationVar(&r.crlEvery, "crl-interval", time.Minute, "how often to fetch the cluster's CRL from the join server (0: never); the orchestrator can also push it (agent.Client.PutCRL)")
}

// start opens the credentials in dir (joined or loaded already) as a
// Keyring that keeps the CRL there too, and, if a join server is known
// (joinURL, or the one an earlier start recorded), keeps them renewed and
// the CRL fetched until ctx ends or stop is called.
func (r *renewal) start(ctx context.Context, log *slog.Logger, dir, joinURL string) (keys *pki.Keyring, stop func(), err error) {
	if r.at <= 0 || r.at >= 1 {
		return nil, nil, fmt.Errorf("--renew-at %v: want a fraction between 0 and 1", r.at)
	}
	keys, err = pki.OpenKeyring(dir)
	if err != nil {
		return nil, nil, err
	}
	path := filepath.Join(dir, joinURLFile)
	if joinURL != "" {
		if err := os.WriteFile(path, []byte(joinURL+"\n"), 0o600); err != nil {
			return nil, nil, err
		}
	} else if data, err := os.ReadFile(path); err == nil {
		joinURL = strings.TrimSpace(string(data))
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, nil, err
	}
	leaf := keys.Current().Cert.Leaf
	if joinURL == "" {
		log.Warn("no join server known: the certificate will not be renewed, nor the CRL fetched; start once with --join", "expires", leaf.NotAfter)
		return keys, func() {}, nil
	}
	crlEvery := r.crlEvery
	if crlEvery <= 0 {
		crlEvery = -1
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		keys.KeepRenewed(rctx, joinURL, &pki.RenewOptions{At: r.at, CRLInterval: crlEvery, Logger: log})
	}()
	log.Info("keeping the certificate renewed", "join", joinURL, "serial", fmt.Sprintf("%x", leaf.SerialNumber), "expires", leaf.NotAfter, "renew_at", r.at)
	return keys, func() { cancel(); <-done }, nil
}

// revokeCmd revokes certificates of the CA in --dir.
func revokeCmd() *cobra.Command {
	var dir, name, serialHex string
	cmd := &cobra.Command{
		Use:   "revoke",
		Short: "Revoke a server's or client's certificates (--name) or one certificate (--serial)",
		Long: `Revoke certificates of the CA in --dir: every unexpired certificate issued
to --name, or the one with serial number --serial (hex, as "ca certs" lists
them). The CA signs a new CRL (DIR/ca.crl) with the next CRL number; the
join server serves it, agents fetch it within their --crl-interval and keep
it, and from then on every agent refuses those certificates, as clients
and as servers. An orchestrator can push it at once with agent.Client.PutCRL.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if (name == "") == (serialHex == "") {
				return errors.New("give either --name or --serial")
			}
			ca, err := pki.LoadCA(dir)
			if err != nil {
				return err
			}
			var crl *pki.CRL
			if name != "" {
				crl, err = ca.RevokeName(name)
			} else {
				s, ok := new(big.Int).SetString(strings.TrimPrefix(strings.ToLower(serialHex), "0x"), 16)
				if !ok {
					return fmt.Errorf("--serial %q is not a hex number", serialHex)
				}
				crl, err = ca.Revoke(s)
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "CRL #%v revokes %d certificates: %s\n", crl.Number(), crl.Len(), filepath.Join(dir, "ca.crl"))
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "the CA's directory (ca init)")
	cmd.Flags().StringVar(&name, "name", "", "revoke every certificate issued to this server or client")
	cmd.Flags().StringVar(&serialHex, "serial", "", "revoke the certificate with this serial number (hex)")
	cmd.MarkFlagRequired("dir")
	return cmd
}

// certsCmd lists the certificates of the CA in --dir.
func certsCmd() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "certs",
		Short: "List the unexpired certificates the CA issued, and which are revoked",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ca, err := pki.LoadCA(dir)
			if err != nil {
				return err
			}
			issued, err := ca.Issued()
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 2, 4, 2, ' ', 0)
			fmt.Fprintln(w, "NAME\tSERIAL\tEXPIRES\tREVOKED")
			for _, c := range issued {
				revoked := "-"
				if !c.Revoked.IsZero() {
					revoked = c.Revoked.UTC().Format(time.RFC3339)
				}
				fmt.Fprintf(w, "%s\t%x\t%s\t%s\n", c.Name, c.Serial, c.NotAfter.UTC().Format(time.RFC3339), revoked)
			}
			return w.Flush()
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "the CA's directory (ca init)")
	cmd.MarkFlagRequired("dir")
	return cmd
}
