#!/usr/bin/env bash
# `make bench-app`: ladder-app's redirects (cache hit and miss) and link
# creation per tier, each beside its ceiling measured in the same run:
#   HTTP path  - a minimal hyper server answering a fixed 302 (app/examples/hello.rs)
#   DB path    - pgbench -S (reads) and -N (writes) through the same PgBouncer
#   cache path - redis-benchmark GET on the same Redis
# Load comes from oha (crates.io) on loopback, bounded in time; results go to
# bench/app.md (raw JSON in bench/tmp/).
#
# Knobs: BENCH_SECONDS (default 10), BENCH_CONNECTIONS (default 32).
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
cd "$LADDER_ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$LADDER_CACHE/target}"
SECS="${BENCH_SECONDS:-10}"
CONC="${BENCH_CONNECTIONS:-32}"
OHA_VERSION=1.16.0
OHA="$LADDER_CACHE/oha-$OHA_VERSION/bin/oha"
TMP="$LADDER_ROOT/bench/tmp"
OUT="$LADDER_ROOT/bench/app.md"
HELLO_PORT=18181
APP_PORT=18182
mkdir -p "$TMP"

bash hack/services.sh up >/dev/null
set -a; source "$LADDER_STATE/services.env"; set +a
PG_BIN=/usr/lib/postgresql/15/bin
PGBOUNCER_PORT="${LADDER_PGBOUNCER_URL##*:}"; PGBOUNCER_PORT="${PGBOUNCER_PORT%%/*}"
PRIMARY_PORT="${LADDER_PG_PRIMARY_URL##*:}"; PRIMARY_PORT="${PRIMARY_PORT%%/*}"

if [[ ! -x $OHA ]]; then
  run_with_heartbeat "cargo install oha $OHA_VERSION" "$TMP/oha-install.log" \
    cargo install "oha@$OHA_VERSION" --locked --root "$LADDER_CACHE/oha-$OHA_VERSION"
fi
log "building ladder-app and the hello ceiling (release)"
cargo build -q --release -p ladder-app --locked --bin ladder-app --example hello
APP="$CARGO_TARGET_DIR/release/ladder-app"
HELLO="$CARGO_TARGET_DIR/release/examples/hello"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

wait_http() { for _ in $(seq 100); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done; die "$1 did not answer"; }

# oha_run NAME ARGS... : runs oha for SECS seconds, keeps its JSON summary.
oha_run() {
  local name="$1"; shift
  local file="$TMP/$(printf '%s' "$name" | tr -c 'A-Za-z0-9+-' '_').json"
  "$OHA" --no-tui --output-format json -z "${SECS}s" -c "$CONC" --redirect 0 "$@" > "$file"
  python3 - "$file" "$name" >> "$TMP/results.tsv" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
s, p = d["summary"], d["latencyPercentiles"]
codes = d.get("statusCodeDistribution", {})
ok = sum(v for k, v in codes.items() if k.startswith(("2", "3")))
total = sum(codes.values()) or 1
print(f"{sys.argv[2]}\t{s['requestsPerSec']:.0f}\t{p['p50']*1000:.2f}\t{p['p99']*1000:.2f}\t{ok/total:.4f}")
PY
  log "$(tail -n1 "$TMP/results.tsv" | awk -F'\t' '{printf "%-34s %8s req/s  p50 %s ms  p99 %s ms  ok %s", $1, $2, $3, $4, $5}')"
}

start_app() { # start_app ENV...
  env -i PATH="$PATH" HOME="$HOME" LADDER_LISTEN="127.0.0.1:$APP_PORT" RUST_LOG=warn "$@" "$APP" serve \
    >"$TMP/app.log" 2>&1 &
  APP_PID=$!; pids+=("$APP_PID")
  wait_http "http://127.0.0.1:$APP_PORT/readyz"
}
stop_app() { kill "$APP_PID" 2>/dev/null || true; wait "$APP_PID" 2>/dev/null || true; }
new_link() {
  curl -fsS -X POST -H 'content-type: application/json' -d '{"url":"https://example.com/bench"}' \
    "http://127.0.0.1:$APP_PORT/api/v1/links" | python3 -c 'import json,sys; print(json.load(sys.stdin)["code"])'
}

: > "$TMP/results.tsv"
log "ceiling: minimal hyper server"
"$HELLO" "127.0.0.1:$HELLO_PORT" & pids+=($!)
wait_http "http://127.0.0.1:$HELLO_PORT/x" || true
oha_run "hyper hello (ceiling)" "http://127.0.0.1:$HELLO_PORT/x"

