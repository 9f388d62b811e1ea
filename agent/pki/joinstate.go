package pki

import (
	"bytes"
	"encoding/json"
	"errors"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/musterkit/muster/errcode"
)

// Files of an Authority's directory. Both are 0600, replaced atomically,
// and changed only under an exclusive lock of tokensLock, so that the
// processes that make tokens and the one that serves joins share them.
const (
	tokensFile  = "tokens.json"  // outstanding tokens, by hex SHA-256 of the secret
	serversFile = "servers.json" // the servers that joined, by name
	tokensLock  = "tokens.lock"
)

// tokenRecord is what an Authority keeps of an outstanding join token:
// what it admits, never its secret.
type tokenRecord struct {
	Expires time.Time    `json:"expires"`
	Name    string       `json:"name"`
	IPs     []netip.Addr `json:"ips,omitempty"`
	Rejoin  bool         `json:"rejoin,omitempty"`
}

// serverRecord is what an Authority keeps of a server it admitted: the
// last certificate a join issued to it.
type serverRecord struct {
	IPs     []netip.Addr `json:"ips,omitempty"`
	Serial  string       `json:"serial"` // hex
	Issued  time.Time    `json:"issued"`
	Expires time.Time    `json:"expires"`
}

// joinState is an Authority's outstanding tokens and the servers it
// admitted.
type joinState struct {
	tokens  map[string]tokenRecord
	servers map[string]serverRecord
}

func newJoinState() *joinState {
	return &joinState{tokens: map[string]tokenRecord{}, servers: map[string]serverRecord{}}
}

// update runs f on the Authority's state, expired tokens removed, and
// keeps what f leaves if it succeeds; if f fails, nothing changes. With a
// Dir, a file lock serializes it with other processes, and the files are
// replaced atomically, the servers first: a crash between the two writes
// leaves a token unspent for a name already recorded, which that record
// then refuses, never a certificate without its record.
func (a *Authority) update(f func(*joinState) error) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.opts.Now()
	expired := func(_ string, t tokenRecord) bool { return !now.Before(t.Expires) }
	if a.opts.Dir == "" {
		st := &joinState{tokens: maps.Clone(a.state.tokens), servers: maps.Clone(a.state.servers)}
		maps.DeleteFunc(st.tokens, expired)
		if err := f(st); err != nil {
			return err
		}
		a.state = st
		return nil
	}
	lock, err := os.OpenFile(filepath.Join(a.opts.Dir, tokensLock), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer lock.Close() // releases the lock
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return err
	}
	st := newJoinState()
	tokensData, err := a.readState(tokensFile, func(data []byte) error {
		// Entries that are no tokenRecord (a bare expiry time, as
		// versions before tokens were bound to a name kept) bind no name:
		// they are dropped, never honoured.
		var raw map[string]json.RawMessage
		if err := json.Unmarshal(data, &raw); err != nil {
			return err
		}
		for h, v := range raw {
			var rec tokenRecord
			if json.Unmarshal(v, &rec) == nil && rec.Name != "" {
				st.tokens[h] = rec
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	serversData, err := a.readState(serversFile, func(data []byte) error { return json.Unmarshal(data, &st.servers) })
	if err != nil {
		return err
	}
	maps.DeleteFunc(st.tokens, expired)
	if err := f(st); err != nil {
		return err
	}
	if err := a.writeState(serversFile, serversData, st.servers); err != nil {
		return err
	}
	return a.writeState(tokensFile, tokensData, st.tokens)
}

// readState reads the state file name, if it exists, with decode, and
// returns its content.
func (a *Authority) readState(name string, decode func([]byte) error) ([]byte, error) {
	path := filepath.Join(a.opts.Dir, name)
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if err := decode(data); err != nil {
		return nil, errcode.New(errcode.Internal, "%s: %w", path, err)
	}
	return data, nil
}

// writeState replaces the state file name with v, unless that is what it
// holds (old).
func (a *Authority) writeState(name string, old []byte, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if bytes.Equal(data, old) || old == nil && string(data) == "{}" {
		return nil
	}
	return writeFileAtomic(filepath.Join(a.opts.Dir, name), data, 0o600)
}
