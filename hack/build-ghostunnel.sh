#!/usr/bin/env bash
# Builds ghostunnel (the edge pod's TLS-origination sidecar) from the Go module
# proxy into a versioned cache folder outside the clone; does nothing when it
# is there. Prints the binary's path. The version is the catalogue's image tag
# (ladder_crds::catalogue::images::GHOSTUNNEL), so the edge tests run the same
# program, with the arguments the operator renders, as a cluster would.
#
# Not `go install pkg@version`: that also asks the proxy for the module's
# version list, which it refuses for ghostunnel; downloading the one version
# and building in its folder needs only that version. With cgo: v1.8.4's
# no-cgo PKCS#11 stub does not compile.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
GHOSTUNNEL_VERSION="${GHOSTUNNEL_VERSION:-v1.8.4}"
dir="$LADDER_CACHE/bin/ghostunnel-$GHOSTUNNEL_VERSION"
build() {
  local src
  # Outside any module: `go mod download` then needs no go.mod.
  src="$(cd /tmp && go mod download -json "github.com/ghostunnel/ghostunnel@$GHOSTUNNEL_VERSION" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  [[ -d $src ]] || { echo "go mod download gave no folder" >&2; return 1; }
  cd "$src" && CGO_ENABLED=1 go build -mod=mod -trimpath -o "$dir/.tmp/ghostunnel" .
}
if [[ ! -x $dir/ghostunnel ]]; then
  mkdir -p "$dir/.tmp" "$LADDER_CACHE/logs"
  log "building ghostunnel $GHOSTUNNEL_VERSION into $dir (a few minutes, once)"
  run_with_heartbeat "build ghostunnel $GHOSTUNNEL_VERSION" "$LADDER_CACHE/logs/build-ghostunnel.log" build
  mv "$dir/.tmp/ghostunnel" "$dir/ghostunnel" && rmdir "$dir/.tmp"
fi
echo "$dir/ghostunnel"
