package agent

import (
	"context"
	"encoding/json"
	"maps"
	"net/http"
	"slices"
	"sync"

	"github.com/musterkit/muster/errcode"
)

// Service is a subsystem that an agent serves to the cluster beside its
// container driver: the server's networks (NetworkService), its load
// balancers (*Balancers), its floating IPs (*FloatingIPs), and whatever
// comes next. The agent hosts every Service the same way: its routes
// under /v1/<Name>, and what its kinds can do in the agent's capability
// document (GET /v1/capabilities), which a Client reads once when it
// dials. A subsystem whose instances are named and configured through the
// agent builds on Hosted, which keeps and restores them.
type Service interface {
	// Name is the service's path segment under /v1, a DNS label.
	Name() string
	// Routes adds the service's handlers with route; their
	// http.ServeMux patterns are under /v1/<Name>.
	Routes(route func(pattern string, h http.HandlerFunc))
	// Capabilities returns what each kind the service offers can do, by
	// kind, as JSON-encodable values (a driver's Capabilities()).
	Capabilities(ctx context.Context) (map[string]any, error)
}

// capabilityDocument serves GET /v1/capabilities: every service's
// capabilities by kind, computed once (a kind's capabilities do not change
// while the agent runs).
type capabilityDocument struct {
	services []Service

	mu  sync.Mutex
	doc map[string]map[string]any
}

func (c *capabilityDocument) get(ctx context.Context) (map[string]map[string]any, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.doc != nil {
		return c.doc, nil
	}
	doc := map[string]map[string]any{}
	for _, s := range c.services {
		caps, err := s.Capabilities(ctx)
		if err != nil {
			return nil, err
		}
		doc[s.Name()] = caps
	}
	c.doc = doc
	return doc, nil
}

// capabilities holds a dialled agent's capability document.
type capabilities map[string]map[string]json.RawMessage

// decode reads the capabilities of service's kind into v, and reports
// whether the agent offers that kind.
func (c capabilities) decode(service, kind string, v any) bool {
	raw, ok := c[service][kind]
	return ok && json.Unmarshal(raw, v) == nil
}

// Kinds returns the kinds the agent's server offers for service
// ("networks", "balancers", "floating-ips"), as read when the client
// dialled, sorted.
func (c *Client) Kinds(service string) []string {
	return slices.Sorted(maps.Keys(c.caps[service]))
}

// fetchCapabilities reads the agent's capability document.
func (c *Client) fetchCapabilities(ctx context.Context) error {
	caps, err := call[capabilities](ctx, c, http.MethodGet, apiPath("capabilities"), nil)
	if err != nil {
		return err
	}
	if caps == nil {
		return errcode.New(errcode.Internal, "agent %s sent no capability document", c.addr)
	}
	c.caps = caps
	return nil
}
