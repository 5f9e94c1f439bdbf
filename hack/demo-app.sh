#!/usr/bin/env bash
# The companion app on two tiers, on loopback: phase 0 (embedded SQLite, no
# configuration at all) and phase 1 (PostgreSQL through PgBouncer + Redis from
# hack/services.sh). For each: create a link, follow the redirect, show the
# load the app reports. Called by hack/demo.sh.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
cd "$LADDER_ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$LADDER_CACHE/target}"
PORT="${LADDER_DEMO_APP_PORT:-18090}"
APP_DIR="$LADDER_STATE/demo-app"

log "building ladder-app"
cargo build -q -p ladder-app --locked
APP="$CARGO_TARGET_DIR/debug/ladder-app"
mkdir -p "$APP_DIR"

pid=""
stop_app() { [[ -n $pid ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; pid=""; }
trap stop_app EXIT

run_tier() { # run_tier TITLE ENV...
  local title="$1"; shift
  echo
  log "$title"
  ( cd "$APP_DIR" && exec env -i PATH="$PATH" HOME="$HOME" LADDER_LISTEN="127.0.0.1:$PORT" "$@" \
      "$APP" serve ) >"$APP_DIR/app.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null || { tail -20 "$APP_DIR/app.log"; die "ladder-app did not become ready"; }
  echo "\$ curl -X POST /api/v1/links -d '{\"url\":\"https://example.com/roadmap\"}'"
  local created code
  created="$(curl -fsS -X POST -H 'content-type: application/json' \
    -d '{"url":"https://example.com/roadmap"}' "http://127.0.0.1:$PORT/api/v1/links")"
  echo "$created"
  code="$(printf '%s' "$created" | sed -n 's/.*"code":"\([^"]*\)".*/\1/p')"
  echo "\$ curl -I /$code"
  curl -sS -o /dev/null -D - "http://127.0.0.1:$PORT/$code" | grep -iE '^(HTTP|location|cache-control|etag)'
  echo "\$ curl /load"
  curl -fsS "http://127.0.0.1:$PORT/load"; echo
  stop_app
}

run_tier "phase 0: ladder-app serve with no configuration (SQLite in a local file)"

set -a; source "$LADDER_STATE/services.env"; set +a
run_tier "phase 1: PostgreSQL through PgBouncer (transaction pooling) + Redis cache" \
  LADDER_PHASE=1 LADDER_STORE="pgbouncer:$LADDER_PGBOUNCER_URL" LADDER_REDIS_URL="$LADDER_REDIS_URL" \
  LADDER_REDIS_PREFIX="demo:"
