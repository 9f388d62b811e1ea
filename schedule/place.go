package schedule

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
)

// Strategy says which of the feasible servers a replica takes.
type Strategy string

const (
	// Spread takes the least allocated of a sample of feasible servers
	// (the default): load evens out and a lost server takes few replicas.
	Spread Strategy = "spread"
	// BinPack takes the first feasible server in order, replicas of the
	// largest jobs first (first-fit decreasing), so that as few servers as
	// possible are used.
	BinPack Strategy = "binpack"
)

// Options tune Place. The zero value is usable.
type Options struct {
	Strategy Strategy
	// Candidates is how many feasible servers Spread compares for each
	// replica (Nomad's limit iterator, power of k choices); 0 means 4.
	// A replica whose spread label asks for a value with few servers
	// compares what there is.
	Candidates int
	// Seed fixes the sampling order: the same inputs and seed give the
	// same plan.
	Seed uint64
}

// Replica is a job's replica running on a server.
type Replica struct {
	Job    string `json:"job"`
	Server string `json:"server"`
}

// Plan is where Place put each replica, and why.
type Plan struct {
	Placed   []Decision `json:"placed"`
	Unplaced []Unplaced `json:"unplaced,omitempty"`
}

// Decision is one replica placed.
type Decision struct {
	Job    string `json:"job"`
	Server string `json:"server"`
	// SpreadValue is the value of the job's spread label the replica went
	// to, with the job's replicas there before it.
	SpreadValue string `json:"spreadValue,omitempty"`
	SpreadCount int    `json:"spreadCount,omitempty"`
	// Compared is how many feasible servers were compared.
	Compared int `json:"compared"`
	// Load is the server's allocation after the replica, the larger of
	// its CPU and memory fractions.
	Load float64 `json:"load"`
}

// Reason says in words why the replica went where it did.
func (d Decision) Reason(strategy Strategy) string {
	var b strings.Builder
	if d.SpreadValue != "" {
		fmt.Fprintf(&b, "spread: %s had the fewest replicas (%d); ", d.SpreadValue, d.SpreadCount)
	}
	if strategy == BinPack {
		fmt.Fprintf(&b, "bin-packing: the first server with room (load %.0f%% after)", 100*d.Load)
	} else {
		fmt.Fprintf(&b, "least loaded of %d feasible servers compared (load %.0f%% after)", d.Compared, 100*d.Load)
	}
	return b.String()
}

// Unplaced are a job's replicas that fit nowhere, and why: how many of the
// servers each filter ruled out (a server counts under the first filter
// that rules it out, in the order constraint, affinity, anti-affinity, max
// per server, cpu, memory).
type Unplaced struct {
	Job      string         `json:"job"`
	Count    int            `json:"count"`
	Servers  int            `json:"servers"`
	Filtered map[string]int `json:"filtered"`
}

func (u Unplaced) String() string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(u.Filtered)) {
		parts = append(parts, fmt.Sprintf("%s ruled out %d", k, u.Filtered[k]))
	}
	return fmt.Sprintf("%d replicas of %s fit none of %d servers: %s", u.Count, u.Job, u.Servers, strings.Join(parts, ", "))
}

// Place returns where the replicas jobs lack (their Replicas less those
// running) go on servers, given what runs. It is a pure function of its
// inputs and never overcommits a server. Invalid jobs (see Job.Validate;
// also duplicate names, affinity with an unknown job, cycles of
// affinities) are errcode.InvalidArgument; replicas that fit nowhere are
// reported, with the reasons, in Plan.Unplaced.
func Place(servers []Server, running []Replica, jobs []Job, opts *Options) (*Plan, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.Strategy == "" {
		o.Strategy = Spread
	}
	if o.Candidates <= 0 {
		o.Candidates = 4
	}
	runningJobs := map[string]bool{}
	for _, r := range running {
		runningJobs[r.Job] = true
	}
	order, err := validateJobs(jobs, runningJobs)
	if err != nil {
		return nil, err
	}
	if o.Strategy == BinPack {
		order = largestFirst(jobs, order)
	}
	c := newCluster(servers, running, jobs)
	rng := rand.New(rand.NewPCG(o.Seed, 0x6d7573746572))
	plan := &Plan{}
	for _, i := range order {
		c.place(plan, i, o, rng)
	}
	return plan, nil
}

