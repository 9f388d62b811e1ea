package schedule

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/musterkit/muster/container"
	"github.com/musterkit/muster/errcode"
)

// Labels the controller puts on the replicas it runs.
const (
	LabelJob     = "muster.io/job"
	LabelVersion = "muster.io/version"
)

// Deployment is a job as the controller runs it: where its replicas go
// (Job) and what each one is.
type Deployment struct {
	Job
	Image  string            `json:"image"`
	Mounts []container.Mount `json:"mounts,omitempty"`
	Labels map[string]string `json:"labels,omitempty"`
	// Start, if set, is a command run in each replica once it runs (a
	// service that puts itself in the background, as busybox httpd does);
	// it must exit 0.
	Start []string `json:"start,omitempty"`
	// Health, if set, is a command run in a replica: exit status 0 means
	// healthy. Without it a running replica is healthy.
	Health []string `json:"health,omitempty"`
	Update Update   `json:"update,omitzero"`
	// Network, if set, is the network (of ControllerOptions.Networks)
	// each replica gets an address on; Port is where it serves, for
	// ControllerOptions.Traffic.
	Network string `json:"network,omitempty"`
	Port    uint16 `json:"port,omitempty"`
}

// Update bounds a rolling upgrade.
type Update struct {
	// MaxSurge is how many replicas above Replicas may run during an
	// upgrade; MaxUnavailable how many below it may be healthy. Both 0
	// means MaxSurge 1.
	MaxSurge       int `json:"maxSurge,omitempty"`
	MaxUnavailable int `json:"maxUnavailable,omitempty"`
}

// Version is what tells a deployment's replicas from those of another
// version of it: a digest of everything a replica is made of.
func (d *Deployment) Version() string {
	b, _ := json.Marshal([]any{d.Image, d.Mounts, d.Labels, d.Start, d.Health, d.Resources, d.Network, d.Port})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:6])
}

// Validate checks d alone (Job.Validate, an image, update bounds not
// negative); errcode.InvalidArgument.
func (d *Deployment) Validate() error {
	if err := d.Job.Validate(); err != nil {
		return err
	}
	if d.Image == "" {
		return errcode.New(errcode.InvalidArgument, "job %q: no image", d.Name)
	}
	if d.Update.MaxSurge < 0 || d.Update.MaxUnavailable < 0 {
		return errcode.New(errcode.InvalidArgument, "job %q: negative update bounds %+v", d.Name, d.Update)
	}
	return nil
}

