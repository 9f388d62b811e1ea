package consul

import (
	"context"
	"encoding/json"
	"path"
	"strings"

	"github.com/hashicorp/consul/api"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/names"
	"github.com/musterkit/muster/schedule"
)

// ScheduleStore is a schedule.Store in Consul's KV under prefix (a KV
// path like Lock's key): the deployments at prefix/deployments/<job> and
// each job's last converged version at prefix/stable/<job>, as JSON, so
// that controllers on several machines share them. Reads are consistent.
type ScheduleStore struct {
	kv     *api.KV
	prefix string
}

var _ schedule.Store = (*ScheduleStore)(nil)

// ScheduleStore returns the schedule store under prefix.
func (d *Driver) ScheduleStore(prefix string) (*ScheduleStore, error) {
	if err := d.checkOpen(); err != nil {
		return nil, err
	}
	if err := kvPath(prefix); err != nil {
		return nil, err
	}
	return &ScheduleStore{kv: d.c.KV(), prefix: strings.TrimSuffix(prefix, "/")}, nil
}

func (s *ScheduleStore) key(kind, job string) string { return path.Join(s.prefix, kind, job) }

func (s *ScheduleStore) put(ctx context.Context, kind string, d *schedule.Deployment) error {
	if err := d.Validate(); err != nil {
		return err
	}
	data, err := json.Marshal(d)
	if err != nil {
		return errcode.Wrap(errcode.Internal, err)
	}
	if _, err := s.kv.Put(&api.KVPair{Key: s.key(kind, d.Name), Value: data}, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return consulErr("storing deployment "+d.Name, err)
	}
	return nil
}

// Put implements schedule.Store.
func (s *ScheduleStore) Put(ctx context.Context, d *schedule.Deployment) error {
	return s.put(ctx, "deployments", d)
}

// SetStable implements schedule.Store.
func (s *ScheduleStore) SetStable(ctx context.Context, d *schedule.Deployment) error {
	return s.put(ctx, "stable", d)
}

// Delete implements schedule.Store.
func (s *ScheduleStore) Delete(ctx context.Context, name string) error {
	if err := names.Label(name); err != nil {
		return err
	}
	q := (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx)
	pair, _, err := s.kv.Get(s.key("deployments", name), q)
	if err != nil {
		return consulErr("reading deployment "+name, err)
	}
	if pair == nil {
		return errcode.New(errcode.NotFound, "no deployment %q", name)
	}
	w := (&api.WriteOptions{}).WithContext(ctx)
	for _, kind := range []string{"deployments", "stable"} {
		if _, err := s.kv.Delete(s.key(kind, name), w); err != nil {
			return consulErr("deleting deployment "+name, err)
		}
	}
	return nil
}

// Deployments implements schedule.Store.
func (s *ScheduleStore) Deployments(ctx context.Context) ([]schedule.Deployment, error) {
	pairs, _, err := s.kv.List(s.key("deployments", "")+"/", (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err != nil {
		return nil, consulErr("listing deployments", err)
	}
	var out []schedule.Deployment // List is sorted by key
	for _, p := range pairs {
		var d schedule.Deployment
		if err := json.Unmarshal(p.Value, &d); err != nil {
			return nil, errcode.New(errcode.Internal, "deployment at %s: %v", p.Key, err)
		}
		out = append(out, d)
	}
	return out, nil
}

// Stable implements schedule.Store.
func (s *ScheduleStore) Stable(ctx context.Context, job string) (*schedule.Deployment, error) {
	pair, _, err := s.kv.Get(s.key("stable", job), (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err != nil {
		return nil, consulErr("reading the stable version of "+job, err)
	}
	if pair == nil {
		return nil, nil
	}
	var d schedule.Deployment
	if err := json.Unmarshal(pair.Value, &d); err != nil {
		return nil, errcode.New(errcode.Internal, "stable version of %s: %v", job, err)
	}
	return &d, nil
}

// Close implements schedule.Store; the driver stays open.
func (s *ScheduleStore) Close() error { return nil }