bench_tier() { # bench_tier LABEL STORE PHASE [CACHE ENV...]
  local label="$1" store="$2" phase="$3"; shift 3
  rm -f "$TMP/bench.db"
  start_app LADDER_STORE="$store" LADDER_PHASE="$phase" "$@"
  local code; code="$(new_link)"
  curl -fsS -o /dev/null "http://127.0.0.1:$APP_PORT/$code" || true
  oha_run "$label redirect (cache hit)" "http://127.0.0.1:$APP_PORT/$code"
  oha_run "$label create" -m POST -H 'content-type: application/json' \
    -d '{"url":"https://example.com/bench"}' "http://127.0.0.1:$APP_PORT/api/v1/links"
  stop_app
  # No Redis and a local cache that forgets at once: every redirect reads the database.
  start_app LADDER_STORE="$store" LADDER_PHASE="$phase" LADDER_CACHE_TTL_SECS=0
  oha_run "$label redirect (cache miss)" "http://127.0.0.1:$APP_PORT/$code"
  stop_app
}

log "phase 0: SQLite"
bench_tier "sqlite" "sqlite:$TMP/bench.db" 0
log "phase 1: PostgreSQL through PgBouncer, Redis cache"
bench_tier "pgbouncer+redis" "pgbouncer:$LADDER_PGBOUNCER_URL" 1 \
  LADDER_REDIS_URL="$LADDER_REDIS_URL" LADDER_REDIS_PREFIX="bench$$:"
log "phase 2: primary + streaming replica"
bench_tier "replicas" "replicas:$LADDER_PG_PRIMARY_URL,$LADDER_PG_REPLICA_URL" 2

# p99 at half the peak rate, on the phase-1 cached redirect.
peak="$(awk -F'\t' '$1=="pgbouncer+redis redirect (cache hit)"{print $2}' "$TMP/results.tsv")"
half=$(( peak / 2 ))
start_app LADDER_STORE="pgbouncer:$LADDER_PGBOUNCER_URL" LADDER_PHASE=1 LADDER_REDIS_URL="$LADDER_REDIS_URL" \
  LADDER_REDIS_PREFIX="bench$$:"
code="$(new_link)"
oha_run "pgbouncer+redis hit at ${half}/s (half peak)" -q "$half" "http://127.0.0.1:$APP_PORT/$code"
stop_app

log "ceilings: pgbench -S / -N through PgBouncer, redis-benchmark GET"
PGPASSWORD=ladder "$PG_BIN/psql" -q -h 127.0.0.1 -p "$PRIMARY_PORT" -U ladder -d ladder -c 'DROP DATABASE IF EXISTS ladder_bench WITH (FORCE)' -c 'CREATE DATABASE ladder_bench' >/dev/null
PGPASSWORD=ladder "$PG_BIN/pgbench" -q -i -s 10 -h 127.0.0.1 -p "$PRIMARY_PORT" -U ladder ladder_bench >/dev/null 2>&1
pgb() { # pgb NAME PORT ARGS...
  local name="$1" port="$2"; shift 2
  local file; file="$TMP/$(printf '%s' "$name" | tr -c 'A-Za-z0-9+-' '_').txt"
  PGPASSWORD=ladder "$PG_BIN/pgbench" -h 127.0.0.1 -p "$port" -U ladder -M simple -c "$CONC" -j 2 -T "$SECS" \
    "$@" ladder_bench > "$file" 2>&1
  local tps lat
  tps="$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$file" | head -1)"
  lat="$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' "$file")"
  printf '%s\t%.0f\t%s\t-\t1\n' "$name" "$tps" "$lat" >> "$TMP/results.tsv"
  log "$name: $tps tps, mean latency $lat ms"
}
pgb "pgbench -S (ceiling, reads)" "$PGBOUNCER_PORT" -S
pgb "pgbench -N (ceiling, writes)" "$PGBOUNCER_PORT" -N
# The replicas tier talks to the primary directly (no pooler): its ceiling too.
pgb "pgbench -S direct (ceiling, reads)" "$PRIMARY_PORT" -S
pgb "pgbench -N direct (ceiling, writes)" "$PRIMARY_PORT" -N
redis_rps="$(redis-benchmark -h 127.0.0.1 -p "${LADDER_REDIS_URL##*:}" -c "$CONC" -n 200000 -t get --csv -q 2>/dev/null \
  | awk -F'","' '/GET/{print $2}' | tr -d '"' | cut -d. -f1)"
