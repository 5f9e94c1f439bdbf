#!/usr/bin/env bash
# Packs kubectl-ladder for krew and writes its manifest.
#
#   hack/krew.sh [--bin PATH] [--out DIR] [--write]
#
# Builds the static release binary (x86_64-unknown-linux-musl, so one archive
# runs on every amd64 Linux) unless --bin names one, packs it reproducibly
# (sorted, owner 0, mtime 0, gzip without a name or time) into
# DIR/kubectl-ladder_v<version>_linux_amd64.tar.gz (DIR defaults to
# .ladder/krew), and writes DIR/ladder.yaml: deploy/krew/ladder.yaml with the
# archive's sha256. With --write the sha256 goes into deploy/krew/ladder.yaml
# itself: the release step, after which that archive is uploaded to the
# release the manifest's uri names. Prints the archive and manifest paths.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
cd "$LADDER_ROOT"

bin="" out="$LADDER_STATE/krew" write=0
while (( $# )); do
  case "$1" in
    --bin) bin="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --write) write=1; shift ;;
    *) die "unknown argument $1 (see the header of $0)" ;;
  esac
done

VERSION="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)"
[[ -n $VERSION ]] || die "no version in Cargo.toml's [workspace.package]"
manifest=deploy/krew/ladder.yaml
grep -q "^  version: v$VERSION\$" "$manifest" \
  || die "$manifest's spec.version is not v$VERSION (the workspace version)"

if [[ -z $bin ]]; then
  TARGET=x86_64-unknown-linux-musl
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$LADDER_CACHE/target}"
  export CC_x86_64_unknown_linux_musl="${CC_x86_64_unknown_linux_musl:-musl-gcc}"
  rustup target list --installed | grep -qx "$TARGET" || rustup target add "$TARGET" >/dev/null
  mkdir -p "$LADDER_STATE"
  run_with_heartbeat "cargo build --release --target $TARGET -p kubectl-ladder" "$LADDER_STATE/krew-build.log" \
    cargo build --release --locked --target "$TARGET" -p kubectl-ladder
  bin="$CARGO_TARGET_DIR/$TARGET/release/kubectl-ladder"
fi
[[ -x $bin ]] || die "no executable at $bin"

mkdir -p "$out"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
install -m 0755 "$bin" "$stage/kubectl-ladder"
archive="$out/kubectl-ladder_v${VERSION}_linux_amd64.tar.gz"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$stage" -cf - kubectl-ladder \
  | gzip -n -9 > "$archive"
sha="$(sha256sum "$archive" | cut -d' ' -f1)"
sed -E "s/^(    sha256: ).*/\1$sha/" "$manifest" > "$out/ladder.yaml"
grep -q "sha256: $sha" "$out/ladder.yaml" || die "no sha256 line in $manifest"
if (( write )); then
  cp "$out/ladder.yaml" "$manifest"
  log "wrote sha256 $sha into $manifest: upload $archive to the v$VERSION release"
fi
echo "$archive"
echo "$out/ladder.yaml"
