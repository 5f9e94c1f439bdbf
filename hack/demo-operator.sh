#!/usr/bin/env bash
# The operator part of `make demo` (hack/demo.sh calls it with KUBECONFIG set,
# after the control plane is up): installs the CRDs, starts the operator in
# the background (log .ladder/operator.log, pid .ladder/operator.pid, metrics
# on 127.0.0.1:${LADDER_OPERATOR_PORT:-9464}), shows a transition with data
# (ScalingPhase `mvp` in autoscale Auto: the app on loopback on phase 0 with
# links in it, reporting its load; a write load makes it climb to phase 1 by
# itself, step by step, with the migration Job's pod run on loopback by the
# e2e runner; the links counted through the app; then, the load stopped, the
# way back recommended and held for approval; bounded by
# LADDER_DEMO_TRANSITION_TIMEOUT, 300 s), then applies the sample ScalingPhase
# from examples/, waits for Ready, climbs it from phase 1 to phase 2 and shows
# the status and the children. Stop the operator with:
#   kill "$(cat .ladder/operator.pid)"
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
cd "$LADDER_ROOT"

: "${KUBECONFIG:?KUBECONFIG must point at the local control plane (make cluster-up)}"
KUBECTL="${KUBECTL:-$LADDER_BIN/kubectl}"; [[ -x $KUBECTL ]] || KUBECTL=kubectl
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$LADDER_CACHE/target}"
PORT="${LADDER_OPERATOR_PORT:-9464}"
NS="${LADDER_DEMO_NAMESPACE:-ladder-demo}"
PIDFILE="$LADDER_STATE/operator.pid"
LOGFILE="$LADDER_STATE/operator.log"
mkdir -p "$LADDER_STATE"

log "building the operator (cargo build -p ladder-operator)"
cargo build -q -p ladder-operator --bin ladder-operator
BIN="$CARGO_TARGET_DIR/debug/ladder-operator"

log "installing the CRDs (ladder-operator crd | kubectl apply --server-side)"
"$BIN" crd | "$KUBECTL" apply --server-side --force-conflicts -f -
"$KUBECTL" wait --for condition=established --timeout=60s crd/scalingphases.ladder.dev crd/loadreports.ladder.dev >/dev/null

# Stop an operator this script started earlier (its recorded pid only).
if [[ -f $PIDFILE ]]; then
  old="$(cat "$PIDFILE")"
  if [[ -n $old ]] && grep -q ladder-operator "/proc/$old/cmdline" 2>/dev/null; then
    log "stopping the previous operator (pid $old)"
    kill "$old" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$old" 2>/dev/null || break; sleep 0.2; done
  fi
fi

"$KUBECTL" get namespace "$NS" >/dev/null 2>&1 || "$KUBECTL" create namespace "$NS" >/dev/null

log "starting the operator: metrics and health on 127.0.0.1:$PORT, log ${LOGFILE#"$LADDER_ROOT/"}"
# Scoped to the demo namespace, so it never reconciles the e2e tests' namespaces
# (each test runs its own operator) when both run on this machine.
daemon "$PIDFILE" "$LOGFILE" "$BIN" run --http-addr "127.0.0.1:$PORT" --namespace "$NS" --lease-namespace "$NS"
for _ in $(seq 1 150); do
  curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
  kill -0 "$(cat "$PIDFILE")" 2>/dev/null || { tail -20 "$LOGFILE" >&2; die "the operator exited"; }
  sleep 0.2
done
curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null || die "the operator is not ready: see $LOGFILE"

"$KUBECTL" get namespace "$NS" >/dev/null 2>&1 || "$KUBECTL" create namespace "$NS" >/dev/null
# A rerun starts over: an earlier demo's climbs and steps down left volumes
# labelled as retired (a later climb would refuse to start on them, as it
# should with real data). They hold only demo data.
if [[ -n "$("$KUBECTL" -n "$NS" get sp -o name 2>/dev/null)" ]]; then
  log "an earlier demo left ScalingPhases in $NS: deleting them and their volumes to start over"
  "$KUBECTL" -n "$NS" delete sp --all --wait --timeout=120s >/dev/null
  "$KUBECTL" -n "$NS" delete pvc --all --wait --timeout=120s >/dev/null
