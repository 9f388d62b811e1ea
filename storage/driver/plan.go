package driver

import (
	"reflect"
	"slices"

	"github.com/musterkit/muster/errcode"
)

// Plan is what an Apply must do to go from the config in force to the
// next one. Every driver computes it with PlanApply, so that all of them
// refuse the same changes.
type Plan struct {
	// Join: nothing was in force; this server joins the pool.
	Join bool
	// Added are members new to the pool.
	Added []Member
	// Create are volumes new to the pool; Update those whose quota,
	// copies or exports changed.
	Create, Update []Volume
	// Mount are mounts to make; Unmount those to end.
	Mount, Unmount []Mount
}

// Empty reports whether the plan changes nothing.
func (p *Plan) Empty() bool {
	return !p.Join && len(p.Added)+len(p.Create)+len(p.Update)+len(p.Mount)+len(p.Unmount) == 0
}

// PlanApply returns what applying next over old (nil before the first
// Apply) takes. next must have passed Validate. A change Apply may not
// make is errcode.FailedPrecondition: another pool or server, a changed
// layout, a member removed or changed, a volume dropped on the
// coordinator (RemoveVolume removes one; elsewhere the volume list is a
// view of the pool, and a volume dropped from it is only forgotten). A mount whose ReadOnly changed is unmounted and mounted
// again.
func PlanApply(old, next *Config) (*Plan, error) {
	if old == nil {
		return &Plan{Join: true, Create: next.Volumes, Mount: next.Mounts}, nil
	}
	if old.Pool.Name != next.Pool.Name || old.Self != next.Self {
		return nil, errcode.New(errcode.FailedPrecondition, "this driver runs server %q's part in pool %q; leave it first to run %q in %q", old.Self, old.Pool.Name, next.Self, next.Pool.Name)
	}
	if old.Pool.Layout != next.Pool.Layout {
		return nil, errcode.New(errcode.FailedPrecondition, "pool %q: its layout cannot change (%+v in force, %+v asked)", old.Pool.Name, old.Pool.Layout, next.Pool.Layout)
	}
	plan := &Plan{}
	for i, m := range old.Pool.Members {
		if i >= len(next.Pool.Members) || next.Pool.Members[i] != m {
			return nil, errcode.New(errcode.FailedPrecondition, "pool %q: member %q (%s) cannot be removed, moved or readdressed; members can only be added at the end", old.Pool.Name, m.Server, m.Addr)
		}
	}
	plan.Added = next.Pool.Members[len(old.Pool.Members):]
	for _, v := range old.Volumes {
		if _, ok := next.Volume(v.Name); !ok && next.Pool.Coordinator().Server == next.Self {
			return nil, errcode.New(errcode.FailedPrecondition, "pool %q: volume %q is in force and not in the config; remove it with RemoveVolume", old.Pool.Name, v.Name)
		}
	}
	for _, v := range next.Volumes {
		was, ok := old.Volume(v.Name)
		switch {
		case !ok:
			plan.Create = append(plan.Create, v)
		case !reflect.DeepEqual(was, v):
			plan.Update = append(plan.Update, v)
		}
	}
	for _, m := range old.Mounts {
		if !slices.Contains(next.Mounts, m) {
			plan.Unmount = append(plan.Unmount, m)
		}
	}
	for _, m := range next.Mounts {
		if !slices.Contains(old.Mounts, m) {
			plan.Mount = append(plan.Mount, m)
		}
	}
	return plan, nil
}
