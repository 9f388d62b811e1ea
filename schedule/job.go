// Package schedule places jobs' replicas on servers and keeps them there.
//
// Place is the placement engine: a pure function of the servers (their
// labels, capacity and what runs on them) and the jobs, which filters the
// servers each replica may use (constraints, capacity, a maximum per
// server, affinity and anti-affinity between jobs), then scores the ones
// left (spread over a label, then bin-packing or spreading load), and
// explains every decision: where each replica went and why, and for each
// one that could not be placed, how many servers each filter ruled out.
package schedule

import (
	"fmt"
	"slices"

	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/names"
)

// Resources are CPU and memory.
type Resources struct {
	// MilliCPU is CPU time in thousandths of a core.
	MilliCPU    int64 `json:"milliCPU,omitempty"`
	MemoryBytes int64 `json:"memoryBytes,omitempty"`
}

// Add returns r + o.
func (r Resources) Add(o Resources) Resources {
	return Resources{r.MilliCPU + o.MilliCPU, r.MemoryBytes + o.MemoryBytes}
}

// Sub returns r - o.
func (r Resources) Sub(o Resources) Resources {
	return Resources{r.MilliCPU - o.MilliCPU, r.MemoryBytes - o.MemoryBytes}
}

// Fits reports whether o fits in r.
func (r Resources) Fits(o Resources) bool {
	return o.MilliCPU <= r.MilliCPU && o.MemoryBytes <= r.MemoryBytes
}

// Server is a server as placement sees it.
type Server struct {
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels,omitempty"`
	// Capacity is what the server offers to jobs; Used what runs on it
	// outside the jobs placed (Place adds the jobs' replicas itself).
	Capacity Resources `json:"capacity"`
	Used     Resources `json:"used,omitzero"`
}

// Job is a set of identical replicas.
type Job struct {
	Name     string `json:"name"`
	Replicas int    `json:"replicas"`
	// Resources are what each replica requests.
	Resources Resources `json:"resources"`
	// Constraints restrict the servers replicas may run on.
	Constraints []Constraint `json:"constraints,omitempty"`
	// Affinity names jobs whose replicas this job's must run beside: a
	// replica goes only to a server running a replica of each.
	Affinity []string `json:"affinity,omitempty"`
	// AntiAffinity names jobs whose replicas this job's must never share
	// a server with.
	AntiAffinity []string `json:"antiAffinity,omitempty"`
	// Spread is a server label (such as "rack") whose values the replicas
	// are spread over evenly, each value's count within one of the
	// others'.
	Spread string `json:"spread,omitempty"`
	// MaxPerServer caps the job's replicas on one server; 0 means no cap.
	MaxPerServer int `json:"maxPerServer,omitempty"`
	// Priority orders placement: higher first.
	Priority int `json:"priority,omitempty"`
}

// Constraint is a rule on a server label. The label ServerName is the
// server's name.
type Constraint struct {
	Label  string       `json:"label"`
	Op     ConstraintOp `json:"op"`
	Values []string     `json:"values,omitempty"`
}

// ServerName, as a Constraint's label, is the server's name.
const ServerName = "muster.io/server"

// ConstraintOp is how a Constraint tests a label.
type ConstraintOp string

const (
	In        ConstraintOp = "in"     // the label has one of Values
	NotIn     ConstraintOp = "not-in" // the label is missing or has none of Values
	Exists    ConstraintOp = "exists"
	NotExists ConstraintOp = "not-exists"
)

// String writes c as a person reads it: "rack in (r1, r2)".
func (c Constraint) String() string {
	switch c.Op {
	case Exists, NotExists:
		return fmt.Sprintf("%s %s", c.Label, c.Op)
	}
	return fmt.Sprintf("%s %s %v", c.Label, c.Op, c.Values)
}

// matches reports whether a server with labels (and name) meets c.
func (c Constraint) matches(name string, labels map[string]string) bool {
	v, ok := labels[c.Label]
	if c.Label == ServerName {
		v, ok = name, true
	}
	switch c.Op {
	case In:
		return ok && slices.Contains(c.Values, v)
	case NotIn:
		return !ok || !slices.Contains(c.Values, v)
	case Exists:
		return ok
	default:
		return !ok
	}
}

