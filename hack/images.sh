#!/usr/bin/env bash
# `make images`: builds the ladder-operator and ladder-app container images
# without a Docker daemon, into OCI image layouts under .ladder/images/<name>
# (tag = the workspace version).
#
# Why not `docker build`: CI and developer machines here have no daemon and
# no registry to pull a builder image from. The final stage of each
# deploy/images/<name>.Dockerfile is `FROM scratch` plus a static binary, so
# it needs no base image at all: this script builds the same static (musl)
# binary on the host and assembles the stage with umoci (Debian's package),
# taking USER, EXPOSE, ENTRYPOINT, CMD and LABEL from the Dockerfile itself so
# the two cannot drift. e2e/tests/images.rs unpacks the result and runs it.
#
# Push one with skopeo (not needed here):
#   skopeo copy oci:.ladder/images/ladder-operator:0.1.0 docker://ghcr.io/ladder-dev/ladder-operator:0.1.0
#
# Usage: hack/images.sh [NAME...]   (default: ladder-operator ladder-app)
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
cd "$LADDER_ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$LADDER_CACHE/target}"
TARGET=x86_64-unknown-linux-musl
# ring and SQLite (bundled) compile C; musl-gcc makes that static too.
export CC_x86_64_unknown_linux_musl="${CC_x86_64_unknown_linux_musl:-musl-gcc}"

command -v umoci >/dev/null || die "umoci is missing: run hack/toolchain.sh"
command -v musl-gcc >/dev/null || die "musl-gcc is missing: run hack/toolchain.sh"
rustup target list --installed | grep -qx "$TARGET" || rustup target add "$TARGET" >/dev/null
# chown of the rootfs and umoci's unpack keep ownership: root makes that simple.
[[ $(id -u) == 0 ]] || die "hack/images.sh runs umoci as root (ownership of the image files)"

# The workspace version names every image; the Dockerfiles, the chart and the
# CRD's default app image must agree with it (e2e/tests/images.rs checks).
VERSION="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)"
[[ -n $VERSION ]] || die "no version in Cargo.toml's [workspace.package]"
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
[[ -f $CA_BUNDLE ]] || die "$CA_BUNDLE is missing (Debian's ca-certificates)"

names=("$@"); (( ${#names[@]} )) || names=(ladder-operator ladder-app)
pkgs=(); for n in "${names[@]}"; do pkgs+=(-p "$n"); done
log "building ${names[*]} $VERSION for $TARGET (release, static)"
run_with_heartbeat "cargo build --release --target $TARGET" "$LADDER_STATE/images-build.log" \
  cargo build --release --locked --target "$TARGET" "${pkgs[@]}"

# final_stage FILE: the lines after the last FROM, with continuation lines joined.
final_stage() {
  sed -e ':a' -e '/\\$/N; s/\\\n//; ta' "$1" | awk '/^FROM /{buf=""; next} {buf = buf $0 "\n"} END {printf "%s", buf}'
}
# json_array_to_args '["a","b"]': prints a, b one per line (the exec form only).
json_array_to_args() {
  local s="$1"
  [[ $s == \[*\] ]] || die "only the exec (JSON array) form is supported: $s"
  s="${s#[}"; s="${s%]}"
  while [[ $s =~ ^[[:space:]]*\"([^\"]*)\"[[:space:]]*,?(.*)$ ]]; do
    printf '%s\n' "${BASH_REMATCH[1]}"; s="${BASH_REMATCH[2]}"
  done
}

mkdir -p "$LADDER_STATE/images"
for name in "${names[@]}"; do
  dockerfile="deploy/images/$name.Dockerfile"
  [[ -f $dockerfile ]] || die "$dockerfile is missing"
  df_version="$(sed -n 's/^ARG VERSION=\(.*\)$/\1/p' "$dockerfile" | head -1)"
  [[ $df_version == "$VERSION" ]] || die "$dockerfile says VERSION=$df_version, Cargo.toml says $VERSION"
  layout="$LADDER_STATE/images/$name"
  work="$(mktemp -d)"
  rm -rf "$layout"
  umoci init --layout "$layout"
  umoci new --image "$layout:$VERSION"
  umoci unpack --image "$layout:$VERSION" "$work/bundle" >/dev/null
  root="$work/bundle/rootfs"
  # The files of the Dockerfile's final stage (its COPY lines name the same paths).
  install -D -m 0644 "$CA_BUNDLE" "$root/etc/ssl/certs/ca-certificates.crt"
  printf 'nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin\n' > "$root/etc/passwd"
  printf 'nonroot:x:65532:\n' > "$root/etc/group"
  chmod 0644 "$root/etc/passwd" "$root/etc/group"
  # Stripped: symbols are for debugging a build, not for running it.
  install -s -m 0755 "$CARGO_TARGET_DIR/$TARGET/release/$name" "$root/$name"
  umoci repack --image "$layout:$VERSION" "$work/bundle" >/dev/null

  cfg=(--architecture amd64 --os linux --config.workingdir /
       --author "Ladder" --history.created_by "hack/images.sh from $dockerfile")
  while IFS= read -r line; do
    case "$line" in
      "USER "*) cfg+=(--config.user "${line#USER }") ;;
      "EXPOSE "*) for p in ${line#EXPOSE }; do cfg+=(--config.exposedports "$p"); done ;;
      "ENTRYPOINT "*) cfg+=(--clear config.entrypoint)
                      while IFS= read -r a; do cfg+=(--config.entrypoint "$a"); done < <(json_array_to_args "${line#ENTRYPOINT }") ;;
      "CMD "*) cfg+=(--clear config.cmd)
               while IFS= read -r a; do cfg+=(--config.cmd "$a"); done < <(json_array_to_args "${line#CMD }") ;;
      "LABEL "*)
        kv="${line#LABEL }"
        [[ $kv =~ ^([A-Za-z0-9._-]+)=\"(.*)\"$ ]] || die "$dockerfile: one LABEL key=\"value\" per line: $line"
        value="${BASH_REMATCH[2]//\$\{VERSION\}/$VERSION}"
        cfg+=(--config.label "${BASH_REMATCH[1]}=$value")
        # The same as manifest annotations, where registries show them.
        cfg+=(--manifest.annotation "${BASH_REMATCH[1]}=$value") ;;
      "COPY "*|"ARG "*|"") ;;
      *) die "$dockerfile: hack/images.sh does not understand this final-stage line: $line" ;;
    esac
  done < <(final_stage "$dockerfile")
  umoci config --image "$layout:$VERSION" "${cfg[@]}"
  umoci gc --layout "$layout"
  rm -rf "$work"
  size="$(du -sb "$layout/blobs" | cut -f1)"
  log "$name:$VERSION -> $layout ($(( size / 1024 )) KiB of blobs)"
done
