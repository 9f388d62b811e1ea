package schedule

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// benchCluster is 5,000 servers in 100 racks over 3 zones, and 20 jobs of
// 500 replicas each, constrained to zones and spread over racks.
func benchCluster() ([]Server, []Job) {
	var servers []Server
	for i := range 5000 {
		servers = append(servers, Server{
			Name:     fmt.Sprintf("s%04d", i),
			Labels:   map[string]string{"rack": fmt.Sprintf("r%02d", i%100), "zone": string(rune('a' + i%3))},
			Capacity: Resources{MilliCPU: 16000, MemoryBytes: 64 << 30},
		})
	}
	var jobs []Job
	for i := range 20 {
		zones := []string{"a", "b"}
		if i%2 == 1 {
			zones = []string{"b", "c"}
		}
		jobs = append(jobs, Job{Name: fmt.Sprintf("job%02d", i), Replicas: 500,
			Resources:   Resources{MilliCPU: 250 + int64(i%4)*250, MemoryBytes: 512 << 20},
			Constraints: []Constraint{{Label: "zone", Op: In, Values: zones}},
			Spread:      "rack"})
	}
	return servers, jobs
}

// BenchmarkPlace10kOn5k places 10,000 replicas on 5,000 servers and
// reports placements per second, the p99 of one placement, and the rate
// over each tenth of the run (the last as a ratio of the first: does it
// slow down as the cluster fills?).
func BenchmarkPlace10kOn5k(b *testing.B) {
	servers, jobs := benchCluster()
	var rates [10]float64
	var lat []time.Duration
	var total time.Duration
	for b.Loop() {
		order, err := validateJobs(jobs, nil)
		if err != nil {
			b.Fatal(err)
		}
		c := newCluster(servers, nil, jobs)
		rng := rand.New(rand.NewPCG(1, 2))
		lat = lat[:0]
		start := time.Now()
		for _, j := range order {
			c.timedPlace(j, rng, &lat)
		}
		total += time.Since(start)
		if len(lat) != 10000 {
			b.Fatalf("placed %d", len(lat))
		}
		for k := range rates {
			var d time.Duration
			for _, l := range lat[k*1000 : (k+1)*1000] {
				d += l
			}
			rates[k] += 1000 / d.Seconds()
		}
	}
	n := float64(b.N)
	b.ReportMetric(float64(10000*b.N)/total.Seconds(), "placements/s")
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
	b.ReportMetric(rates[0]/n, "first-tenth/s")
	b.ReportMetric(rates[9]/n, "last-tenth/s")
}

// timedPlace is place, timing each replica's choice (group building
// included in the first).
func (c *cluster) timedPlace(j int, rng *rand.Rand, lat *[]time.Duration) {
	start := time.Now()
	job := &c.jobs[j]
	groups, values, _ := c.groups(j)
	for range job.Replicas {
		if _, ok := c.choose(j, groups, values, Options{Strategy: Spread, Candidates: 4}, rng); !ok {
			panic("unplaced")
		}
		now := time.Now()
		*lat = append(*lat, now.Sub(start))
		start = now
	}
}

// BenchmarkPlace10kOn5kScoreAll is the peer: Place comparing every
// feasible server for each replica (as a scheduler that scores every
// node does), on the same inputs.
func BenchmarkPlace10kOn5kScoreAll(b *testing.B) {
	benchPlace(b, &Options{Candidates: 1 << 30})
}

// BenchmarkPlace10kOn5kSampled is Place as shipped (4 candidates).
func BenchmarkPlace10kOn5kSampled(b *testing.B) {
	benchPlace(b, nil)
}

// BenchmarkPlace10kOn5kNoSpread is Place as shipped without a spread
// label: every replica chooses among all ~3,300 servers its constraint
// allows, where sampling matters; ...ScoreAllNoSpread is its peer.
func BenchmarkPlace10kOn5kNoSpread(b *testing.B) { benchPlace(b, nil, noSpread) }

func BenchmarkPlace10kOn5kScoreAllNoSpread(b *testing.B) {
	benchPlace(b, &Options{Candidates: 1 << 30}, noSpread)
}

func noSpread(jobs []Job) {
	for i := range jobs {
		jobs[i].Spread = ""
	}
}

func benchPlace(b *testing.B, opts *Options, adjust ...func([]Job)) {
	servers, jobs := benchCluster()
	for _, f := range adjust {
		f(jobs)
	}
	for b.Loop() {
		plan, err := Place(servers, nil, jobs, opts)
		if err != nil || len(plan.Placed) != 10000 {
			b.Fatalf("placed %d, %v", len(plan.Placed), err)
		}
	}
	b.ReportMetric(float64(10000*b.N)/b.Elapsed().Seconds(), "placements/s")
}
