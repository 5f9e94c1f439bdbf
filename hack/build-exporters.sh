#!/usr/bin/env bash
# Builds the data-tier Prometheus exporters (the sidecars that
# operator/src/render/exporters.rs renders) from the Go module proxy, each
# into a versioned cache folder outside the clone,
# $LADDER_CACHE/bin/<name>-<version>/<name>; does nothing for one that is
# there. The versions are not written here: they are the image tags of the
# catalogue (crds/src/catalogue.rs), read at build time, so the tests run the
# program a cluster would pull. operator/tests/rendered_config_runs.rs checks
# it again on the running exporter (its *_build_info version against the
# catalogue), so a stale binary or a LADDER_* override cannot drift either.
#
#   hack/build-exporters.sh NAME   builds one (postgres_exporter,
#                                  pgbouncer_exporter, redis_exporter) and
#                                  prints its path
#   hack/build-exporters.sh        builds all; prints `export LADDER_<NAME>=…`
#                                  lines for `eval` (hack/test.sh)
#
# A version the module proxy does not serve (it answers 403/404 for it) is
# not an error of the build: exit 3 for one, a warning and no line for all,
# and the tests say which exporter they could not run. Any other failure
# (download, checksum, compile) exits 1 with the log's tail.
#
# Go's module and build caches live under $LADDER_CACHE/go, beside the
# binaries, so a fresh clone reuses them and the machine's own are left
# alone. The version is stamped in as the projects' own release builds do
# (promu's -X …/version.Version; redis_exporter's main.BuildVersion), so the
# exporters report it in --version and in their build_info metric.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
CATALOGUE="$LADDER_ROOT/crds/src/catalogue.rs"

export GOMODCACHE="$LADDER_CACHE/go/mod" GOCACHE="$LADDER_CACHE/go/build"
# -modcacherw: the module cache can be deleted with rm -rf.
export GOFLAGS="-modcacherw" CGO_ENABLED=0

# name | catalogue constant | module | package (in the module) | version ldflag | pinned h1: sum
EXPORTERS=(
  "postgres_exporter|POSTGRES_EXPORTER|github.com/prometheus-community/postgres_exporter|/cmd/postgres_exporter|github.com/prometheus/common/version.Version=@V@||"
  "pgbouncer_exporter|PGBOUNCER_EXPORTER|github.com/prometheus-community/pgbouncer_exporter||github.com/prometheus/common/version.Version=@V@||"
  # The checksum database, as this machine reaches it, has no entry for
  # redis_exporter (it answers 404), so Go cannot verify the download there;
  # the sum below was taken from the proxy's v1.74.0 and is checked instead,
  # so a later download that differs is refused. A new version needs its sum
  # here (the error prints it).
  "redis_exporter|REDIS_EXPORTER|github.com/oliver006/redis_exporter||main.BuildVersion=v@V@|v1.74.0=h1:/ESQZa3xqpQxiQmk4tpo90Y8gPWLpYVF6E5SR262KtM="
)

# The tag of catalogue constant $1: `pub const NAME: &str = "image:vX.Y.Z";`.
catalogue_version() {
  local v
  v="$(sed -n "s/^[[:space:]]*pub const $1: &str = \"[^\"]*:\(v[0-9][^\"]*\)\";/\1/p" "$CATALOGUE")"
  [[ -n $v ]] || die "no image tag for $1 in $CATALOGUE"
  echo "$v"
}

# build NAME: prints the binary's path; returns 3 when the proxy does not
# serve the catalogue's version.
build() {
  local name="$1" row const module pkg ldflag pinned version dir json err sum
  for row in "${EXPORTERS[@]}"; do
    [[ ${row%%|*} == "$name" ]] && break
    row=""
  done
  [[ -n $row ]] || die "unknown exporter $name (one of: postgres_exporter pgbouncer_exporter redis_exporter)"
  IFS='|' read -r _ const module pkg ldflag pinned <<<"$row"
  version="$(catalogue_version "$const")"
  dir="$LADDER_CACHE/bin/$name-$version"
  if [[ -x $dir/$name ]]; then
    echo "$dir/$name"
    return 0
  fi
  mkdir -p "$LADDER_CACHE/logs"
  local goenv=()
  if [[ -n $pinned ]]; then
    goenv=(GONOSUMDB="$module")
  fi
  # Outside any module, so no go.mod is needed or touched.
  json="$(cd /tmp && env "${goenv[@]}" go mod download -json "$module@$version" 2>&1 || true)"
  err="$(sed -n 's/^[[:space:]]*"Error": "\(.*\)",\{0,1\}$/\1/p' <<<"$json")"
  if [[ -n $err ]]; then
    if grep -Eq '/@v/[^ ]*: (403|404|410) ' <<<"$err"; then
      warn "$name: the Go module proxy does not serve $module@$version, the catalogue's version ($const); not built (${err##*server response: })"
      return 3
    fi
    die "$name: go mod download $module@$version failed: $err"
  fi
  sum="$(sed -n 's/^[[:space:]]*"Sum": "\(.*\)",$/\1/p' <<<"$json")"
  if [[ -n $pinned ]]; then
    [[ ${pinned%%=*} == "$version" && $sum == "${pinned#*=}" ]] ||
      die "$name: $module@$version has sum $sum; hack/build-exporters.sh pins ${pinned} (a new version needs its sum there, checked against a trusted source)"
  fi
  local src
  src="$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p' <<<"$json")"
  [[ -d $src ]] || die "$name: go mod download gave no folder for $module@$version"
  mkdir -p "$dir/.tmp"
  log "building $name $version into $dir (a minute or two, once)"
  # In the module's folder with its own go.sum (read-only), not `go install
  # pkg@version`: that also asks the proxy for the module's version list,
  # which it refuses here.
  run_with_heartbeat "build $name $version" "$LADDER_CACHE/logs/build-$name.log" \
    env -C "$src" "${goenv[@]}" go build -mod=readonly -trimpath \
      -ldflags "-s -w -X ${ldflag//@V@/${version#v}}" -o "$dir/.tmp/$name" ".$pkg" ||
    die "$name: building $module$pkg@$version failed (log: $LADDER_CACHE/logs/build-$name.log)"
  mv "$dir/.tmp/$name" "$dir/$name" && rmdir "$dir/.tmp"
  echo "$dir/$name"
}

command -v go >/dev/null || die "go is required and not on PATH"
if (( $# )); then
  build "$1"
  exit
fi
for row in "${EXPORTERS[@]}"; do
  name="${row%%|*}"
  rc=0
  path="$(build "$name")" || rc=$?
  case $rc in
    0) var="LADDER_$(tr '[:lower:]' '[:upper:]' <<<"$name")"; echo "export $var=$path" ;;
    3) ;;
    *) exit "$rc" ;;
  esac
done
