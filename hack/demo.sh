#!/usr/bin/env bash
# `make demo`: Ladder's main job on this machine, with the embedded default
# (the local control plane in hack/). Installs what it needs, brings up the
# control plane and the data services, shows the nodes by region, then (when
# the operator is built) installs the CRDs, runs the operator, shows a phase
# transition with data (0 -> 1: SQLite to PostgreSQL, the migration really
# run on loopback) and applies a sample ScalingPhase. Between the two, the companion app serves a link on
# phase 0 (SQLite) and phase 1 (PgBouncer + Redis) on loopback.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
cd "$LADDER_ROOT"

bash hack/toolchain.sh
bash hack/cluster.sh up
bash hack/services.sh up
export KUBECONFIG="$CLUSTER_DIR/kubeconfig"
KUBECTL="$LADDER_BIN/kubectl"; [[ -x $KUBECTL ]] || KUBECTL=kubectl
export KUBECTL

echo
log "the local control plane: $("$KUBECTL" version -o json 2>/dev/null | sed -n 's/.*"gitVersion": "\(v1[^"]*\)".*/\1/p' | tail -1), nodes by region"
"$KUBECTL" get nodes -L topology.kubernetes.io/region,topology.kubernetes.io/zone \
  --sort-by='.metadata.labels.topology\.kubernetes\.io/region'
echo
log "the data services (connection URLs in .ladder/services.env)"
bash hack/services.sh status

bash hack/demo-app.sh

if [[ -x hack/demo-operator.sh ]]; then
  echo
  bash hack/demo-operator.sh
fi

echo
log "done. KUBECONFIG=${KUBECONFIG#"$LADDER_ROOT/"}; stop everything with: make clean"
