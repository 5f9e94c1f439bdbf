#!/usr/bin/env bash
# Builds krew (the kubectl plugin manager) from the Go module proxy into a
# versioned cache folder outside the clone; does nothing when it is there.
# Prints the binary's path. The plugin test installs kubectl-ladder with it
# from deploy/krew/ladder.yaml.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
KREW_VERSION="${KREW_VERSION:-v0.4.3}"
dir="$LADDER_CACHE/bin/krew-$KREW_VERSION"
if [[ ! -x $dir/krew ]]; then
  mkdir -p "$dir/.tmp" "$LADDER_CACHE/logs"
  log "building krew $KREW_VERSION into $dir (a few minutes, once)"
  run_with_heartbeat "build krew $KREW_VERSION" "$LADDER_CACHE/logs/build-krew.log" \
    env GOBIN="$dir/.tmp" go install "sigs.k8s.io/krew/cmd/krew@$KREW_VERSION"
  mv "$dir/.tmp/krew" "$dir/krew" && rmdir "$dir/.tmp"
fi
echo "$dir/krew"