// largestFirst reorders jobs' placement order, keeping priorities and
// affinities, with larger replicas first among jobs of equal priority that
// have no affinity.
func largestFirst(jobs []Job, order []int) []int {
	out := slices.Clone(order)
	size := func(i int) int64 { return jobs[i].Resources.MilliCPU<<20 + jobs[i].Resources.MemoryBytes>>20 }
	slices.SortStableFunc(out, func(a, b int) int {
		ja, jb := jobs[a], jobs[b]
		if ja.Priority != jb.Priority || len(ja.Affinity) > 0 || len(jb.Affinity) > 0 {
			return 0
		}
		switch sa, sb := size(a), size(b); {
		case sa > sb:
			return -1
		case sa < sb:
			return 1
		}
		return 0
	})
	return out
}

// cluster is Place's working state.
type cluster struct {
	servers []Server
	free    []Resources
	counts  []map[string]int // per server: replicas by job
	jobs    []Job
	// anti[j] are the jobs j's replicas avoid, both ways.
	anti [][]string
}

func newCluster(servers []Server, running []Replica, jobs []Job) *cluster {
	c := &cluster{servers: servers, jobs: jobs, free: make([]Resources, len(servers)), counts: make([]map[string]int, len(servers))}
	index := map[string]int{}
	for i, s := range servers {
		c.free[i] = s.Capacity.Sub(s.Used)
		c.counts[i] = map[string]int{}
		index[s.Name] = i
	}
	req := map[string]Resources{}
	for _, j := range jobs {
		req[j.Name] = j.Resources
	}
	for _, r := range running {
		if i, ok := index[r.Server]; ok {
			c.counts[i][r.Job]++
			c.free[i] = c.free[i].Sub(req[r.Job])
		}
	}
	c.anti = make([][]string, len(jobs))
	for i, j := range jobs {
		c.anti[i] = append(c.anti[i], j.AntiAffinity...)
		for k, other := range jobs {
			if slices.Contains(other.AntiAffinity, j.Name) && !slices.Contains(c.anti[i], jobs[k].Name) {
				c.anti[i] = append(c.anti[i], jobs[k].Name)
			}
		}
	}
	return c
}

// why returns the first filter that rules server s out for job j, or ""
// if a replica of j fits there.
func (c *cluster) why(s, j int) string {
	job := &c.jobs[j]
	srv := &c.servers[s]
	for _, con := range job.Constraints {
		if !con.matches(srv.Name, srv.Labels) {
			return "constraint " + con.String()
		}
	}
	return c.whyNow(s, j)
}

// whyNow is why without the constraints (checked once per job).
func (c *cluster) whyNow(s, j int) string {
	job := &c.jobs[j]
	counts := c.counts[s]
	for _, a := range job.Affinity {
		if counts[a] == 0 {
			return "affinity with " + a
		}
	}
	for _, a := range c.anti[j] {
		if counts[a] > 0 {
			return "anti-affinity with " + a
		}
	}
	if job.MaxPerServer > 0 && counts[job.Name] >= job.MaxPerServer {
		return "max per server"
	}
	if c.free[s].MilliCPU < job.Resources.MilliCPU {
		return "cpu"
	}
	if c.free[s].MemoryBytes < job.Resources.MemoryBytes {
		return "memory"
	}
	return ""
}

// load is server s's allocation with r more: the larger fraction.
func (c *cluster) load(s int, r Resources) float64 {
	capacity := c.servers[s].Capacity
	used := capacity.Sub(c.free[s]).Add(r)
	frac := func(u, total int64) float64 {
		if total <= 0 {
			return 0
		}
		return float64(u) / float64(total)
	}
	return max(frac(used.MilliCPU, capacity.MilliCPU), frac(used.MemoryBytes, capacity.MemoryBytes))
}

// group is the servers of one value of a job's spread label that meet
// its constraints.
type group struct {
	value   string
	servers []int
	dead    []bool // ruled out for good: free space and counts only shrink
	next    int    // BinPack's cursor: every server before it is dead
	placed  int    // the job's replicas on the group's servers
}

