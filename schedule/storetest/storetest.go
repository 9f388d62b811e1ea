// Package storetest is the suite every schedule.Store passes.
package storetest

import (
	"errors"
	"testing"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/schedule"
)

// Run checks a fresh, empty store s: deployments put, listed by name and
// deleted, invalid ones refused, each job's stable version kept until its
// deployment goes.
func Run(t *testing.T, s schedule.Store) {
	ctx := t.Context()
	deployment := func(name string, replicas int, image string) *schedule.Deployment {
		return &schedule.Deployment{Job: schedule.Job{Name: name, Replicas: replicas}, Image: image}
	}
	web, api := deployment("web", 3, "base"), deployment("api", 2, "base")
	for _, d := range []*schedule.Deployment{web, api} {
		if err := s.Put(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Put(ctx, deployment("bad", -1, "base")); !errors.Is(err, errcode.InvalidArgument) {
		t.Fatalf("Put of an invalid deployment: %v", err)
	}
	got, err := s.Deployments(ctx)
	if err != nil || len(got) != 2 || got[0].Name != "api" || got[1].Name != "web" || got[1].Version() != web.Version() {
		t.Fatalf("Deployments = %+v, %v; want api and web", got, err)
	}
	if st, err := s.Stable(ctx, "web"); err != nil || st != nil {
		t.Fatalf("Stable before any = %+v, %v", st, err)
	}
	if err := s.SetStable(ctx, web); err != nil {
		t.Fatal(err)
	}
	if st, err := s.Stable(ctx, "web"); err != nil || st == nil || st.Version() != web.Version() {
		t.Fatalf("Stable = %+v, %v", st, err)
	}
	if err := s.Delete(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "web"); !errors.Is(err, errcode.NotFound) {
		t.Fatalf("second Delete: %v", err)
	}
	if err := s.Delete(ctx, "../web"); !errors.Is(err, errcode.InvalidArgument) {
		t.Fatalf("Delete of a bad name: %v", err)
	}
	if st, _ := s.Stable(ctx, "web"); st != nil {
		t.Fatal("the stable version outlived its deployment")
	}
}
