#!/usr/bin/env bash
# `make test`: every test tier, bringing up what the tests need and tearing
# down what this run started (a cluster or services that were already running
# are left running).
#
#   1. lint: rustfmt, clippy -D warnings
#   2. unit: pure tests of every crate (renderers, golden files, CRD drift, ...)
#   3. rendered config: Debian's postgres (+ streaming replicas), pgbouncer
#      and redis-server started with exactly what the operator renders, on
#      loopback, clients verifying TLS as the app does, and the rendered
#      exporter sidecars scraped beside them (needs root)
#   4. integration: ladder-app against real PostgreSQL (+ streaming replica),
#      PgBouncer, Redis, ClickHouse (and chDB, ClickHouse's current engine)
#      and Varnish on loopback
#   5. e2e: against the local control plane (etcd, kube-apiserver,
#      kube-controller-manager, kube-scheduler, kwok)
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
cd "$LADDER_ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$LADDER_CACHE/target}"
CARGO_FLAGS=(--locked)
# Every failing test binary is reported, not only the first.
TEST_FLAGS=(--locked --no-fail-fast)

started=()
teardown() {
  local rc=$?
  for s in "${started[@]}"; do bash "hack/$s.sh" down >/dev/null 2>&1 || true; done
  exit "$rc"
}
trap teardown EXIT

step() { printf '\n\033[1;35m### %s\033[0m\n' "$*" >&2; }

bash hack/toolchain.sh

step "lint: rustfmt and clippy"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets "${CARGO_FLAGS[@]}" -- -D warnings
bash hack/check-deps.sh

# Start the cluster's build early: on a cold machine it is the long pole.
step "bringing up the data services and the local control plane"
[[ -f .ladder/services.env ]] && bash hack/services.sh status | grep -q 'replica  up' || started+=(services)
bash hack/services.sh up
if ! bash hack/cluster.sh status 2>/dev/null | grep -q 'kube-apiserver *up'; then started+=(cluster); fi
bash hack/cluster.sh up
LADDER_HELM="$(bash hack/build-helm.sh)"
export LADDER_HELM
# The edge's TLS sidecar, for app/tests/edge_hostile.rs (built once, cached).
LADDER_GHOSTUNNEL="$(bash hack/build-ghostunnel.sh)"
export LADDER_GHOSTUNNEL
# The data tiers' exporter sidecars, for the rendered-config tier (the
# catalogue's versions, built once, cached; one the Go module proxy does not
# serve is named and left out, and the tier says what it could not run).
exporters="$(bash hack/build-exporters.sh)"
eval "$exporters"

step "unit tests (pure)"
cargo test --workspace "${TEST_FLAGS[@]}" --lib --bins
if compgen -G "operator/tests/*.rs" >/dev/null; then
  cargo test -p ladder-operator "${TEST_FLAGS[@]}" --test '*'
fi

step "rendered config: the data services run what the operator renders"
cargo test -p ladder-operator "${TEST_FLAGS[@]}" --test rendered_config_runs -- --ignored

step "integration tests against the real data services"
set -a; source .ladder/services.env; set +a
# The LoadReport test writes to the local control plane (it is up already).
LADDER_KUBECONFIG="$CLUSTER_DIR/kubeconfig" cargo test -p ladder-app "${TEST_FLAGS[@]}" --test '*'

step "container images (static musl binaries on scratch, no Docker daemon)"
# e2e/tests/images.rs unpacks and runs them.
bash hack/images.sh

step "e2e tests against the local control plane"
KUBECONFIG="$CLUSTER_DIR/kubeconfig" cargo test -p ladder-e2e "${TEST_FLAGS[@]}" --tests

step "all test tiers passed"
