package schedule

import (
	"context"
	"maps"
	"slices"
	"sync"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/names"
)

// MemStore is a Store in memory: a controller's default.
type MemStore struct {
	mu                  sync.Mutex
	deployments, stable map[string]Deployment
}

// NewMemStore returns an empty store.
func NewMemStore() *MemStore {
	return &MemStore{deployments: map[string]Deployment{}, stable: map[string]Deployment{}}
}

var _ Store = (*MemStore)(nil)

// Put implements Store.
func (s *MemStore) Put(_ context.Context, d *Deployment) error {
	if err := d.Validate(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.deployments[d.Name] = *d
	return nil
}

// SetStable implements Store.
func (s *MemStore) SetStable(_ context.Context, d *Deployment) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stable[d.Name] = *d
	return nil
}

// Delete implements Store.
func (s *MemStore) Delete(_ context.Context, name string) error {
	if err := names.Label(name); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.deployments[name]; !ok {
		return errcode.New(errcode.NotFound, "no deployment %q", name)
	}
	delete(s.deployments, name)
	delete(s.stable, name)
	return nil
}

// Deployments implements Store.
func (s *MemStore) Deployments(context.Context) ([]Deployment, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Deployment
	for _, name := range slices.Sorted(maps.Keys(s.deployments)) {
		out = append(out, s.deployments[name])
	}
	return out, nil
}

// Stable implements Store.
func (s *MemStore) Stable(_ context.Context, job string) (*Deployment, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.stable[job]
	if !ok {
		return nil, nil
	}
	return &d, nil
}

// Close implements Store.
func (s *MemStore) Close() error { return nil }