printf 'redis-benchmark GET (ceiling)\t%s\t-\t-\t1\n' "$redis_rps" >> "$TMP/results.tsv"
log "redis-benchmark GET: $redis_rps req/s"
PGPASSWORD=ladder "$PG_BIN/psql" -q -h 127.0.0.1 -p "$PRIMARY_PORT" -U ladder -d ladder -c 'DROP DATABASE IF EXISTS ladder_bench WITH (FORCE)' >/dev/null

python3 - "$TMP/results.tsv" "$OUT" "$SECS" "$CONC" "$half" <<'PY'
import sys, datetime, platform, os
rows = {}
for line in open(sys.argv[1]):
    name, rps, p50, p99, ok = line.rstrip("\n").split("\t")
    rows[name] = dict(rps=float(rps), p50=p50, p99=p99, ok=ok)
hello = rows["hyper hello (ceiling)"]["rps"]
pg_s = rows["pgbench -S (ceiling, reads)"]["rps"]
pg_n = rows["pgbench -N (ceiling, writes)"]["rps"]
pg_s_direct = rows["pgbench -S direct (ceiling, reads)"]["rps"]
pg_n_direct = rows["pgbench -N direct (ceiling, writes)"]["rps"]
redis = rows["redis-benchmark GET (ceiling)"]["rps"]
def ratio(name):
    r = rows[name]["rps"]
    if "redirect (cache hit)" in name: return f"{r/hello:.0%} of hyper", f"{r/redis:.0%} of redis GET" if "redis" in name else ""
    direct = name.startswith("replicas")
    if "redirect (cache miss)" in name:
        if "sqlite" in name: return f"{r/hello:.0%} of hyper", ""
        return f"{r/hello:.0%} of hyper", (f"{r/pg_s_direct:.0%} of pgbench -S direct" if direct else f"{r/pg_s:.0%} of pgbench -S")
    if "create" in name:
        if "sqlite" in name: return f"{r/hello:.0%} of hyper", ""
        return f"{r/hello:.0%} of hyper", (f"{r/pg_n_direct:.0%} of pgbench -N direct" if direct else f"{r/pg_n:.0%} of pgbench -N")
    return "", ""
out = []
out.append("# ladder-app benchmarks\n")
out.append(f"Measured by `make bench-app` on {datetime.date.today()} ({os.cpu_count()} cores; the load generator, the app and the databases share them). "
           f"Each row ran {sys.argv[3]} s with {sys.argv[4]} connections on loopback; ceilings were measured in the same run.\n")
out.append("| workload | req/s | p50 ms | p99 ms | ok | vs HTTP ceiling | vs data-path ceiling |")
out.append("|---|---:|---:|---:|---:|---:|---:|")
for name, r in rows.items():
    a, b = ratio(name)
    out.append(f"| {name} | {r['rps']:.0f} | {r['p50']} | {r['p99']} | {r['ok']} | {a} | {b} |")
out.append("")
out.append("Goals (issue 4): cached redirects >= 70% of the hyper ceiling; creates >= 50% of `pgbench -N`; p99 < 5 ms at half the peak rate.")
hit = rows["pgbouncer+redis redirect (cache hit)"]["rps"] / hello
create = rows["pgbouncer+redis create"]["rps"] / pg_n
half = [v for k, v in rows.items() if "half peak" in k][0]
out.append(f"\n- phase-1 cached redirect: {hit:.0%} of the hyper ceiling ({'met' if hit >= 0.7 else 'NOT met'})")
out.append(f"- phase-1 create: {create:.0%} of pgbench -N ({'met' if create >= 0.5 else 'NOT met'})")
out.append(f"- phase-1 p99 at half the peak rate ({sys.argv[5]}/s): {half['p99']} ms ({'met' if float(half['p99']) < 5 else 'NOT met'})")
out.append("\npgbench rows: tps and mean latency (pgbench reports no p99 in this mode). The cache-miss rows run the app with `LADDER_CACHE_TTL_SECS=0` and no Redis, so every redirect reads the database.")
open(sys.argv[2], "w").write("\n".join(out) + "\n")
PY
log "results written to ${OUT#"$LADDER_ROOT/"}"
cat "$OUT"
