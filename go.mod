module github.com/musterkit/muster

go 1.26.0

require (
	github.com/vishvananda/netlink v1.3.1
	github.com/vishvananda/netns v0.0.5
)

require (
	github.com/google/renameio/v2 v2.0.2 // indirect
	github.com/klauspost/compress v1.20.4 // indirect
	github.com/lxc/go-lxc v0.0.0-20260316180011-3af4ce000ed7 // indirect
	golang.org/x/sys v0.50.0 // indirect
)
