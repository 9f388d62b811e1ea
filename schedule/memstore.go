package schedule

import (
	"context"
	"maps"
	"slices"
	"sync"

	"github.com/musterkit/muster/errcode"
)

// memStore is a Store in memory: a controller's default.
type memStore struct {
	mu                  sync.Mutex
	deployments, stable map[string]Deployment
}

func newMemStore() *memStore {
	return &memStore{deployments: map[string]Deployment{}, stable: map[string]Deployment{}}
}

func (s *memStore) Put(_ context.Context, d *Deployment) error {
	if err := d.validate(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.deployments[d.Name] = *d
	return nil
}

func (s *memStore) SetStable(_ context.Context, d *Deployment) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stable[d.Name] = *d
	return nil
}

func (s *memStore) Delete(_ context.Context, name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.deployments[name]; !ok {
		return errcode.New(errcode.NotFound, "no deployment %q", name)
	}
	delete(s.deployments, name)
	delete(s.stable, name)
	return nil
}

func (s *memStore) Deployments(context.Context) ([]Deployment, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Deployment
	for _, name := range slices.Sorted(maps.Keys(s.deployments)) {
		out = append(out, s.deployments[name])
	}
	return out, nil
}

func (s *memStore) Stable(_ context.Context, job string) (*Deployment, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.stable[job]
	if !ok {
		return nil, nil
	}
	return &d, nil
}

func (s *memStore) Close() error { return nil }