fi
# Every generated pod must pass the `restricted` Pod Security profile.
"$KUBECTL" label --overwrite namespace "$NS" pod-security.kubernetes.io/enforce=restricted >/dev/null

# Waits until shop is Ready in the phase, printing each transition step as
# `kubectl get sp -w` would show it.
wait_ready() {
  local phase="$1" start=$SECONDS last=""
  for _ in $(seq 1 600); do
    step="$("$KUBECTL" -n "$NS" get sp shop -o jsonpath='{.status.activePhase} {.status.transition.from}->{.status.transition.to} {.status.transition.step}' 2>/dev/null || true)"
    if [[ $step != "$last" ]]; then
      printf '    %5ss  active=%s  transition=%s\n' "$((SECONDS - start))" "${step%% *}" "${step#* }"
      last="$step"
    fi
    got="$("$KUBECTL" -n "$NS" get sp shop -o jsonpath='{.status.activePhase}/{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null || true)"
    if [[ $got == "$phase/True" ]]; then
      log "phase $phase Ready after $((SECONDS - start))s"
      return 0
    fi
    sleep 0.2
  done
  "$KUBECTL" -n "$NS" get sp shop -o yaml >&2
  die "ScalingPhase shop did not become Ready in phase $phase"
}

echo
log "auto-promotion with data: under load, ScalingPhase mvp (autoscale Auto) climbs by itself from phase 0 (SQLite) to 1 (PostgreSQL)"
log "(kwok runs no containers: the e2e runner runs the migration Job's pod, ladder-app migrate, on loopback)"
cargo build -q -p ladder-app --bin ladder-app
cargo build -q -p ladder-e2e --bin demo-transition
LADDER_APP_BIN="$CARGO_TARGET_DIR/debug/ladder-app" \
  "$CARGO_TARGET_DIR/debug/demo-transition" --namespace "$NS" --name mvp --links 200 \
  --timeout "${LADDER_DEMO_TRANSITION_TIMEOUT:-300}"

echo
log "applying examples/phase-1-growth.yaml (PostgreSQL + PgBouncer, Redis, 2 app replicas, TLS, NetworkPolicies)"
"$KUBECTL" -n "$NS" apply --server-side -f examples/phase-1-growth.yaml
wait_ready 1
"$KUBECTL" -n "$NS" get sp -o wide
echo
log "climbing: examples/phase-2-regional.yaml (+3 read replicas over 3 regions, HPA, rate limits + WAF)"
"$KUBECTL" -n "$NS" apply --server-side --force-conflicts -f examples/phase-2-regional.yaml
wait_ready 2
"$KUBECTL" -n "$NS" get sp -o wide
echo
log "the children (label app.kubernetes.io/managed-by=ladder)"
"$KUBECTL" -n "$NS" get deploy,sts,svc,cm,secret,netpol,pdb,hpa -l app.kubernetes.io/managed-by=ladder
echo
log "pods by node and region"
"$KUBECTL" -n "$NS" get pods -o wide --sort-by=.spec.nodeName | awk '{print $1, $2, $3, $7}' | column -t
echo
log "status.components and conditions"
"$KUBECTL" -n "$NS" get sp shop -o jsonpath='{range .status.components[*]}  {.kind} {.name}: ready={.ready} ({.message}){"\n"}{end}{range .status.conditions[*]}  {.type}={.status} {.reason}: {.message}{"\n"}{end}'
echo
log "operator metrics (curl 127.0.0.1:$PORT/metrics | grep ^ladder_)"
curl -fsS "http://127.0.0.1:$PORT/metrics" | grep -E '^ladder_(reconciles_total|status_writes_total|leader|objects_applied_total)' | head -20
echo
log "the operator keeps running (pid $(cat "$PIDFILE")); stop it with: kill \"\$(cat .ladder/operator.pid)\""