// ControllerOptions configure a Controller. The zero value is usable.
type ControllerOptions struct {
	Logger *slog.Logger
	// Grace is how long a server may not answer before its replicas are
	// run elsewhere; 0 means 30 s.
	Grace time.Duration
	// HealthTimeout is how long a new replica may take to become healthy
	// before the upgrade rolls back; 0 means 30 s.
	HealthTimeout time.Duration
	// Placement tunes where replicas go.
	Placement Options
	// Events, if set, receives every action, from the reconciling
	// goroutine, before the next.
	Events func(Event)
	// Store keeps the deployments Run reconciles and each job's last
	// converged version; nil means an in-memory one.
	Store Store
	// Networks gives replicas of deployments with a Network their
	// addresses (a *network.Fabric).
	Networks Attacher
	// Traffic are told of replicas as they become healthy and before they
	// stop: load balancer pools (BalancerPool), service registries.
	Traffic []Traffic
	// Fence, if set, is asked before every action and stops the
	// reconcile with its error: a controller of several checks there that
	// it still holds the leadership (consul.Leadership.Fence), so that a
	// deposed leader never acts.
	Fence func(context.Context) error
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Event is one action of the controller, with its reason.
type Event struct {
	Time    time.Time `json:"time"`
	Job     string    `json:"job"`
	Action  Action    `json:"action"`
	Replica string    `json:"replica,omitempty"`
	Server  string    `json:"server,omitempty"`
	Reason  string    `json:"reason"`
}

// Action is what an Event did.
type Action string

const (
	Started     Action = "started"     // a replica created and started
	Removed     Action = "removed"     // a replica stopped and deleted
	Unhealthy   Action = "unhealthy"   // a new replica failed its health check
	RolledBack  Action = "rolled-back" // an upgrade went back to the version before
	Unplaceable Action = "unplaceable"
)

// Controller reconciles a cluster to declared deployments: it creates and
// removes replicas, rolls upgrades within their bounds (new replicas in
// only once healthy, old ones out after), rolls back an upgrade whose
// new replicas fail their health check, runs the replicas of a server
// lost past the grace period elsewhere, and removes stale ones when it
// returns. It is safe for concurrent use; reconciles are serialised.
type Controller struct {
	cl   *container.Cluster
	opts ControllerOptions
	log  *slog.Logger

	mu     sync.Mutex
	downAt map[string]time.Time // servers not answering, since
	seen   map[string][]replica // each server's replicas when it last answered
}

// NewController returns a controller of cl.
func NewController(cl *container.Cluster, opts *ControllerOptions) *Controller {
	c := &Controller{cl: cl, downAt: map[string]time.Time{}, seen: map[string][]replica{}}
	if opts != nil {
		c.opts = *opts
	}
	if c.opts.Store == nil {
		c.opts.Store = NewMemStore()
	}
	if c.opts.Grace == 0 {
		c.opts.Grace = 30 * time.Second
	}
	if c.opts.HealthTimeout == 0 {
		c.opts.HealthTimeout = 30 * time.Second
	}
	if c.opts.Now == nil {
		c.opts.Now = time.Now
	}
	c.log = c.opts.Logger
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	return c
}

// replica is a replica as observed.
type replica struct {
	job, name, server, version string
	running                    bool
	addr                       netip.Addr // on the deployment's network, if any
}

// world is what a reconcile sees.
type world struct {
	servers  []Server
	answered map[string]bool
	// replicas are by job, on servers that answer or that stopped
	// answering within the grace period (as last seen there).
	replicas map[string][]replica
}

// observe reads the cluster: servers (capacity from their host info,
// labels from the cluster), which answer, and every job's replicas; a
// server that stopped answering keeps its replicas as last seen until the
// grace period ends, and then has none. c.mu is held.
func (c *Controller) observe(ctx context.Context) (*world, error) {
	w := &world{answered: map[string]bool{}, replicas: map[string][]replica{}}
	now := c.opts.Now()
	statuses := c.cl.Servers(ctx)
	all, _ := c.cl.Containers(ctx) // servers that fail are not in statuses' answered set
	byServer := map[string][]container.Placement{}
	for _, p := range all {
		byServer[p.Server] = append(byServer[p.Server], p)
	}
	for _, st := range statuses {
		if !st.Healthy() {
			if _, ok := c.downAt[st.Name]; !ok {
				c.downAt[st.Name] = now
			}
			if now.Sub(c.downAt[st.Name]) < c.opts.Grace {
				for _, r := range c.seen[st.Name] {
					w.replicas[r.job] = append(w.replicas[r.job], r)
				}
			}
			continue
		}
		delete(c.downAt, st.Name)
		w.answered[st.Name] = true
		srv := Server{Name: st.Name, Labels: st.Labels,
			Capacity: Resources{MilliCPU: int64(st.Host.CPUs) * 1000, MemoryBytes: st.Host.MemoryBytes}}
		var seen []replica
		for _, p := range byServer[st.Name] {
			job := p.Spec.Labels[LabelJob]
			r := replica{job: job, name: p.Spec.Name, server: st.Name, version: p.Spec.Labels[LabelVersion], running: p.State == container.Running}
			if len(p.Spec.Networks) > 0 {
				r.addr = p.Spec.Networks[0].Address.Addr()
			}
			if job == "" {
				srv.Used = srv.Used.Add(Resources{MilliCPU: p.Spec.Limits.MilliCPU, MemoryBytes: p.Spec.Limits.MemoryBytes})
				continue
			}
			w.replicas[job] = append(w.replicas[job], r)
			seen = append(seen, r)
		}
		c.seen[st.Name] = seen
		w.servers = append(w.servers, srv)
	}
	return w, nil
}

// Reconcile brings every deployment to its declared state and returns
// when they are there: replicas created, upgraded, rescheduled or removed
// as needed. Invalid deployments (see Job.Validate; also no image, a
// cycle of affinities) are errcode.InvalidArgument before anything
// changes. An upgrade whose new replicas fail their health check is
// rolled back to the version that ran before and reported as an error
// (errcode.FailedPrecondition); replicas that fit no server are reported
// as errcode.Unavailable, with the placement's explanation.
func (c *Controller) Reconcile(ctx context.Context, deps []Deployment) error {
	jobs := make([]Job, len(deps))
	for i := range deps {
		if err := deps[i].Validate(); err != nil {
			return err
		}
		if deps[i].Network != "" && c.opts.Networks == nil {
			return errcode.New(errcode.InvalidArgument, "job %q: network %q, and the controller was given no Networks", deps[i].Name, deps[i].Network)
		}
		jobs[i] = deps[i].Job
	}
	order, err := validateJobs(jobs, nil)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	for _, i := range order {
		if err := c.reconcile(ctx, &deps[i]); err != nil {
			errs = append(errs, fmt.Errorf("job %q: %w", deps[i].Name, err))
		}
	}
	return errors.Join(errs...)
}

// reconcile converges one deployment. c.mu is held.
func (c *Controller) reconcile(ctx context.Context, d *Deployment) error {
	err := c.converge(ctx, d)
	var unhealthy *unhealthyError
	if errors.As(err, &unhealthy) {
		prev, serr := c.opts.Store.Stable(ctx, d.Name)
		if serr != nil {
			return errors.Join(err, serr)
		}
		if prev == nil || prev.Version() == d.Version() {
			return err
		}
		c.emit(Event{Job: d.Name, Action: RolledBack, Reason: fmt.Sprintf("version %s failed its health check (%v); back to %s", d.Version(), unhealthy, prev.Version())})
		if rerr := c.converge(ctx, prev); rerr != nil {
			return errors.Join(err, fmt.Errorf("rolling back: %w", rerr))
		}
		return errcode.New(errcode.FailedPrecondition, "upgrade to version %s rolled back: %v", d.Version(), unhealthy)
	}
	if err == nil {
		return c.opts.Store.SetStable(ctx, d)
	}
	return err
}

// Run reconciles the deployments in the store every interval until ctx
// ends, logging what fails, and returns ctx's error.
func (c *Controller) Run(ctx context.Context, interval time.Duration) error {
	for {
		deps, err := c.opts.Store.Deployments(ctx)
		if err == nil {
			err = c.Reconcile(ctx, deps)
		}
		if err != nil && ctx.Err() == nil {
			c.log.WarnContext(ctx, "schedule: reconcile", "err", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(interval):
		}
	}
}

// fence asks Fence, if set, whether this controller may act.
func (c *Controller) fence(ctx context.Context) error {
	if c.opts.Fence == nil {
		return nil
	}
	if err := c.opts.Fence(ctx); err != nil {
		return fmt.Errorf("not acting: %w", err)
	}
	return nil
}

type unhealthyError struct {
	replica string
	err     error
}

func (e *unhealthyError) Error() string {
	return fmt.Sprintf("replica %s is not healthy: %v", e.replica, e.err)
}

// classify splits job's replicas into those of version that run (cur),
// the others (old), both on servers that answer and so can be changed,
// and counts those on servers that do not answer (within their grace):
// counted, not touched.
func (w *world) classify(job, version string) (cur, old []replica, pendingCur, pendingOld int) {
	for _, r := range w.replicas[job] {
		switch {
		case !w.answered[r.server] && r.version == version:
			pendingCur++
		case !w.answered[r.server]:
			pendingOld++
		case r.version == version && r.running:
			cur = append(cur, r)
		default:
			old = append(old, r)
		}
	}
	return cur, old, pendingCur, pendingOld
}

// converge runs d's replicas until exactly d.Replicas of its version run
// and no other: each step starts what the surge allows, waits until the
// new replicas are healthy, then removes old or excess ones down to what
// the bounds allow. A new replica that does not become healthy is
// removed and reported as an *unhealthyError. c.mu is held.
func (c *Controller) converge(ctx context.Context, d *Deployment) error {
	version := d.Version()
	surge, unavailable := d.Update.MaxSurge, d.Update.MaxUnavailable
	if surge == 0 && unavailable == 0 {
		surge = 1
	}
	for {
		w, err := c.observe(ctx)
		if err != nil {
			return err
		}
		cur, old, pendingCur, pendingOld := w.classify(d.Name, version)
		curN, oldN := len(cur)+pendingCur, len(old)+pendingOld
		switch {
		case curN < d.Replicas:
			// Start new replicas within the surge: never more than
			// Replicas+surge, old ones included.
			n := d.Replicas - curN
			if oldN > 0 {
				n = min(n, d.Replicas+surge-curN-oldN)
			}
			if n <= 0 && len(old) == 0 {
				return errcode.New(errcode.Unavailable, "waiting for servers that do not answer, which hold %d old replicas", pendingOld)
			}
			if n <= 0 {
				// The surge is used up: an old replica goes before the
				// next new one starts. Above Replicas, a new one has
				// replaced it; at or below, it goes within MaxUnavailable.
				reason := "replaced by version " + version
				if curN+oldN <= d.Replicas {
					reason = "making room for version " + version + " (max unavailable)"
				}
				if err := c.remove(ctx, d, pickOld(old), reason); err != nil {
					return err
				}
				continue
			}
			if err := c.start(ctx, d, w, n, version); err != nil {
				return err
			}
		case len(old) > 0:
			if err := c.remove(ctx, d, pickOld(old), "replaced by version "+version); err != nil {
				return err
			}
		case oldN > 0:
			return errcode.New(errcode.Unavailable, "waiting for servers that do not answer, which hold %d old replicas", pendingOld)
		case curN > d.Replicas && len(cur) > 0:
			if err := c.remove(ctx, d, busiest(cur), fmt.Sprintf("%d replicas run, %d declared", curN, d.Replicas)); err != nil {
				return err
			}
		default:
			return nil
		}
	}
}

// place returns where n more replicas of d would go, given what runs on
// the servers that answer.
func (c *Controller) place(w *world, d *Deployment, n int) (*Plan, error) {
	var running []Replica
	have := 0
	for job, rs := range w.replicas {
		for _, r := range rs {
			if w.answered[r.server] {
				running = append(running, Replica{Job: job, Server: r.server})
				if job == d.Name {
					have++
				}
			}
		}
	}
	job := d.Job
	job.Replicas = have + n
	return Place(w.servers, running, []Job{job}, &c.opts.Placement)
}

// Change is what reconciling a deployment would do, shown before it is
// done (Controller.Plan).
type Change struct {
	Job     string `json:"job"`
	Version string `json:"version"`
	// Running counts the job's replicas by version, as now.
	Running map[string]int `json:"running"`
	// Start is how many replicas of Version are to start, Replace how
	// many of other versions they replace, Remove how many are in excess.
	Start   int `json:"start"`
	Replace int `json:"replace"`
	Remove  int `json:"remove"`
	// Placed is where the first step would start replicas, with why;
	// Unplaced what fits nowhere now.
	Placed   []Decision `json:"placed,omitempty"`
	Unplaced []Unplaced `json:"unplaced,omitempty"`
}

// Plan returns what Reconcile would do to deps, changing nothing: each
// deployment's replicas by version, how many to start, replace and
// remove, and where the first replicas would go given what runs now (an
// upgrade's later steps place on servers its first steps free).
// Invalid deployments are errcode.InvalidArgument, as for Reconcile.
func (c *Controller) Plan(ctx context.Context, deps []Deployment) ([]Change, error) {
	for i := range deps {
		if err := deps[i].Validate(); err != nil {
			return nil, err
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	w, err := c.observe(ctx)
	if err != nil {
		return nil, err
	}
	var out []Change
	for i := range deps {
		d := &deps[i]
		version := d.Version()
		cur, old, pendingCur, pendingOld := w.classify(d.Name, version)
		ch := Change{Job: d.Name, Version: version, Running: map[string]int{}, Replace: len(old) + pendingOld}
		for _, r := range w.replicas[d.Name] {
			ch.Running[r.version]++
		}
		curN := len(cur) + pendingCur
		ch.Start, ch.Remove = max(0, d.Replicas-curN), max(0, curN-d.Replicas)
		if ch.Start > 0 {
			plan, err := c.place(w, d, ch.Start)
			if err != nil {
				return nil, err
			}
			ch.Placed, ch.Unplaced = plan.Placed, plan.Unplaced
		}
		out = append(out, ch)
	}
	return out, nil
}

// start places n new replicas of d and starts them, then waits until each
// is healthy.
func (c *Controller) start(ctx context.Context, d *Deployment, w *world, n int, version string) error {
	plan, err := c.place(w, d, n)
	if err != nil {
		return err
	}
	taken := map[string]bool{}
	for _, rs := range w.replicas {
		for _, r := range rs {
			taken[r.name] = true
		}
	}
	for _, u := range plan.Unplaced {
		c.emit(Event{Job: d.Name, Action: Unplaceable, Reason: u.String()})
	}
	if len(plan.Placed) == 0 {
		if len(plan.Unplaced) > 0 {
			return errcode.New(errcode.Unavailable, "%s", plan.Unplaced[0])
		}
		return errcode.New(errcode.Internal, "placement placed nothing and explained nothing")
	}
	var started []replica
	for _, p := range plan.Placed {
		name := freeName(d.Name, version, taken)
		taken[name] = true
		addr, err := c.create(ctx, d, p.Server, name, version)
		if err != nil {
			return err
		}
		c.emit(Event{Job: d.Name, Action: Started, Replica: name, Server: p.Server, Reason: p.Reason(c.opts.Placement.Strategy)})
		started = append(started, replica{job: d.Name, name: name, server: p.Server, version: version, running: true, addr: addr})
	}
	for _, r := range started {
		if err := c.waitHealthy(ctx, d, r); err != nil {
			c.emit(Event{Job: d.Name, Action: Unhealthy, Replica: r.name, Server: r.server, Reason: err.Error()})
			for _, s := range started {
				c.remove(context.WithoutCancel(ctx), d, s, "its version failed the health check")
			}
			return &unhealthyError{replica: r.name, err: err}
		}
	}
	for _, r := range started {
		for _, t := range c.opts.Traffic {
			if err := t.Add(ctx, d.Name, r.endpoint(d)); err != nil {
				return fmt.Errorf("sending traffic to %s: %w", r.name, err)
			}
		}
	}
	return nil
}

func (r replica) endpoint(d *Deployment) Endpoint {
	return Endpoint{Replica: r.name, Server: r.server, Address: r.addr, Port: d.Port}
}

// freeName is the first name job-version-N not taken.
func freeName(job, version string, taken map[string]bool) string {
	for i := 0; ; i++ {
		if name := job + "-" + version + "-" + strconv.Itoa(i); !taken[name] {
			return name
		}
	}
}

// create creates and starts replica name of d on server, with an address
// on d's network if it has one, and returns that address.
func (c *Controller) create(ctx context.Context, d *Deployment, server, name, version string) (netip.Addr, error) {
	if err := c.fence(ctx); err != nil {
		return netip.Addr{}, err
	}
	srv, err := c.cl.Server(server)
	if err != nil {
		return netip.Addr{}, err
	}
	labels := maps.Clone(d.Labels)
	if labels == nil {
		labels = map[string]string{}
	}
	labels[LabelJob], labels[LabelVersion] = d.Name, version
	spec := &container.Spec{Name: name, Image: d.Image, Mounts: d.Mounts, Labels: labels,
		Limits: container.Limits{MilliCPU: d.Resources.MilliCPU, MemoryBytes: d.Resources.MemoryBytes}}
	undo := func() {}
	if d.Network != "" {
		n, err := c.opts.Networks.Attach(ctx, d.Network, server, name)
		if err != nil {
			return netip.Addr{}, fmt.Errorf("an address for %s on %s: %w", name, d.Network, err)
		}
		spec.Networks = []container.Network{n}
		undo = func() { c.opts.Networks.Detach(context.WithoutCancel(ctx), d.Network, name) }
	}
	if _, err := srv.Create(ctx, spec); err != nil {
		undo()
		return netip.Addr{}, fmt.Errorf("creating %s on %s: %w", name, server, err)
	}
	if err := srv.Start(ctx, name); err != nil {
		srv.Delete(context.WithoutCancel(ctx), name)
		undo()
		return netip.Addr{}, fmt.Errorf("starting %s on %s: %w", name, server, err)
	}
	if len(spec.Networks) > 0 {
		return spec.Networks[0].Address.Addr(), nil
	}
	return netip.Addr{}, nil
}

// waitHealthy runs d's Start in replica r, then waits until r passes its
// health check, within HealthTimeout.
func (c *Controller) waitHealthy(ctx context.Context, d *Deployment, r replica) error {
	srv, err := c.cl.Server(r.server)
	if err != nil {
		return err
	}
	if len(d.Start) > 0 {
		var out bytes.Buffer
		code, err := srv.Exec(ctx, r.name, &container.Process{Args: d.Start, Stdout: &out, Stderr: &out})
		if err == nil && code != 0 {
			err = fmt.Errorf("%s exited %d: %s", strings.Join(d.Start, " "), code, bytes.TrimSpace(out.Bytes()))
		}
		if err != nil {
			return fmt.Errorf("starting the service: %w", err)
		}
	}
	if len(d.Health) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, c.opts.HealthTimeout)
	defer cancel()
	var last error
	for {
		var out bytes.Buffer
		code, err := srv.Exec(ctx, r.name, &container.Process{Args: d.Health, Stdout: &out, Stderr: &out})
		switch {
		case err == nil && code == 0:
			return nil
		case err == nil:
			last = fmt.Errorf("%s exited %d: %s", strings.Join(d.Health, " "), code, bytes.TrimSpace(out.Bytes()))
		default:
			last = err
		}
		select {
		case <-ctx.Done():
			return last
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// remove takes replica r of d out of traffic, stops and deletes it, and
// gives its address back.
func (c *Controller) remove(ctx context.Context, d *Deployment, r replica, reason string) error {
	if err := c.fence(ctx); err != nil {
		return err
	}
	srv, err := c.cl.Server(r.server)
	if err != nil {
		return err
	}
	for _, t := range c.opts.Traffic {
		if err := t.Remove(ctx, d.Name, r.endpoint(d)); err != nil {
			return fmt.Errorf("taking %s out of traffic: %w", r.name, err)
		}
	}
	if r.running {
		if err := srv.Stop(ctx, r.name, 10*time.Second); err != nil && !errors.Is(err, errcode.FailedPrecondition) {
			return fmt.Errorf("stopping %s on %s: %w", r.name, r.server, err)
		}
	}
	if err := srv.Delete(ctx, r.name); err != nil && !errors.Is(err, errcode.NotFound) {
		return fmt.Errorf("deleting %s on %s: %w", r.name, r.server, err)
	}
	if d.Network != "" && r.addr.IsValid() {
		if err := c.opts.Networks.Detach(ctx, d.Network, r.name); err != nil && !errors.Is(err, errcode.NotFound) {
			return fmt.Errorf("giving back the address of %s: %w", r.name, err)
		}
	}
	c.emit(Event{Job: d.Name, Action: Removed, Replica: r.name, Server: r.server, Reason: reason})
	return nil
}

// pickOld is the old replica to remove first: one that does not run,
// else the first by name.
func pickOld(old []replica) replica {
	if i := slices.IndexFunc(old, func(r replica) bool { return !r.running }); i >= 0 {
		return old[i]
	}
	return old[0]
}

// busiest is a replica on the server that runs most of them.
func busiest(rs []replica) replica {
	count := map[string]int{}
	for _, r := range rs {
		count[r.server]++
	}
	best := rs[0]
	for _, r := range rs {
		if count[r.server] > count[best.server] {
			best = r
		}
	}
	return best
}

func (c *Controller) emit(ev Event) {
	ev.Time = c.opts.Now()
	c.log.Info("schedule", "job", ev.Job, "action", ev.Action, "replica", ev.Replica, "server", ev.Server, "reason", ev.Reason)
	if c.opts.Events != nil {
		c.opts.Events(ev)
	}
}