// place places job j's missing replicas.
func (c *cluster) place(plan *Plan, j int, o Options, rng *rand.Rand) {
	job := &c.jobs[j]
	groups, values, have := c.groups(j)
	for missing := job.Replicas - have; missing > 0; missing-- {
		d, ok := c.choose(j, groups, values, o, rng)
		if !ok {
			plan.Unplaced = append(plan.Unplaced, c.explain(j, missing))
			return
		}
		plan.Placed = append(plan.Placed, d)
	}
}

// groups returns the servers that meet job j's constraints by value of
// its spread label (one group "" without one), the values sorted, and
// how many replicas of j run.
func (c *cluster) groups(j int) (map[string]*group, []string, int) {
	job := &c.jobs[j]
	groups := map[string]*group{}
	var values []string
	have := 0
	for s := range c.servers {
		have += c.counts[s][job.Name]
		if !c.meets(s, j) {
			continue
		}
		v := ""
		if job.Spread != "" {
			v = job.Spread + "=" + c.servers[s].Labels[job.Spread]
		}
		g := groups[v]
		if g == nil {
			g = &group{value: v}
			groups[v] = g
			values = append(values, v)
		}
		g.servers = append(g.servers, s)
		g.placed += c.counts[s][job.Name]
	}
	for _, g := range groups {
		g.dead = make([]bool, len(g.servers))
	}
	slices.Sort(values)
	return groups, values, have
}

// meets reports whether server s meets job j's constraints.
func (c *cluster) meets(s, j int) bool {
	for _, con := range c.jobs[j].Constraints {
		if !con.matches(c.servers[s].Name, c.servers[s].Labels) {
			return false
		}
	}
	return true
}

// choose places one replica of job j: in the spread value with the
// fewest of the job's replicas that has room, on the server the strategy
// picks there.
func (c *cluster) choose(j int, groups map[string]*group, values []string, o Options, rng *rand.Rand) (Decision, bool) {
	job := &c.jobs[j]
	tried := make([]bool, len(values))
	for range values {
		// The untried value with the fewest of the job's replicas (the
		// first by name on a tie): usually the first one tried has room.
		k := -1
		for i, v := range values {
			if !tried[i] && (k < 0 || groups[v].placed < groups[values[k]].placed) {
				k = i
			}
		}
		tried[k] = true
		v := values[k]
		g := groups[v]
		s, compared, ok := c.pick(j, g, o, rng)
		if !ok {
			continue
		}
		d := Decision{Job: job.Name, Server: c.servers[s].Name, Compared: compared, Load: c.load(s, job.Resources)}
		if job.Spread != "" {
			d.SpreadValue, d.SpreadCount = v, g.placed
		}
		c.free[s] = c.free[s].Sub(job.Resources)
		c.counts[s][job.Name]++
		g.placed++
		return d, true
	}
	return Decision{}, false
}

// pick returns the server of g a replica of job j takes, and how many
// feasible servers were compared.
func (c *cluster) pick(j int, g *group, o Options, rng *rand.Rand) (int, int, bool) {
	n := len(g.servers)
	if n == 0 {
		return 0, 0, false
	}
	if o.Strategy == BinPack {
		for ; g.next < n; g.next++ {
			if !g.dead[g.next] && c.whyNow(g.servers[g.next], j) == "" {
				return g.servers[g.next], 1, true
			}
			g.dead[g.next] = true
		}
		return 0, 0, false
	}
	best, bestLoad, compared := -1, 0.0, 0
	start := rng.IntN(n)
	for k := 0; k < n && compared < o.Candidates; k++ {
		i := (start + k) % n
		if g.dead[i] {
			continue
		}
		s := g.servers[i]
		if c.whyNow(s, j) != "" {
			// Affinity can come later (a job it follows is placed
			// first, so not within this job's placement): the rest
			// only shrinks.
			g.dead[i] = true
			continue
		}
		compared++
		if l := c.load(s, c.jobs[j].Resources); best < 0 || l < bestLoad {
			best, bestLoad = s, l
		}
	}
	return best, compared, best >= 0
}

// explain counts, for the missing replicas of job j, which filter rules
// each server out.
func (c *cluster) explain(j, missing int) Unplaced {
	u := Unplaced{Job: c.jobs[j].Name, Count: missing, Servers: len(c.servers), Filtered: map[string]int{}}
	for s := range c.servers {
		if why := c.why(s, j); why != "" {
			u.Filtered[why]++
		}
	}
	return u
}
