#!/usr/bin/env bash
# Builds etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok
# (and a kubectl of the same version) from the Go module proxy into $LADDER_BIN (outside the clone, keyed by
# versions). Does nothing when they are already there.
#
# A cold build (empty Go module and build caches) took 10 minutes on 2 cores
# (2026-12-01); it prints progress every 30 s.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"

BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok)

missing=()
for b in "${BINARIES[@]}"; do [[ -x "$LADDER_BIN/$b" ]] || missing+=("$b"); done
if (( ${#missing[@]} == 0 )); then
  log "control-plane binaries present in $LADDER_BIN"
  exit 0
fi

command -v go >/dev/null || die "go is required to build the control plane (Go 1.26 is expected on this machine)"
mkdir -p "$LADDER_BIN" "$LADDER_CACHE/logs"
log "building ${missing[*]} into $LADDER_BIN"
log "a cold build takes about 10 minutes on 2 cores; warm runs skip this step"

ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION \
-X k8s.io/component-base/version.gitMajor=$(echo "$K8S_VERSION" | cut -d. -f1 | tr -d v) \
-X k8s.io/component-base/version.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2) \
-X k8s.io/component-base/version.gitTreeState=clean \
-X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"

# Build into a temp name and rename, so an interrupted build never leaves a
# half-written binary that the next run would take as done.
build_one() {
  local name="$1" pkg="$2"
  ( cd "$LADDER_ROOT/hack/k8s" && go build -mod=readonly -trimpath -ldflags "$ldflags" -o "$LADDER_BIN/.$name.tmp" "$pkg" ) \
    && mv "$LADDER_BIN/.$name.tmp" "$LADDER_BIN/$name"
}

build_kwok() {
  GOBIN="$LADDER_BIN/.kwok-tmp" go install "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" \
    && mv "$LADDER_BIN/.kwok-tmp/kwok" "$LADDER_BIN/kwok" && rmdir "$LADDER_BIN/.kwok-tmp"
}

for b in "${missing[@]}"; do
  logfile="$LADDER_CACHE/logs/build-$b.log"
  case "$b" in
    etcd) run_with_heartbeat "build etcd $ETCD_VERSION" "$logfile" build_one etcd ./cmd/etcd ;;
    kwok) run_with_heartbeat "build kwok $KWOK_VERSION" "$logfile" build_kwok ;;
    *)    run_with_heartbeat "build $b $K8S_VERSION" "$logfile" build_one "$b" "k8s.io/kubernetes/cmd/$b" ;;
  esac
done

# kwok's default stages ship in its module; keep a copy beside the binaries.
stages="$(go env GOMODCACHE)/sigs.k8s.io/kwok@$KWOK_VERSION/kustomize/stage"
if [[ ! -d "$stages" ]]; then
  go mod download "sigs.k8s.io/kwok@$KWOK_VERSION" >/dev/null
fi
log "control-plane binaries ready in $LADDER_BIN"
