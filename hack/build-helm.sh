#!/usr/bin/env bash
# Builds helm from the Go module proxy into a versioned cache folder outside
# the clone; does nothing when it is there. Prints the binary's path.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
dir="$LADDER_CACHE/bin/helm-$HELM_VERSION"
if [[ ! -x $dir/helm ]]; then
  mkdir -p "$dir/.tmp" "$LADDER_CACHE/logs"
  log "building helm $HELM_VERSION into $dir (a few minutes, once)"
  run_with_heartbeat "build helm $HELM_VERSION" "$LADDER_CACHE/logs/build-helm.log" \
    env GOBIN="$dir/.tmp" go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  mv "$dir/.tmp/helm" "$dir/helm" && rmdir "$dir/.tmp"
fi
echo "$dir/helm"
