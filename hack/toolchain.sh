#!/usr/bin/env bash
# Installs the Debian packages Ladder's scripts and tests use, when missing:
# the data services (PostgreSQL 15, PgBouncer, Redis, ClickHouse, Varnish),
# openssl and curl for the control plane, wrk for benchmarks, perf (linux-perf)
# to profile them (see bench/app.md); for the images
# (hack/images.sh) umoci and musl-tools plus Rust's musl target; promtool
# (Debian's prometheus) for the alert rules in deploy/observability/.
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
  [[ -x ${pair#*:} ]] || need+=("${pair%%:*}")
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
# Static release binaries for the images (hack/images.sh).
rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl || rustup target add x86_64-unknown-linux-musl >/dev/null
rustup component list --installed 2>/dev/null | grep -q clippy || rustup component add clippy rustfmt >/dev/null 2>&1 || true
log "toolchain ready"
