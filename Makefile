# pgnm — the two commands a newcomer needs are `make run` and `make test`.

SHELL := /bin/bash
PYTHON ?= python3
# The Python tools of the tests; CI keeps this outside the clone to reuse it.
VENV ?= .venv
VENV_PY := $(abspath $(VENV))/bin/python
REQUIREMENTS := proto-schemas/examples/requirements.txt deploy/helm/requirements.txt

.PHONY: help build run test test-cluster chaos fmt lint schemas manifests bench

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

build: ## Build every binary (debug)
	cargo build --workspace --bins

run: ## Start the whole system on this machine (Redis and PostgreSQL included)
	./scripts/run-local.sh

test: $(VENV)/.ready node_modules/.ready ## fmt check, clippy -D warnings, then every test
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo build --workspace --bins
	PGNM_PYTHON=$(VENV_PY) cargo nextest run --workspace
	$(MAKE) --no-print-directory test-cluster

# The system tests that use the shared Redis, again against a throwaway
# three-master Redis Cluster (ports PGNM_CLUSTER_PORTS, default 7101-7103). The
# Python example is left out: redis-py needs its own cluster client.
CLUSTER_TESTS := round_trip delivery malformed flood shutdown nodes health scheduler
test-cluster: ## The bus, registry, health and scheduler tests against a local Redis Cluster
	@dir=$$(mktemp -d) && url=$$(scripts/redis-cluster.sh start "$$dir/cluster") || exit 1; \
	echo "cluster: $$url"; \
	PGNM_TEST_REDIS_URL="$$url" cargo nextest run -p pgnm-tests $(addprefix --test ,$(CLUSTER_TESTS)) \
		-E 'not test(python_example)'; rc=$$?; \
	scripts/redis-cluster.sh stop "$$dir/cluster"; rmdir "$$dir"; exit $$rc

fmt: ## Format the code
	cargo fmt --all

lint: ## Clippy with warnings denied
	cargo clippy --workspace --all-targets -- -D warnings

schemas: ## Regenerate proto-schemas/*.json from the Rust types
	PGNM_BLESS=1 cargo nextest run -p pgnm-tests --test schemas committed_schemas_match

manifests: $(VENV)/.ready ## Re-render deploy/k8s/ from the Helm chart (after checking it)
	$(VENV_PY) deploy/helm/check.py --bless

CHAOS_SECS ?= 120
chaos: ## Faults under load for CHAOS_SECS (120) seconds: kill -9 replicas, restart Redis, lose PostgreSQL
	cargo build --workspace --bins
	cargo run --quiet -p pgnm-tests --bin pgnm-chaos -- --duration-secs $(CHAOS_SECS)

bench: ## Print throughput and latency figures (release build)
	cargo build --release --workspace --bins
	cargo run --quiet --release -p pgnm-bench

# The Python tools the tests use: the proto-schemas example's redis + msgpack,
# and the chart checks' helm-python-sdk + kubernetes-validate.
$(VENV)/.ready: $(REQUIREMENTS)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check $(addprefix -r ,$(REQUIREMENTS))
	touch $@

# anvil, the real EVM node of the end-to-end tests (npm package @foundry-rs/anvil).
node_modules/.ready: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@
