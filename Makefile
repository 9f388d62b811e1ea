# Muster's two commands, for a fresh Debian machine as root:
#   make demo   a real cluster of three simulated servers on this machine
#   make test   go vet and the whole suite, privileged tests included, then
#               examples/tcplb: a driver in its own module on the public suites
# Both install the Debian packages they need first.

SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
# What the drivers and tests run: liblxc (+ headers for cgo), a static
# busybox for the offline base image, iproute2 for the simulated servers,
# BIRD 2 as the independent BGP peer, HAProxy and Nginx (with its stream
# module) for the load balancers, keepalived for floating IPs, iperf3 and wrk
# for the benchmarks, nftables to filter ports in the preflight test, dig
# (dnsutils) as a real DNS client; GlusterFS, MooseFS and nfs-ganesha (with
# rpcbind, and libnfs-utils as a userspace NFS client) for storage, with
# fuse3 for their FUSE mounts; wg (wireguard-tools) to check what operators
# see of the userspace WireGuard devices.
DEB_PACKAGES := lxc lxc-dev busybox-static iproute2 iputils-ping zstd pkg-config gcc bird2 \
	haproxy nginx-light libnginx-mod-stream keepalived iperf3 wrk nftables dnsutils \
	glusterfs-server glusterfs-client moosefs-master moosefs-chunkserver moosefs-metalogger \
	moosefs-client nfs-ganesha nfs-ganesha-vfs rpcbind libnfs-utils fuse3 wireguard-tools
TEST_TIMEOUT ?= 25m
# Consul 1.13.9 (MPL-2.0) has no Debian package: it is built once from the
# Go module proxy by the tools/consul module and cached.
CONSUL_VERSION := 1.13.9
CONSUL_CACHE ?= $(HOME)/.cache/muster/consul-$(CONSUL_VERSION)

.PHONY: deps demo test vet build bench clean consul

# deps installs the missing Debian packages (as root; otherwise it only
# reports what is missing).
deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then echo "missing Debian packages (install as root): $$missing"; exit 0; fi; \
	echo "installing: $$missing"; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing

# consul puts the cached Consul build in bin/, building it first if needed
# (a few minutes, once per machine).
consul:
	@mkdir -p $(BIN) $(dir $(CONSUL_CACHE))
	@if [ ! -x $(CONSUL_CACHE) ]; then \
		echo "building Consul $(CONSUL_VERSION) from the Go module proxy (once; a few minutes)"; \
		cd tools/consul && $(GO) build -o $(CONSUL_CACHE).tmp github.com/hashicorp/consul && mv $(CONSUL_CACHE).tmp $(CONSUL_CACHE); \
	fi
	@cp $(CONSUL_CACHE) $(BIN)/consul

build:
	$(GO) build -o $(BIN)/ ./examples/...

demo: deps build
	$(BIN)/demo -agent $(BIN)/muster-agent

# examples/tcplb is a module of its own (./... does not descend into it):
# vet and test it in its directory.
vet:
	$(GO) vet ./...
	cd examples/tcplb && $(GO) vet ./...

test: deps vet consul
	PATH=$(BIN):$$PATH MUSTER_ROOT_TESTS=1 $(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) ./...
	cd examples/tcplb && MUSTER_ROOT_TESTS=1 $(GO) test -race -count=1 ./...

bench: deps
	MUSTER_ROOT_TESTS=1 $(GO) test -run '^$$' -bench . -benchtime 20x ./drivers/lxc/ ./bench/...

clean:
	rm -rf $(BIN)