// MaxReplicas bounds a job's replicas.
const MaxReplicas = 100_000

// Validate checks j alone: its name, counts, resources and constraints.
// Errors are errcode.InvalidArgument and name the field.
func (j *Job) Validate() error {
	if err := names.Label(j.Name); err != nil {
		return fmt.Errorf("job name: %w", err)
	}
	bad := func(format string, args ...any) error {
		return errcode.New(errcode.InvalidArgument, "job %q: "+format, append([]any{j.Name}, args...)...)
	}
	switch {
	case j.Replicas < 0 || j.Replicas > MaxReplicas:
		return bad("replicas %d; give 0 to %d", j.Replicas, MaxReplicas)
	case j.Resources.MilliCPU < 0 || j.Resources.MemoryBytes < 0:
		return bad("negative resources %+v", j.Resources)
	case j.MaxPerServer < 0:
		return bad("max per server %d is negative", j.MaxPerServer)
	}
	for _, c := range j.Constraints {
		if c.Label == "" {
			return bad("a constraint has no label")
		}
		switch c.Op {
		case In, NotIn:
			if len(c.Values) == 0 {
				return bad("constraint %s has no values", c)
			}
		case Exists, NotExists:
			if len(c.Values) != 0 {
				return bad("constraint %s takes no values", c)
			}
		default:
			return bad("constraint on %q: unknown op %q (use in, not-in, exists or not-exists)", c.Label, c.Op)
		}
	}
	for _, other := range j.Affinity {
		if other == j.Name {
			return bad("affinity with itself; use max per server or spread")
		}
		if slices.Contains(j.AntiAffinity, other) {
			return bad("both affinity and anti-affinity with %q", other)
		}
	}
	return nil
}

// validateJobs checks jobs together: unique names, affinities that name
// jobs given or running, and no cycle of affinities. It returns the jobs'
// order of placement: higher priority first, every job after those it
// has affinity with, then by name.
func validateJobs(jobs []Job, running map[string]bool) ([]int, error) {
	index := map[string]int{}
	for i := range jobs {
		if err := jobs[i].Validate(); err != nil {
			return nil, err
		}
		if _, dup := index[jobs[i].Name]; dup {
			return nil, errcode.New(errcode.InvalidArgument, "job %q is given twice", jobs[i].Name)
		}
		index[jobs[i].Name] = i
	}
	for _, j := range jobs {
		for _, other := range append(slices.Clone(j.Affinity), j.AntiAffinity...) {
			if _, ok := index[other]; !ok && !running[other] {
				return nil, errcode.New(errcode.InvalidArgument, "job %q: affinity with %q, which is neither given nor running", j.Name, other)
			}
		}
	}
	byPriority := make([]int, len(jobs))
	for i := range byPriority {
		byPriority[i] = i
	}
	slices.SortStableFunc(byPriority, func(a, b int) int {
		if jobs[a].Priority != jobs[b].Priority {
			return jobs[b].Priority - jobs[a].Priority
		}
		if jobs[a].Name < jobs[b].Name {
			return -1
		}
		return 1
	})
	// Depth-first: a job after the jobs it has affinity with.
	const (
		unseen = iota
		visiting
		done
	)
	state := make([]int, len(jobs))
	var order []int
	var visit func(i int, path []string) error
	visit = func(i int, path []string) error {
		switch state[i] {
		case done:
			return nil
		case visiting:
			return errcode.New(errcode.InvalidArgument, "affinities form a cycle: %v", append(path, jobs[i].Name))
		}
		state[i] = visiting
		for _, other := range jobs[i].Affinity {
			if k, ok := index[other]; ok {
				if err := visit(k, append(path, jobs[i].Name)); err != nil {
					return err
				}
			}
		}
		state[i] = done
		order = append(order, i)
		return nil
	}
	for _, i := range byPriority {
		if err := visit(i, nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}
