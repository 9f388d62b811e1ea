package schedule

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/names"
)

// Store keeps what a controller is told (the deployments) and what it
// must remember across restarts (each job's last converged version, to
// roll back to). The embedded default is a bbolt file (OpenStore); the
// Consul driver keeps it in Consul's KV for controllers on several
// machines.
type Store interface {
	// Put adds or replaces deployment d.
	Put(ctx context.Context, d *Deployment) error
	// Delete removes deployment name; errcode.NotFound if there is none.
	Delete(ctx context.Context, name string) error
	// Deployments returns every deployment, sorted by name.
	Deployments(ctx context.Context) ([]Deployment, error)
	// SetStable records d as its job's last converged version.
	SetStable(ctx context.Context, d *Deployment) error
	// Stable returns job's last converged version; nil if none.
	Stable(ctx context.Context, job string) (*Deployment, error)
	Close() error
}

var (
	deploymentsBucket = []byte("deployments")
	stableBucket      = []byte("stable")
)

// BoltStore is a Store in one bbolt file.
type BoltStore struct{ db *bolt.DB }

var _ Store = (*BoltStore)(nil)

// OpenStore opens (creating if needed) the store in file path, mode 0600.
// Another process holding it is errcode.Unavailable after a second.
func OpenStore(path string) (*BoltStore, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, errcode.New(errcode.Unavailable, "schedule store %s: another process holds it", path)
	}
	if err != nil {
		return nil, errcode.Syscall(err, "schedule store %s", path)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{deploymentsBucket, stableBucket} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		db.Close()
		return nil, errcode.Wrap(errcode.Internal, err)
	}
	return &BoltStore{db: db}, nil
}

func (s *BoltStore) put(bucket []byte, d *Deployment) error {
	if err := d.Validate(); err != nil {
		return err
	}
	data, err := json.Marshal(d)
	if err != nil {
		return errcode.Wrap(errcode.Internal, err)
	}
	return s.update(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Put([]byte(d.Name), data) })
}

func (s *BoltStore) update(fn func(*bolt.Tx) error) error {
	if err := s.db.Update(fn); err != nil {
		if errcode.Of(err) != errcode.Unknown {
			return err
		}
		return errcode.Wrap(errcode.Internal, err)
	}
	return nil
}

// Put implements Store.
func (s *BoltStore) Put(_ context.Context, d *Deployment) error { return s.put(deploymentsBucket, d) }

// SetStable implements Store.
func (s *BoltStore) SetStable(_ context.Context, d *Deployment) error { return s.put(stableBucket, d) }

// Delete implements Store; the job's stable version goes too.
func (s *BoltStore) Delete(_ context.Context, name string) error {
	if err := names.Label(name); err != nil {
		return err
	}
	return s.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(deploymentsBucket)
		if b.Get([]byte(name)) == nil {
			return errcode.New(errcode.NotFound, "no deployment %q", name)
		}
		if err := b.Delete([]byte(name)); err != nil {
			return err
		}
		return tx.Bucket(stableBucket).Delete([]byte(name))
	})
}

// Deployments implements Store.
func (s *BoltStore) Deployments(context.Context) ([]Deployment, error) {
	var out []Deployment
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(deploymentsBucket).ForEach(func(k, v []byte) error {
			var d Deployment
			if err := json.Unmarshal(v, &d); err != nil {
				return fmt.Errorf("deployment %q: %w", k, err)
			}
			out = append(out, d)
			return nil
		})
	})
	if err != nil {
		return nil, errcode.Wrap(errcode.Internal, err)
	}
	return out, nil
}

// Stable implements Store.
func (s *BoltStore) Stable(_ context.Context, job string) (*Deployment, error) {
	var d *Deployment
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(stableBucket).Get([]byte(job))
		if v == nil {
			return nil
		}
		d = new(Deployment)
		return json.Unmarshal(v, d)
	})
	if err != nil {
		return nil, errcode.Wrap(errcode.Internal, err)
	}
	return d, nil
}

// Close implements Store.
func (s *BoltStore) Close() error { return s.db.Close() }
