package schedule

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"pgregory.net/rapid"

	"github.com/musterkit/muster/errcode"
)

// genCluster draws servers with racks and zones, and jobs with
// constraints, spread, caps, priorities and (anti-)affinities between
// them, without cycles.
func genCluster(t *rapid.T) ([]Server, []Job) {
	n := rapid.IntRange(1, 40).Draw(t, "servers")
	var servers []Server
	for i := range n {
		servers = append(servers, Server{
			Name:     fmt.Sprintf("s%d", i),
			Labels:   map[string]string{"rack": fmt.Sprintf("r%d", rapid.IntRange(0, 3).Draw(t, "rack")), "zone": rapid.SampledFrom([]string{"a", "b"}).Draw(t, "zone")},
			Capacity: Resources{MilliCPU: rapid.Int64Range(0, 8000).Draw(t, "cpu"), MemoryBytes: rapid.Int64Range(0, 16<<30).Draw(t, "mem")},
			Used:     Resources{MilliCPU: rapid.Int64Range(0, 1000).Draw(t, "usedcpu")},
		})
	}
	var jobs []Job
	for i := range rapid.IntRange(1, 6).Draw(t, "jobs") {
		j := Job{
			Name:      fmt.Sprintf("j%d", i),
			Replicas:  rapid.IntRange(0, 30).Draw(t, "replicas"),
			Resources: Resources{MilliCPU: rapid.Int64Range(0, 2000).Draw(t, "req-cpu"), MemoryBytes: rapid.Int64Range(0, 4<<30).Draw(t, "req-mem")},
			Spread:    rapid.SampledFrom([]string{"", "rack", "zone"}).Draw(t, "spread"),
			Priority:  rapid.IntRange(0, 2).Draw(t, "priority"),
		}
		if rapid.Bool().Draw(t, "capped") {
			j.MaxPerServer = rapid.IntRange(1, 3).Draw(t, "max")
		}
		if rapid.Bool().Draw(t, "constrained") {
			j.Constraints = []Constraint{{Label: "zone", Op: In, Values: []string{rapid.SampledFrom([]string{"a", "b"}).Draw(t, "in-zone")}}}
		}
		if i > 0 && rapid.IntRange(0, 3).Draw(t, "relation") == 0 {
			j.AntiAffinity = []string{fmt.Sprintf("j%d", rapid.IntRange(0, i-1).Draw(t, "anti"))}
		} else if i > 0 && rapid.IntRange(0, 3).Draw(t, "relation2") == 0 {
			j.Affinity = []string{fmt.Sprintf("j%d", rapid.IntRange(0, i-1).Draw(t, "aff"))}
		}
		jobs = append(jobs, j)
	}
	return servers, jobs
}

