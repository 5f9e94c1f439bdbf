#!/usr/bin/env bash
# A real local Kubernetes control plane as local processes on 127.0.0.1:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (fake
# nodes that make pods Running/Ready and Job pods complete, except migration
# pods, which e2e/src/runner.rs runs for real).
#
#   hack/cluster.sh up      build what is missing, start what is not running
#   hack/cluster.sh down    stop exactly the processes `up` started, remove the state
#   hack/cluster.sh status  show what runs
#   hack/cluster.sh stop  etcd|kube-apiserver   stop that one component (fault injection)
#   hack/cluster.sh start etcd|kube-apiserver   start it again and wait until it is healthy
#
# State, logs and the kubeconfig live in .ladder/cluster/. `up` is idempotent:
# a second `up` while one runs waits for it, then finds everything running.
#
# The apiserver writes an audit log of every write (create, update, patch,
# delete; metadata only: who, user agent, verb, object, code, time) to
# .ladder/cluster/audit.log, so tests can prove which process wrote what (the
# e2e leader-election test counts the writes of a paused leader). Node
# heartbeat Leases are left out: kwok renews them all the time.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"

ETCD_PORT="${LADDER_ETCD_PORT:-23790}"
ETCD_PEER_PORT="${LADDER_ETCD_PEER_PORT:-23800}"
APISERVER_PORT="${LADDER_APISERVER_PORT:-16443}"
KCM_PORT="${LADDER_KCM_PORT:-20257}"
SCHEDULER_PORT="${LADDER_SCHEDULER_PORT:-20259}"
KWOK_PORT="${LADDER_KWOK_PORT:-20247}"
SERVICE_CIDR=10.96.0.0/16
FIRST_SERVICE_IP=10.96.0.1

PKI="$CLUSTER_DIR/pki"
PIDS="$CLUSTER_DIR/pids"
KUBECONFIG_FILE="$CLUSTER_DIR/kubeconfig"
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)
AUDIT_LOG="$CLUSTER_DIR/audit.log"
AUDIT_POLICY="$CLUSTER_DIR/audit-policy.yaml"

kc() { kubectl --kubeconfig "$KUBECONFIG_FILE" "$@"; }

running() { # running COMPONENT: its recorded pid is alive
  local f="$PIDS/$1.pid"
  [[ -f $f ]] && kill -0 "$(cat "$f")" 2>/dev/null
}

apiserver_ready() {
  curl -fsS --max-time 2 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "https://127.0.0.1:$APISERVER_PORT/readyz" >/dev/null 2>&1
}

fail_component() { # fail_component NAME WHY
  printf '\033[1;31merror:\033[0m %s %s; last lines of %s:\n' "$1" "$2" "$CLUSTER_DIR/$1.log" >&2
  tail -n 30 "$CLUSTER_DIR/$1.log" >&2 || true
  exit 1
}

