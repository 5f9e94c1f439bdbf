#!/usr/bin/env bash
# Installs the Debian packages Ladder's scripts and tests use, when missing:
# the data services (PostgreSQL 15, PgBouncer, Redis, ClickHouse, Varnish),
# openssl and curl for the control plane, wrk for benchmarks, perf (linux-perf)
# to profile them (see bench/app.md); for the images
# (hack/images.sh) umoci and musl-tools plus Rust's musl target; promtool
# (Debian's prometheus) for the alert rules in deploy/observability/; a venv
# with PyPI's chdb-core (ClickHouse's current engine, for the app's SQL).
# Rust and Go are expected on the machine (they are on this kind of machine).
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"

need=()
for pair in postgresql-15:/usr/lib/postgresql/15/bin/postgres pgbouncer:/usr/sbin/pgbouncer \
            redis-server:/usr/bin/redis-server redis-tools:/usr/bin/redis-cli \
            clickhouse-server:/usr/sbin/clickhouse-server varnish:/usr/sbin/varnishd \
            openssl:/usr/bin/openssl curl:/usr/bin/curl wrk:/usr/bin/wrk sqlite3:/usr/bin/sqlite3 \
            linux-perf:/usr/bin/perf \
            postgresql-client-15:/usr/lib/postgresql/15/bin/pgbench \
            umoci:/usr/bin/umoci musl-tools:/usr/bin/musl-gcc prometheus:/usr/bin/promtool \
            ca-certificates:/etc/ssl/certs/ca-certificates.crt; do
  # -e, not -x: ca-certificates' bundle is a plain file.
  [[ -e ${pair#*:} ]] || need+=("${pair%%:*}")
done
for tool in cargo go; do command -v "$tool" >/dev/null || die "$tool is required and not on PATH"; done
if (( ${#need[@]} )); then
  log "installing from Debian: ${need[*]}"
  sudo=""; [[ $(id -u) == 0 ]] || sudo=sudo
  # Package scripts must not start system-wide copies of these services.
  $sudo bash -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d'
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# chDB: ClickHouse's current engine in-process (PyPI's chdb-core), in a venv of
# our own. app/tests/clickhouse_engines.rs runs the app's ClickHouse statements
# on it beside Debian's 18.16 server. The pin is the venv's name: a new version
# gets a fresh venv.
CHDB_VERSION="${CHDB_VERSION:-26.9.0}"
CHDB_VENV="$LADDER_CACHE/chdb-$CHDB_VERSION"
if [[ ! -f $CHDB_VENV/.installed ]] || ! "$CHDB_VENV/bin/python" -c 'import chdb' 2>/dev/null; then
  command -v python3 >/dev/null || die "python3 is required (for the chDB venv) and not on PATH"
  log "installing chdb-core $CHDB_VERSION into $CHDB_VENV"
  rm -rf "$CHDB_VENV"
  python3 -m venv "$CHDB_VENV"
  "$CHDB_VENV/bin/python" -m pip install -q "chdb-core==$CHDB_VERSION"
  touch "$CHDB_VENV/.installed"
fi
# The tests find it here, whatever the version.
ln -sfn "chdb-$CHDB_VERSION" "$LADDER_CACHE/chdb"
# Static release binaries for the images (hack/images.sh).
rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl || rustup target add x86_64-unknown-linux-musl >/dev/null
rustup component list --installed 2>/dev/null | grep -q clippy || rustup component add clippy rustfmt >/dev/null 2>&1 || true
log "toolchain ready"
