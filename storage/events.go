package storage

import (
	"context"
	"time"
)

// Event is a change to the cluster's storage: one Pools made, or one of
// health that a Status found.
type Event struct {
	Time   time.Time `json:"time"`
	Pool   string    `json:"pool"`
	Type   EventType `json:"type"`
	Server string    `json:"server,omitempty"`
	Volume string    `json:"volume,omitempty"`
	// Health is a volume's, for VolumeHealth.
	Health  Health `json:"health,omitempty"`
	Message string `json:"message,omitempty"`
}

// EventType says what an Event reports.
type EventType string

const (
	PoolCreated   EventType = "pool-created"
	PoolGrown     EventType = "pool-grown"
	PoolRemoved   EventType = "pool-removed"
	VolumeCreated EventType = "volume-created"
	VolumeRemoved EventType = "volume-removed"
	Mounted       EventType = "mounted"
	Unmounted     EventType = "unmounted"
	// MemberDown and MemberUp: a member's storage daemon stopped or
	// started answering.
	MemberDown EventType = "member-down"
	MemberUp   EventType = "member-up"
	// VolumeHealth: a volume's health changed (Healthy, Degraded, Down).
	VolumeHealth EventType = "volume-health"
)

// Watch returns the events from now until ctx ends, when the channel
// closes. A receiver that falls more than fanout.DefaultBuffer events
// behind loses the oldest.
func (p *Pools) Watch(ctx context.Context) (<-chan Event, error) {
	return p.events.Subscribe(ctx)
}

// emit stamps ev, logs it and publishes it.
func (p *Pools) emit(ev Event) {
	ev.Time = p.now()
	p.log.Info("storage", "pool", ev.Pool, "event", ev.Type, "server", ev.Server, "volume", ev.Volume, "health", ev.Health, "message", ev.Message)
	p.events.Publish(ev)
}