wait_until() { # wait_until NAME TIMEOUT CMD...
  local name="$1" timeout="$2"; shift 2
  local i
  for ((i = 0; i < timeout * 5; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    running "$name" || fail_component "$name" "exited"
    sleep 0.2
  done
  fail_component "$name" "did not become healthy within ${timeout}s"
}

start() { # start NAME BINARY ARGS...: runs it detached, logs and pid under .ladder/cluster
  local name="$1"; shift
  if running "$name"; then return 0; fi
  daemon "$PIDS/$name.pid" "$CLUSTER_DIR/$name.log" "$@"
  log "started $name (pid $(cat "$PIDS/$name.pid"))"
}

make_pki() {
  [[ -f $PKI/admin.crt ]] && return 0
  command -v openssl >/dev/null || die "openssl is required"
  mkdir -p "$PKI"
  log "creating the cluster PKI in ${PKI#"$LADDER_ROOT/"}"
  (
    cd "$PKI"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 \
      -subj "/CN=ladder-local-ca" 2>/dev/null
    # kube-rs uses rustls: the serving cert needs an IP SAN and must not be a CA.
    cat > apiserver.ext <<EXT
basicConstraints=CA:FALSE
keyUsage=digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:$FIRST_SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
EXT
    openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr -subj "/CN=kube-apiserver" 2>/dev/null
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out apiserver.crt \
      -days 3650 -extfile apiserver.ext 2>/dev/null
    printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' > client.ext
    openssl req -newkey rsa:2048 -nodes -keyout admin.key -out admin.csr -subj "/O=system:masters/CN=ladder-admin" 2>/dev/null
    openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out admin.crt \
      -days 3650 -extfile client.ext 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    rm -f ./*.csr
  )
}

write_kubeconfig() {
  local tmp="$KUBECONFIG_FILE.tmp"
  rm -f "$tmp"
  kubectl --kubeconfig "$tmp" config set-cluster ladder --server="https://127.0.0.1:$APISERVER_PORT" \
    --certificate-authority="$PKI/ca.crt" --embed-certs=true >/dev/null
  kubectl --kubeconfig "$tmp" config set-credentials ladder-admin --client-certificate="$PKI/admin.crt" \
    --client-key="$PKI/admin.key" --embed-certs=true >/dev/null
  kubectl --kubeconfig "$tmp" config set-context ladder --cluster=ladder --user=ladder-admin >/dev/null
  kubectl --kubeconfig "$tmp" config use-context ladder >/dev/null
  mv "$tmp" "$KUBECONFIG_FILE"
}

kwok_stages() {
  local src
  src="$(go env GOMODCACHE)/sigs.k8s.io/kwok@$KWOK_VERSION/kustomize/stage"
  [[ -d $src ]] || go mod download "sigs.k8s.io/kwok@$KWOK_VERSION" >/dev/null
  # kwok's own default stages, as its module ships them: nodes initialise and
  # heartbeat through Leases; pods become Ready, Job pods complete, deleted
  # pods go away.
  local f
  for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
           pod/fast/pod-delete.yaml; do
    echo "---"; cat "$src/$f"
  done
  # Except that pods labelled ladder.dev/job=migrate (the operator's migration
  # Jobs) are neither made Running nor completed: the e2e tests' local runner
  # (e2e/src/runner.rs) really runs them and writes their outcome, so a faked
  # completion can never pass for a migration. Deleting them still works.
  for f in pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml; do
    echo "---"
    awk '{ print } /^    matchExpressions:$/ && !done {
      print "    - key: '"'"'.metadata.labels[\"ladder.dev/job\"]'"'"'"
      print "      operator: '"'"'NotIn'"'"'"
      print "      values:"
      print "      - '"'"'migrate'"'"'"
      done = 1 }' "$src/$f"
  done
}

write_audit_policy() {
  cat > "$AUDIT_POLICY" <<'POLICY'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  # kwok's node heartbeats: a write per node every few seconds, never asked about.
  - level: None
    namespaces: ["kube-node-lease"]
    resources: [{group: coordination.k8s.io, resources: [leases]}]
  - level: Metadata
    verbs: ["create", "update", "patch", "delete", "deletecollection"]
  - level: None
POLICY
}

start_etcd() {
  start etcd "$LADDER_BIN/etcd" --name ladder --data-dir "$CLUSTER_DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "ladder=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync --quota-backend-bytes=4294967296 --log-level=warn
  wait_until etcd 30 curl -fsS "http://127.0.0.1:$ETCD_PORT/health"
}

start_apiserver() {
  write_audit_policy
  start kube-apiserver "$LADDER_BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$APISERVER_PORT" \
    --endpoint-reconciler-type none \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --client-ca-file "$PKI/ca.crt" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --authorization-mode RBAC --allow-privileged=true \
    --max-requests-inflight 800 --max-mutating-requests-inflight 400 \
    --audit-policy-file "$AUDIT_POLICY" --audit-log-path "$AUDIT_LOG" \
    --audit-log-format json --audit-log-mode blocking \
    --audit-log-maxsize 200 --audit-log-maxbackup 1 \
    --v=1
  wait_until kube-apiserver 90 apiserver_ready
}

# kube-controller-manager, kube-scheduler and kwok: the clients of the apiserver.
# The scheduler retries a pod it found unschedulable within 10 s (default 5 min): a pod
# created before the hostPath provisioner bound its claim ("unbound immediate
# PersistentVolumeClaims") was not always woken by the binding, and then waited the full
# 5 minutes (seen in `make bench`: one phase-3 ScalingPhase in eleven).
start_dependents() {
  start kube-controller-manager "$LADDER_BIN/kube-controller-manager" \
    --kubeconfig "$KUBECONFIG_FILE" \
    --authentication-kubeconfig "$KUBECONFIG_FILE" --authorization-kubeconfig "$KUBECONFIG_FILE" \
    --bind-address 127.0.0.1 --secure-port "$KCM_PORT" \
    --controllers '*' --leader-elect=false \
    --root-ca-file "$PKI/ca.crt" --service-account-private-key-file "$PKI/sa.key" \
    --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
    --enable-hostpath-provisioner=true \
    --kube-api-qps 200 --kube-api-burst 400 \
    --v=1
  wait_until kube-controller-manager 60 curl -fsSk "https://127.0.0.1:$KCM_PORT/healthz"

  start kube-scheduler "$LADDER_BIN/kube-scheduler" \
    --kubeconfig "$KUBECONFIG_FILE" \
    --authentication-kubeconfig "$KUBECONFIG_FILE" --authorization-kubeconfig "$KUBECONFIG_FILE" \
    --bind-address 127.0.0.1 --secure-port "$SCHEDULER_PORT" --leader-elect=false \
    --kube-api-qps 200 --kube-api-burst 400 \
    --pod-max-in-unschedulable-pods-duration 10s \
    --v=1
  wait_until kube-scheduler 60 curl -fsSk "https://127.0.0.1:$SCHEDULER_PORT/healthz"

  kwok_stages > "$CLUSTER_DIR/kwok.yaml"
  start kwok "$LADDER_BIN/kwok" --kubeconfig "$KUBECONFIG_FILE" --config "$CLUSTER_DIR/kwok.yaml" \
    --manage-all-nodes=true --node-ip 127.0.0.1 --node-lease-duration-seconds 40 \
    --server-address "127.0.0.1:$KWOK_PORT"
  wait_until kwok 30 curl -fsS "http://127.0.0.1:$KWOK_PORT/healthz"
}

cmd_up() {
  local t0=$SECONDS
  bash "$LADDER_ROOT/hack/build-k8s.sh"
  mkdir -p "$CLUSTER_DIR" "$PIDS"
  make_pki
  write_kubeconfig

  start_etcd
  start_apiserver

  start_dependents

  bash "$LADDER_ROOT/hack/cluster/nodes.sh" | kc apply -f - >/dev/null
  kc apply -f "$LADDER_ROOT/hack/cluster/storage.yaml" >/dev/null
  kc wait --for=condition=Ready node --all --timeout=90s >/dev/null \
    || fail_component kwok "did not make the nodes Ready"
  local i
  for ((i = 0; i < 150; i++)); do
    kc -n default get serviceaccount default >/dev/null 2>&1 && break
    sleep 0.2
  done
  kc -n default get serviceaccount default >/dev/null 2>&1 \
    || fail_component kube-controller-manager "did not create serviceaccount/default"
  log "control plane up in $((SECONDS - t0))s; export KUBECONFIG=${KUBECONFIG_FILE#"$LADDER_ROOT/"}"
}

stop_component() { # stop_component NAME: SIGTERM, then SIGKILL after 10 s
  local name="$1" pid
  [[ -f $PIDS/$name.pid ]] || return 0
  pid="$(cat "$PIDS/$name.pid")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
    log "stopped $name (pid $pid)"
  fi
}

cmd_down() {
  local i
  for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
    stop_component "${COMPONENTS[$i]}"
  done
  rm -rf "$CLUSTER_DIR"
}

# Only the two components a control-plane fault test takes away; starting one
# again restarts the apiserver's clients too (see cmd_start).
faultable() {
  case "${1:-}" in
    etcd|kube-apiserver) ;;
    *) echo "usage: $0 stop|start etcd|kube-apiserver" >&2; exit 2 ;;
  esac
  [[ -f $KUBECONFIG_FILE ]] || die "no cluster in ${CLUSTER_DIR#"$LADDER_ROOT/"}: run \`$0 up\` first"
}

cmd_stop() {
  faultable "$1"
  stop_component "$1"
  rm -f "$PIDS/$1.pid"
}

cmd_start() {
  faultable "$1"
  # Keep the log of the run that was stopped.
  [[ -f $CLUSTER_DIR/$1.log ]] && mv "$CLUSTER_DIR/$1.log" "$CLUSTER_DIR/$1.log.prev"
  case "$1" in
    etcd) start_etcd ;;
    kube-apiserver) start_apiserver ;;
  esac
  # The apiserver's clients are restarted too: they do not always recover
  # from an outage under load (seen: kube-controller-manager's ReplicaSet
  # controller stuck on "read version ... is not as new as written version",
  # so no Pod of a new StatefulSet ever appeared and every later test
  # failed). The fault tests are about the operator, which is not restarted.
  wait_until kube-apiserver 90 apiserver_ready
  local name
  for name in kwok kube-scheduler kube-controller-manager; do
    stop_component "$name"
    rm -f "$PIDS/$name.pid"
  done
  start_dependents
}

cmd_status() {
  local name
  for name in "${COMPONENTS[@]}"; do
    if running "$name"; then printf '%-24s up (pid %s)\n' "$name" "$(cat "$PIDS/$name.pid")"
    else printf '%-24s down\n' "$name"; fi
  done
  if [[ -f $KUBECONFIG_FILE ]] && apiserver_ready; then kc get nodes -L topology.kubernetes.io/region,topology.kubernetes.io/zone; fi
}

mkdir -p "$LADDER_STATE"
case "${1:-}" in
  up|down) exec flock -o "$LADDER_STATE/cluster.lock" "$0" "__$1" ;;
  stop|start) exec flock -o "$LADDER_STATE/cluster.lock" "$0" "__$1" "${2:-}" ;;
  __up) cmd_up ;;
  __down) cmd_down ;;
  __stop) cmd_stop "$2" ;;
  __start) cmd_start "$2" ;;
  status) cmd_status ;;
  *) echo "usage: $0 up|down|status|stop NAME|start NAME" >&2; exit 2 ;;
esac
