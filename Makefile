# Ladder's front door. Every target has a one-line comment; `make help` lists them.
#
# Heavy caches live outside the clone (see hack/lib/common.sh): the built
# Kubernetes binaries, Go's module and build caches, and Cargo's target dir.

SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
export LADDER_CACHE ?= $(HOME)/.cache/ladder
export CARGO_TARGET_DIR ?= $(LADDER_CACHE)/target
export KUBECONFIG_LADDER := $(CURDIR)/.ladder/cluster/kubeconfig
CARGO ?= cargo

.PHONY: help demo test test-unit test-rendered test-integration test-e2e lint fmt crds check-crds \
        cluster-up cluster-down services-up services-down toolchain bench bench-app bench-promotion bench-transitions clean images chart-files

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

demo: ## run Ladder's main job on this machine (installs what it needs)
	@hack/demo.sh

test: ## run every test tier: lint, unit, integration (services), e2e (control plane)
	@hack/test.sh

toolchain: ## install the Debian packages the scripts and tests use
	@hack/toolchain.sh

lint: ## rustfmt check, clippy with -D warnings, CRD drift check
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	hack/check-deps.sh

fmt: ## format the code
	$(CARGO) fmt --all

test-unit: ## unit tests: pure code, no services (golden snapshots, property tests, CRD drift)
	$(CARGO) test --workspace --locked --lib --bins
	$(CARGO) test -p ladder-operator --locked --test '*'

test-rendered: toolchain ## the rendered config runs: Debian's postgres, pgbouncer and redis-server started with exactly what the operator renders, their exporters scraped beside them (needs root; builds the exporters once)
	$(CARGO) test -p ladder-operator --locked --test rendered_config_runs -- --ignored

test-integration: services-up cluster-up ## integration tests against the real data services (LoadReports go to the control plane)
	set -a; source .ladder/services.env; set +a; \
	LADDER_KUBECONFIG=$(KUBECONFIG_LADDER) $(CARGO) test -p ladder-app --locked --test '*'

test-e2e: services-up cluster-up ## end-to-end tests against the local control plane (migrations run against the local services)
	LADDER_HELM=$$(hack/build-helm.sh) KUBECONFIG=$(KUBECONFIG_LADDER) $(CARGO) test -p ladder-e2e --locked

crds: ## regenerate crds/ (and the chart's copy) from the Rust types
	$(CARGO) run -q -p ladder-operator --locked -- crd > crds/manifests/ladder.dev_crds.yaml
	cp crds/manifests/ladder.dev_crds.yaml charts/ladder-operator/charts/ladder-crds/files/ladder.dev_crds.yaml

chart-files: ## copy deploy/observability's rules and dashboard into the chart (checked for drift by the e2e tests)
	cp deploy/observability/rules.yaml deploy/observability/ladder-dashboard.json charts/ladder-operator/files/

images: ## build the ladder-operator and ladder-app images (no Docker daemon) into .ladder/images/
	@hack/images.sh

cluster-up: ## build (cached) and start the local control plane; kubeconfig in .ladder/cluster/
	@hack/cluster.sh up

cluster-down: ## stop the local control plane and remove its state
	@hack/cluster.sh down

services-up: ## install and start PostgreSQL (+replica), PgBouncer, Redis, ClickHouse, Varnish
	@hack/services.sh up

services-down: ## stop the data services and remove their state
	@hack/services.sh down

bench: cluster-up ## benchmark the operator next to a floor measured in the same run (per phase, 200/1000 ScalingPhases, requests, churn, RSS); writes bench/operator.md (BENCH_QUICK=1: smoke run; BENCH_FULL=1: also 5,000)
	$(CARGO) build --release -p ladder-operator --locked
	KUBECONFIG=$(KUBECONFIG_LADDER) $(CARGO) run -q --release -p ladder-e2e --locked --bin bench-operator

bench-promotion: cluster-up ## benchmark the promoter (reaction time to a threshold, status writes/min at steady load); writes bench/promotion.md
	KUBECONFIG=$(KUBECONFIG_LADDER) $(CARGO) run -q -p ladder-e2e --locked --bin bench-promotion

bench-transitions: services-up cluster-up ## time each step of 0->1 and 2->3 climbs with seeded rows, beside pg_dump | psql of the same rows; writes bench/transitions.md
	$(CARGO) build -q --release --locked -p ladder-operator -p ladder-app
	set -a; source .ladder/services.env; set +a; \
	  LADDER_OPERATOR_BIN=$(CARGO_TARGET_DIR)/release/ladder-operator LADDER_APP_BIN=$(CARGO_TARGET_DIR)/release/ladder-app \
	  KUBECONFIG=$(KUBECONFIG_LADDER) $(CARGO) run -q --release -p ladder-e2e --locked --bin bench-transitions

bench-app: ## benchmark ladder-app per tier beside its ceilings; writes bench/app.md
	@hack/bench-app.sh

clean: ## stop the demo operator, the control plane and the services; remove runtime state
	@if [[ -f .ladder/operator.pid ]] && grep -q ladder-operator /proc/$$(cat .ladder/operator.pid)/cmdline 2>/dev/null; then \
	  kill $$(cat .ladder/operator.pid); fi
	@hack/cluster.sh down
	@hack/services.sh down
	rm -rf .ladder
