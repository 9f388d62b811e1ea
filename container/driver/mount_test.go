package driver

import (
	"context"
	"strings"
	"testing"

	"github.com/musterkit/muster/errcode"
)

func TestVolumeMounts(t *testing.T) {
	spec := func(ms ...Mount) *Spec { return &Spec{Name: "c", Image: "busybox", Mounts: ms} }
	if err := spec(Mount{Volume: "pool/data", Target: "/data"}, Mount{Source: "/srv", Target: "/srv"}).Validate(); err != nil {
		t.Fatalf("a volume and a path: %v", err)
	}
	for _, tt := range []struct {
		m    Mount
		want string
	}{
		{Mount{Volume: "pool", Target: "/d"}, "write pool/volume"},
		{Mount{Volume: "pool/../x", Target: "/d"}, "contains '.'"},
		{Mount{Volume: "../data", Target: "/d"}, "contains '.'"},
		{Mount{Volume: "pool/", Target: "/d"}, "name is empty"},
		{Mount{Volume: "pool/da ta", Target: "/d"}, "contains ' '"},
		{Mount{Volume: "pool/data", Source: "/srv", Target: "/d"}, "give one of them"},
		{Mount{Target: "/d"}, "must be an absolute, clean path"},
	} {
		err := spec(tt.m).Validate()
		if errcode.Of(err) != errcode.InvalidArgument || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%+v: got %v, want InvalidArgument saying %q", tt.m, err, tt.want)
		}
	}
	many := spec()
	for range MaxMounts + 1 {
		many.Mounts = append(many.Mounts, Mount{Source: "/srv", Target: "/t" + strings.Repeat("x", len(many.Mounts))})
	}
	if errcode.Of(many.Validate()) != errcode.InvalidArgument {
		t.Errorf("%d mounts accepted", len(many.Mounts))
	}
}

type paths map[string]string

func (p paths) VolumePath(_ context.Context, pool, volume string) (string, error) {
	if s, ok := p[pool+"/"+volume]; ok {
		return s, nil
	}
	return "", errcode.New(errcode.FailedPrecondition, "not mounted here")
}

func TestResolveMounts(t *testing.T) {
	s := &Spec{Name: "c", Mounts: []Mount{{Source: "/srv", Target: "/srv"}, {Volume: "p/v", Target: "/v", ReadOnly: true}}}
	got, err := ResolveMounts(t.Context(), s, paths{"p/v": "/mnt/p/v"})
	if err != nil || got[0] != s.Mounts[0] || got[1] != (Mount{Source: "/mnt/p/v", Volume: "p/v", Target: "/v", ReadOnly: true}) {
		t.Fatalf("ResolveMounts = %+v, %v", got, err)
	}
	if s.Mounts[1].Source != "" {
		t.Fatal("ResolveMounts changed the spec")
	}
	if _, err := ResolveMounts(t.Context(), s, paths{}); errcode.Of(err) != errcode.FailedPrecondition || !strings.Contains(err.Error(), "volume p/v") {
		t.Fatalf("a volume not mounted here: %v", err)
	}
	if _, err := ResolveMounts(t.Context(), s, nil); errcode.Of(err) != errcode.Unimplemented {
		t.Fatalf("no VolumePaths: %v", err)
	}
}