// TestPlacementProperties: on random clusters and jobs, in both
// strategies, no server is overcommitted, every constraint, cap, affinity
// and anti-affinity holds, spread values are within one replica of each
// other wherever there was a choice, and every replica is placed or
// explained.
func TestPlacementProperties(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		servers, jobs := genCluster(t)
		strategy := rapid.SampledFrom([]Strategy{Spread, BinPack}).Draw(t, "strategy")
		plan, err := Place(servers, nil, jobs, &Options{Strategy: strategy, Seed: rapid.Uint64().Draw(t, "seed")})
		if err != nil {
			t.Fatal(err)
		}
		index := map[string]int{}
		for i, s := range servers {
			index[s.Name] = i
		}
		byJob := map[string]Job{}
		for _, j := range jobs {
			byJob[j.Name] = j
		}
		used := make([]Resources, len(servers))
		counts := make([]map[string]int, len(servers))
		for i, s := range servers {
			used[i], counts[i] = s.Used, map[string]int{}
		}
		placed := map[string]int{}
		for _, d := range plan.Placed {
			i := index[d.Server]
			used[i] = used[i].Add(byJob[d.Job].Resources)
			counts[i][d.Job]++
			placed[d.Job]++
		}
		for i, s := range servers {
			// A server may come in over its capacity (Used); then it
			// must get nothing.
			if len(counts[i]) > 0 && !s.Capacity.Fits(used[i]) {
				t.Fatalf("server %s overcommitted: %+v of %+v", s.Name, used[i], s.Capacity)
			}
			for job, n := range counts[i] {
				j := byJob[job]
				for _, c := range j.Constraints {
					if !c.matches(s.Name, s.Labels) {
						t.Fatalf("%s on %s breaks %s", job, s.Name, c)
					}
				}
				if j.MaxPerServer > 0 && n > j.MaxPerServer {
					t.Fatalf("%d replicas of %s on %s, max %d", n, job, s.Name, j.MaxPerServer)
				}
				for _, a := range j.AntiAffinity {
					if counts[i][a] > 0 {
						t.Fatalf("%s and %s (anti-affinity) share %s", job, a, s.Name)
					}
				}
				for _, a := range j.Affinity {
					if counts[i][a] == 0 {
						t.Fatalf("%s on %s without %s (affinity)", job, s.Name, a)
					}
				}
			}
		}
		unplaced := map[string]Unplaced{}
		for _, u := range plan.Unplaced {
			unplaced[u.Job] = u
			sum := 0
			for _, n := range u.Filtered {
				sum += n
			}
			if sum != u.Servers || u.Servers != len(servers) {
				t.Fatalf("%s: the explanation accounts for %d of %d servers: %v", u.Job, sum, len(servers), u)
			}
		}
		for _, j := range jobs {
			if got := placed[j.Name] + unplaced[j.Name].Count; got != j.Replicas {
				t.Fatalf("%s: %d placed + %d unplaced, want %d", j.Name, placed[j.Name], unplaced[j.Name].Count, j.Replicas)
			}
			// Spread within one replica where every value kept room.
			avoided := slices.ContainsFunc(jobs, func(o Job) bool { return slices.Contains(o.AntiAffinity, j.Name) })
			if j.Spread != "" && unplaced[j.Name].Count == 0 && strategy == Spread && len(j.Affinity) == 0 && j.MaxPerServer == 0 && len(j.AntiAffinity) == 0 && !avoided {
				checkSpread(t, servers, used, counts, j)
			}
		}
	})
}

// checkSpread checks that job j's replicas are within one of each other
// over the values of its spread label: a value whose servers still have
// room for one at the end (used is what every server holds) had room all
// along, so it holds at most one fewer than any other value.
func checkSpread(t *rapid.T, servers []Server, used []Resources, counts []map[string]int, j Job) {
	per := map[string]int{}
	room := map[string]bool{}
	for i, s := range servers {
		meets := true
		for _, c := range j.Constraints {
			meets = meets && c.matches(s.Name, s.Labels)
		}
		if !meets {
			continue
		}
		v := s.Labels[j.Spread]
		per[v] += counts[i][j.Name]
		if s.Capacity.Sub(used[i]).Fits(j.Resources) {
			room[v] = true
		}
	}
	most := 0
	for _, n := range per {
		most = max(most, n)
	}
	for v := range room {
		if per[v] < most-1 {
			t.Fatalf("%s spread over %s: %v; %s had room", j.Name, j.Spread, per, v)
		}
	}
}

func TestPlaceExplainsUnplaceable(t *testing.T) {
	servers := []Server{
		{Name: "a", Labels: map[string]string{"zone": "x"}, Capacity: Resources{MilliCPU: 1000, MemoryBytes: 1 << 30}},
		{Name: "b", Labels: map[string]string{"zone": "y"}, Capacity: Resources{MilliCPU: 4000, MemoryBytes: 1 << 30}},
		{Name: "c", Labels: map[string]string{"zone": "y"}, Capacity: Resources{MilliCPU: 4000, MemoryBytes: 8 << 30}},
	}
	jobs := []Job{{Name: "db", Replicas: 3, Resources: Resources{MilliCPU: 2000, MemoryBytes: 2 << 30}, Constraints: []Constraint{{Label: "zone", Op: In, Values: []string{"y"}}}, MaxPerServer: 1}}
	plan, err := Place(servers, nil, jobs, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.Placed) != 1 || plan.Placed[0].Server != "c" {
		t.Fatalf("placed %+v; want one replica on c", plan.Placed)
	}
	want := Unplaced{Job: "db", Count: 2, Servers: 3, Filtered: map[string]int{"constraint zone in [y]": 1, "memory": 1, "max per server": 1}}
	if len(plan.Unplaced) != 1 || fmt.Sprint(plan.Unplaced[0]) != fmt.Sprint(want) {
		t.Fatalf("unplaced %v; want %v", plan.Unplaced, want)
	}
	if s := plan.Unplaced[0].String(); !strings.Contains(s, "2 replicas of db fit none of 3 servers") || !strings.Contains(s, "memory ruled out 1") {
		t.Fatalf("explanation %q", s)
	}
	if r := plan.Placed[0].Reason(Spread); !strings.Contains(r, "least loaded of 1 feasible") {
		t.Fatalf("reason %q", r)
	}
}

func TestPlaceRefusesBadJobs(t *testing.T) {
	servers := []Server{{Name: "a", Capacity: Resources{MilliCPU: 1000}}}
	for name, jobs := range map[string][]Job{
		"negative replicas": {{Name: "a", Replicas: -1}},
		"bad name":          {{Name: "A;"}},
		"negative cpu":      {{Name: "a", Resources: Resources{MilliCPU: -1}}},
		"duplicate":         {{Name: "a"}, {Name: "a"}},
		"unknown op":        {{Name: "a", Constraints: []Constraint{{Label: "x", Op: "near"}}}},
		"in without values": {{Name: "a", Constraints: []Constraint{{Label: "x", Op: In}}}},
		"unknown affinity":  {{Name: "a", Affinity: []string{"b"}}},
		"self affinity":     {{Name: "a", Affinity: []string{"a"}}},
		"both":              {{Name: "a", Affinity: []string{"b"}, AntiAffinity: []string{"b"}}, {Name: "b"}},
		"cycle":             {{Name: "a", Affinity: []string{"b"}}, {Name: "b", Affinity: []string{"c"}}, {Name: "c", Affinity: []string{"a"}}},
	} {
		if _, err := Place(servers, nil, jobs, nil); !errors.Is(err, errcode.InvalidArgument) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestPlaceCountsRunningReplicas(t *testing.T) {
	servers := []Server{{Name: "a", Capacity: Resources{MilliCPU: 3000}}, {Name: "b", Capacity: Resources{MilliCPU: 3000}}}
	jobs := []Job{{Name: "web", Replicas: 4, Resources: Resources{MilliCPU: 1000}}}
	running := []Replica{{Job: "web", Server: "a"}, {Job: "web", Server: "a"}, {Job: "web", Server: "a"}}
	plan, err := Place(servers, running, jobs, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.Placed) != 1 || plan.Placed[0].Server != "b" {
		t.Fatalf("placed %+v; want the fourth on b (a is full)", plan.Placed)
	}
}

// TestBinPackNoWorseThanFFD: bin-packing uses no more servers than
// first-fit decreasing on the same inputs.
func TestBinPackNoWorseThanFFD(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		n := rapid.IntRange(1, 30).Draw(t, "servers")
		var servers []Server
		for i := range n {
			servers = append(servers, Server{Name: fmt.Sprintf("s%d", i), Capacity: Resources{MilliCPU: 4000, MemoryBytes: 8 << 30}})
		}
		var jobs []Job
		for i := range rapid.IntRange(1, 8).Draw(t, "jobs") {
			jobs = append(jobs, Job{Name: fmt.Sprintf("j%d", i), Replicas: rapid.IntRange(1, 10).Draw(t, "replicas"),
				Resources: Resources{MilliCPU: rapid.Int64Range(100, 4000).Draw(t, "cpu")}})
		}
		plan, err := Place(servers, nil, jobs, &Options{Strategy: BinPack})
		if err != nil {
			t.Fatal(err)
		}
		used := map[string]bool{}
		for _, d := range plan.Placed {
			used[d.Server] = true
		}
		ffdUsed, ffdPlaced := firstFitDecreasing(servers, jobs)
		if len(plan.Placed) < ffdPlaced || len(plan.Placed) == ffdPlaced && len(used) > ffdUsed {
			t.Fatalf("bin-packing placed %d on %d servers; first-fit decreasing %d on %d", len(plan.Placed), len(used), ffdPlaced, ffdUsed)
		}
	})
}

// firstFitDecreasing packs jobs' replicas by CPU alone, largest first,
// each into the first server with room: the reference packing.
func firstFitDecreasing(servers []Server, jobs []Job) (used, placed int) {
	var sizes []int64
	for _, j := range jobs {
		for range j.Replicas {
			sizes = append(sizes, j.Resources.MilliCPU)
		}
	}
	slices.SortFunc(sizes, func(a, b int64) int { return int(b - a) })
	free := make([]int64, len(servers))
	for i, s := range servers {
		free[i] = s.Capacity.MilliCPU
	}
	inUse := map[int]bool{}
	for _, size := range sizes {
		for i := range free {
			if free[i] >= size {
				free[i] -= size
				inUse[i] = true
				placed++
				break
			}
		}
	}
	return len(inUse), placed
}
