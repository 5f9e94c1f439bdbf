#!/usr/bin/env bash
# `make bench-app`: ladder-app's redirects (cache hit and miss) and link
# creation per tier, each beside its ceiling measured in the same run:
#   HTTP path  - a minimal hyper server answering a fixed 302 (app/examples/hello.rs)
#   DB path    - pgbench -S (reads) and -N (writes) through the same PgBouncer,
#                directly on the primary, and on the shards (alone and together)
#   cache path - redis-benchmark GET on the same Redis
# Every repetition measures the ceilings and the app rows again, and each ratio
# is taken within one repetition; bench/app.md reports the median over the
# repetitions and their spread (min-max), the p50/p99 at half of each median
# peak, the app's RSS under load, and how busy the cores were with other work.
# Load comes from wrk (Debian) on loopback, bounded in time: closed loop for
# the peaks; paced (a Lua delay between requests, fewer connections) for the
# half-peak rows. Raw output and TSV in bench/tmp/. Everything below the notes
# marker of bench/app.md is kept.
#
# Knobs: BENCH_SECONDS (10), BENCH_CONNECTIONS (32), BENCH_RUNS (3),
# BENCH_WARMUP_SECONDS (2), BENCH_APP (the ladder-app binary to measure; default:
# a fresh release build), BENCH_NO_BUILD=1 (use the binaries as built), BENCH_SHARDS
# (2), BENCH_SCALE (pgbench scale of the ceiling databases, 10). Ports follow hack/services.sh's (an
# offset set by LADDER_*_PORT moves the bench's own ports by the same amount).
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
cd "$LADDER_ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$LADDER_CACHE/target}"
SECS="${BENCH_SECONDS:-10}"
CONC="${BENCH_CONNECTIONS:-32}"
RUNS="${BENCH_RUNS:-3}"
WARMUP="${BENCH_WARMUP_SECONDS:-2}"
SHARDS="${BENCH_SHARDS:-2}"
SCALE="${BENCH_SCALE:-10}"
TMP="$LADDER_ROOT/bench/tmp"
OUT="${BENCH_OUT:-$LADDER_ROOT/bench/app.md}"
OFFSET=$(( ${LADDER_PGBOUNCER_PORT:-16432} - 16432 ))
HELLO_PORT=$(( 18181 + OFFSET ))
APP_PORT=$(( 18182 + OFFSET ))
rm -rf "$TMP"; mkdir -p "$TMP"

bash hack/services.sh up >/dev/null
set -a; source "$LADDER_STATE/services.env"; set +a
PG_BIN=/usr/lib/postgresql/15/bin
PGBOUNCER_PORT="${LADDER_PGBOUNCER_URL##*:}"; PGBOUNCER_PORT="${PGBOUNCER_PORT%%/*}"
PRIMARY_PORT="${LADDER_PG_PRIMARY_URL##*:}"; PRIMARY_PORT="${PRIMARY_PORT%%/*}"

command -v wrk >/dev/null || die "wrk is missing: run hack/toolchain.sh"
if [[ -z ${BENCH_NO_BUILD:-} ]]; then
  log "building ladder-app and the hello ceiling (release)"
  cargo build -q --release -p ladder-app --locked --bin ladder-app --example hello
fi
cat > "$TMP/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"url":"https://example.com/bench"}'
wrk.headers["Content-Type"] = "application/json"
LUA
APP="${BENCH_APP:-$CARGO_TARGET_DIR/release/ladder-app}"
HELLO="$CARGO_TARGET_DIR/release/examples/hello"
log "measuring $APP ($(stat -c %y "$APP" | cut -d. -f1))"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

wait_http() { for _ in $(seq 100); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done; die "$1 did not answer"; }
psql_primary() { PGPASSWORD=ladder "$PG_BIN/psql" -q -h 127.0.0.1 -p "$PRIMARY_PORT" -U ladder -d ladder "$@" >/dev/null; }

# CPU accounting of a row: jiffies busy on the whole machine, and those of the
# bench's own processes (the app, the ceilings, wrk, the databases), so that
# what other work took can be reported.
OURS='ladder-app|hello|wrk|postgres|pgbouncer|redis-server|pgbench|redis-benchmar'
cpu_snapshot() {
  python3 - "$OURS" <<'PY'
import os, re, sys
ours = re.compile(r"^(%s)$" % sys.argv[1])
f = open("/proc/stat").readline().split()[1:]
v = list(map(int, f))
busy = sum(v) - v[3] - v[4]
mine = 0
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        s = open(f"/proc/{pid}/stat").read()
    except OSError:
        continue
    comm = s[s.index("(") + 1 : s.rindex(")")]
    rest = s[s.rindex(")") + 2 :].split()
    if ours.match(comm) or comm.startswith("postgres"):
        mine += int(rest[11]) + int(rest[12])
print(busy, sum(v), mine)
PY
}

RUN=0
# load NAME [--post] [--rate R] URL: warms up, then runs wrk for SECS seconds and
# records req/s, p50, p99, the share of 2xx/3xx answers and other work's CPU.
# --rate paces the load near R req/s: a Lua delay of D ms between a connection's
# requests, with as many connections as that rate needs (wrk has no rate option).
load() {
  local name="$1"; shift
  local script="" rate="" conns="$CONC"
  while [[ $1 == --* ]]; do
    case "$1" in
      --post) script="$TMP/post.lua"; shift ;;
      --rate) rate="$2"; shift 2 ;;
    esac
  done
  local url="$1"
  local file="$TMP/$RUN-$(printf '%s' "$name" | tr -c 'A-Za-z0-9+-' '_').txt"
  if [[ -n $rate ]]; then
    # D ms pause + ~1 ms per request: a connection makes ~1000/(D+1) requests/s.
    local delay=$(( CONC * 1000 / (2 * rate) )); (( delay >= 1 )) || delay=1
    conns=$(( (rate * (delay + 1) + 999) / 1000 )); (( conns >= 1 )) || conns=1
    { [[ -n $script ]] && cat "$script"; echo "function delay() return $delay end"; } > "$TMP/paced.lua"
    script="$TMP/paced.lua"
  fi
  local args=(-t 2 -c "$conns" --latency); (( conns >= 2 )) || args=(-t 1 -c 1 --latency)
  [[ -n $script ]] && args+=(-s "$script")
  if (( WARMUP > 0 )); then wrk "${args[@]}" -d "${WARMUP}s" "$url" >/dev/null; fi
  local before after
  before="$(cpu_snapshot)"
  wrk "${args[@]}" -d "${SECS}s" "$url" > "$file"
  after="$(cpu_snapshot)"
  python3 - "$file" "$name" "$RUN" "$before" "$after" >> "$TMP/results.tsv" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
def ms(v):
    n, unit = re.match(r"([0-9.]+)(us|ms|s)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
p50 = ms(re.search(r"^\s*50%\s+(\S+)", t, re.M).group(1))
p99 = ms(re.search(r"^\s*99%\s+(\S+)", t, re.M).group(1))
rps = float(re.search(r"^Requests/sec:\s+([0-9.]+)", t, re.M).group(1))
total = int(re.search(r"^\s*(\d+) requests in", t, re.M).group(1)) or 1
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
failed = (int(bad.group(1)) if bad else 0) + (sum(map(int, errs.groups())) if errs else 0)
b0, t0, m0 = map(int, sys.argv[4].split()); b1, t1, m1 = map(int, sys.argv[5].split())
other = max(0.0, ((b1 - b0) - (m1 - m0)) / max(t1 - t0, 1))
print(f"{sys.argv[3]}\t{sys.argv[2]}\t{rps:.0f}\t{p50:.2f}\t{p99:.2f}\t{max(0.0, 1 - failed / total):.4f}\t{other:.3f}")
PY
  log "$(tail -n1 "$TMP/results.tsv" | awk -F'\t' '{printf "run %s %-44s %8s req/s  p50 %s ms  p99 %s ms  ok %s  other cpu %s", $1, $2, $3, $4, $5, $6, $7}')"
}

start_app() { # start_app ENV...
  env -i PATH="$PATH" HOME="$HOME" LADDER_LISTEN="127.0.0.1:$APP_PORT" RUST_LOG=warn "$@" "$APP" serve \
    >"$TMP/app.log" 2>&1 &
  APP_PID=$!; pids+=("$APP_PID")
  wait_http "http://127.0.0.1:$APP_PORT/readyz"
}
# rss LABEL: the app's resident memory now and at its peak, after a load row.
rss() {
  local now peak
  now="$(awk '/^VmRSS/{print $2}' "/proc/$APP_PID/status")"
  peak="$(awk '/^VmHWM/{print $2}' "/proc/$APP_PID/status")"
  printf '%s\t%s\t%s\t%s\n' "$RUN" "$1" "$now" "$peak" >> "$TMP/rss.tsv"
}
stop_app() { kill "$APP_PID" 2>/dev/null || true; wait "$APP_PID" 2>/dev/null || true; }
new_link() {
  curl -fsS -X POST -H 'content-type: application/json' -d '{"url":"https://example.com/bench"}' \
    "http://127.0.0.1:$APP_PORT/api/v1/links" | python3 -c 'import json,sys; print(json.load(sys.stdin)["code"])'
}

# The tiers: LABEL|PHASE|STORE|ENV of the cached run (space-separated).
SHARD_MAP="$TMP/shard-map.json"
tiers=(
  "sqlite|0|sqlite:$TMP/bench.db|"
  "pgbouncer+redis|1|pgbouncer:$LADDER_PGBOUNCER_URL|LADDER_REDIS_URL=$LADDER_REDIS_URL LADDER_REDIS_PREFIX=bench$$:"
  "replicas|2|replicas:$LADDER_PG_PRIMARY_URL,$LADDER_PG_REPLICA_URL|"
  "shards|3|shards:$SHARD_MAP|"
)

# bench_tier LABEL PHASE STORE [ENV...]: cache hit, create, then cache miss (a local cache
# that forgets at once and no Redis: every redirect reads the database).
bench_tier() {
  local label="$1" phase="$2" store="$3"; shift 3
  local url="http://127.0.0.1:$APP_PORT"
  start_app LADDER_STORE="$store" LADDER_PHASE="$phase" "$@"
  local code; code="$(new_link)"
  echo "$code" > "$TMP/code-$label"
  curl -fsS -o /dev/null "$url/$code" || true
  load "$label redirect (cache hit)" "$url/$code"
  load "$label create" --post "$url/api/v1/links"
  rss "$label (cached)"
  stop_app
  start_app LADDER_STORE="$store" LADDER_PHASE="$phase" LADDER_CACHE_TTL_SECS=0
  load "$label redirect (cache miss)" "$url/$code"
  rss "$label (cache off)"
  stop_app
}

log "databases for the ceilings and the shards (pgbench scale $SCALE)"
bench_dbs=(ladder_bench)
for ((i = 0; i < SHARDS; i++)); do bench_dbs+=("ladder_bench_s$i"); done
for db in "${bench_dbs[@]}"; do
  psql_primary -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
  PGPASSWORD=ladder "$PG_BIN/pgbench" -q -i -s "$SCALE" -h 127.0.0.1 -p "$PRIMARY_PORT" -U ladder "$db" >/dev/null 2>&1
done
python3 - "$SHARD_MAP" "$SHARDS" "$LADDER_PG_PRIMARY_URL" <<'PY'
import json, sys
path, n, url = sys.argv[1], int(sys.argv[2]), sys.argv[3]
base = url.rsplit("/", 1)[0]
slots = 64
shards = [{"name": f"s{i}", "url": f"{base}/ladder_bench_s{i}"} for i in range(n)]
ranges = [{"from": i * slots // n, "to": (i + 1) * slots // n - 1, "shard": f"s{i}"} for i in range(n)]
json.dump({"version": 1, "slots": slots, "shards": shards, "ranges": ranges}, open(path, "w"))
PY

# pgb NAME PORT DB ARGS...: one pgbench row (tps, mean latency).
pgb() {
  local name="$1" port="$2" db="$3"; shift 3
  local file; file="$TMP/$RUN-$(printf '%s' "$name" | tr -c 'A-Za-z0-9+-' '_').txt"
  local before after
  before="$(cpu_snapshot)"
  PGPASSWORD=ladder "$PG_BIN/pgbench" -h 127.0.0.1 -p "$port" -U ladder -M simple -c "$CONC" -j 2 -T "$SECS" \
    "$@" "$db" > "$file" 2>&1
  after="$(cpu_snapshot)"
  pgb_row "$name" "$before" "$after" "$file"
}
pgb_row() { # pgb_row NAME CPU_BEFORE CPU_AFTER FILE...: sums the tps of the files
  local name="$1" before="$2" after="$3"; shift 3
  python3 - "$name" "$RUN" "$before" "$after" "$@" >> "$TMP/results.tsv" <<'PY'
import re, sys
name, run, before, after, files = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
tps, lat = 0.0, []
for f in files:
    t = open(f).read()
    m = re.search(r"^tps = ([0-9.]+)", t, re.M)
    if not m:
        sys.exit(f"pgbench gave no tps in {f}:\n{t[-400:]}")
    tps += float(m.group(1))
    lat.append(float(re.search(r"^latency average = ([0-9.]+) ms", t, re.M).group(1)))
b0, t0, m0 = map(int, before.split()); b1, t1, m1 = map(int, after.split())
other = max(0.0, ((b1 - b0) - (m1 - m0)) / max(t1 - t0, 1))
print(f"{run}\t{name}\t{tps:.0f}\t{sum(lat)/len(lat):.3f}\t-\t1\t{other:.3f}")
PY
  log "$(tail -n1 "$TMP/results.tsv" | awk -F'\t' '{printf "run %s %-40s %8s tps  mean latency %s ms", $1, $2, $3, $4}')"
}

: > "$TMP/results.tsv"; : > "$TMP/rss.tsv"
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
"$HELLO" "127.0.0.1:$HELLO_PORT" & pids+=($!)
wait_http "http://127.0.0.1:$HELLO_PORT/x" || true
for ((RUN = 1; RUN <= RUNS; RUN++)); do
  log "repetition $RUN of $RUNS"
  load "hyper hello (ceiling)" "http://127.0.0.1:$HELLO_PORT/x"
  for t in "${tiers[@]}"; do
    IFS='|' read -r label phase store envs <<<"$t"
    rm -f "$TMP/bench.db"*
    # shellcheck disable=SC2086
    bench_tier "$label" "$phase" "$store" $envs
  done
  pgb "pgbench -S (ceiling, reads)" "$PGBOUNCER_PORT" ladder_bench -S
  pgb "pgbench -N (ceiling, writes)" "$PGBOUNCER_PORT" ladder_bench -N
  # The replica and shard tiers talk to PostgreSQL directly (no pooler): their ceilings too.
  pgb "pgbench -S direct (ceiling, reads)" "$PRIMARY_PORT" ladder_bench -S
  pgb "pgbench -N direct (ceiling, writes)" "$PRIMARY_PORT" ladder_bench -N
  pgb "pgbench -N one shard (ceiling, writes)" "$PRIMARY_PORT" ladder_bench_s0 -N
  # Every shard at once, the connections split between them: what this box can give N shards.
  before="$(cpu_snapshot)"; files=(); shard_pids=()
  for ((i = 0; i < SHARDS; i++)); do
    files+=("$TMP/$RUN-pgbench-shard-$i.txt")
    PGPASSWORD=ladder "$PG_BIN/pgbench" -h 127.0.0.1 -p "$PRIMARY_PORT" -U ladder -M simple \
      -c $(( CONC / SHARDS )) -j 1 -T "$SECS" -N "ladder_bench_s$i" > "${files[-1]}" 2>&1 &
    shard_pids+=($!)
  done
  for i in "${!shard_pids[@]}"; do
    wait "${shard_pids[$i]}" || die "pgbench on shard $i failed: $(tail -n3 "${files[$i]}")"
  done
  pgb_row "pgbench -N all shards at once (ceiling, writes)" "$before" "$(cpu_snapshot)" "${files[@]}"
  before="$(cpu_snapshot)"
  redis_rps="$(redis-benchmark -h 127.0.0.1 -p "${LADDER_REDIS_URL##*:}" -c "$CONC" -n 200000 -t get --csv -q 2>/dev/null \
    | awk -F'","' '/GET/{print $2}' | tr -d '"' | cut -d. -f1)"
  after="$(cpu_snapshot)"
  other="$(python3 -c 'import sys; b0,t0,m0=map(int,sys.argv[1].split()); b1,t1,m1=map(int,sys.argv[2].split()); print(f"{max(0.0,((b1-b0)-(m1-m0))/max(t1-t0,1)):.3f}")' "$before" "$after")"
  printf '%s\tredis-benchmark GET (ceiling)\t%s\t-\t-\t1\t%s\n' "$RUN" "$redis_rps" "$other" >> "$TMP/results.tsv"
  log "run $RUN redis-benchmark GET: $redis_rps req/s"
done

# p50/p99 at half of each median peak.
RUN=half
median_rps() {
  awk -F'\t' -v n="$1" '$2==n{print $3}' "$TMP/results.tsv" | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'
}
for t in "${tiers[@]}"; do
  IFS='|' read -r label phase store envs <<<"$t"
  url="http://127.0.0.1:$APP_PORT"
  rm -f "$TMP/bench.db"*
  # shellcheck disable=SC2086
  start_app LADDER_STORE="$store" LADDER_PHASE="$phase" $envs
  code="$(new_link)"
  curl -fsS -o /dev/null "$url/$code" || true
  half=$(( $(median_rps "$label redirect (cache hit)") / 2 ))
  load "$label redirect (cache hit) at $half/s" --rate "$half" "$url/$code"
  half=$(( $(median_rps "$label create") / 2 ))
  load "$label create at $half/s" --post --rate "$half" "$url/api/v1/links"
  rss "$label (cached, half peak)"
  stop_app
  start_app LADDER_STORE="$store" LADDER_PHASE="$phase" LADDER_CACHE_TTL_SECS=0
  half=$(( $(median_rps "$label redirect (cache miss)") / 2 ))
  load "$label redirect (cache miss) at $half/s" --rate "$half" "$url/$code"
  stop_app
done
load_after="$(cut -d' ' -f1-3 /proc/loadavg)"

for db in "${bench_dbs[@]}"; do psql_primary -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"; done

python3 - "$TMP/results.tsv" "$TMP/rss.tsv" "$OUT" "$SECS" "$CONC" "$RUNS" "$SHARDS" "$load_before" "$load_after" "$WARMUP" <<'PY'
import sys, datetime, os, statistics
from collections import defaultdict
res, rss_file, out_path = sys.argv[1], sys.argv[2], sys.argv[3]
secs, conc, runs, shards, load0, load1, warm = sys.argv[4:11]
shards = int(shards)
rows = defaultdict(dict)        # name -> run -> dict
order = []
for line in open(res):
    run, name, rps, p50, p99, ok, other = line.rstrip("\n").split("\t")
    if name not in order:
        order.append(name)
    rows[name][run] = dict(rps=float(rps), p50=p50, p99=p99, ok=float(ok), other=float(other))
runs_ = sorted({r for n in rows.values() for r in n if r != "half"}, key=int)

def med(xs):
    return statistics.median(xs) if xs else float("nan")

def spread(xs, fmt):
    return f"{fmt(min(xs))}–{fmt(max(xs))}" if len(xs) > 1 else ""

CEIL = {
    "hello": "hyper hello (ceiling)",
    "S": "pgbench -S (ceiling, reads)",
    "N": "pgbench -N (ceiling, writes)",
    "Sd": "pgbench -S direct (ceiling, reads)",
    "Nd": "pgbench -N direct (ceiling, writes)",
    "N1": "pgbench -N one shard (ceiling, writes)",
    "Nall": "pgbench -N all shards at once (ceiling, writes)",
    "redis": "redis-benchmark GET (ceiling)",
}

def ceilings_for(name):
    """(label, [per-run ceiling rps]) pairs the row is compared with."""
    def c(key, scale=1.0):
        return [rows[CEIL[key]][r]["rps"] * scale if r in rows[CEIL[key]] else None for r in runs_]
    tier = name.split(" ")[0]
    out = []
    if "redirect (cache hit)" in name:
        out.append(("hyper", c("hello")))
        if "redis" in tier:
            out.append(("redis GET", c("redis")))
    elif "redirect (cache miss)" in name:
        out.append(("hyper", c("hello")))
        if tier == "pgbouncer+redis":
            out.append(("pgbench -S via PgBouncer", c("S")))
        elif tier in ("replicas", "shards"):
            out.append(("pgbench -S direct", c("Sd")))
    elif name.endswith(" create"):
        if tier == "pgbouncer+redis":
            out.append(("pgbench -N via PgBouncer", c("N")))
        elif tier == "replicas":
            out.append(("pgbench -N direct", c("Nd")))
        elif tier == "shards":
            out.append((f"{shards} × one-shard pgbench -N", c("N1", shards)))
            out.append((f"pgbench -N on all {shards} shards at once", c("Nall")))
        else:
            out.append(("hyper", c("hello")))
    return out

def ratios(name):
    """[(label, median, spread)] of the row's per-run ratios to its ceilings."""
    out = []
    for label, ceil in ceilings_for(name):
        rs = [rows[name][r]["rps"] / cv for r, cv in zip(runs_, ceil) if r in rows[name] and cv]
        if rs:
            out.append((label, med(rs), spread(rs, lambda x: f"{x:.0%}")))
    return out

o = []
o.append("# ladder-app benchmarks\n")
o.append(f"Measured by `make bench-app` on {datetime.date.today()} ({os.cpu_count()} cores; the load generator, "
         f"the app and the databases share them). {runs} repetitions; in each, every row ran {secs} s "
         f"(after a {warm} s warm-up) with {conc} connections on loopback, and every ratio compares a row with "
         "the ceiling measured in the same repetition. Figures are medians over the repetitions, "
         "with the spread (min–max) beside them.\n")
o.append("| workload | req/s | spread | p50 ms | p99 ms | ok | vs ceiling (median, spread) |")
o.append("|---|---:|---|---:|---:|---:|---|")
for name in order:
    per = [rows[name][r] for r in runs_ if r in rows[name]]
    if not per:
        continue
    rps = [p["rps"] for p in per]
    p50 = med([float(p["p50"]) for p in per if p["p50"] != "-"]) if per[0]["p50"] != "-" else None
    p99 = med([float(p["p99"]) for p in per if p["p99"] != "-"]) if per[0]["p99"] != "-" else None
    ok = min(p["ok"] for p in per)
    rat = "; ".join(f"{m:.0%} of {l} ({s})" if s else f"{m:.0%} of {l}" for l, m, s in ratios(name))
    o.append(f"| {name} | {med(rps):.0f} | {spread(rps, lambda x: f'{x:.0f}')} | "
             f"{'-' if p50 is None else f'{p50:.2f}'} | {'-' if p99 is None else f'{p99:.2f}'} | {ok:.4f} | {rat} |")
o.append("")
o.append("pgbench rows: tps and mean latency (pgbench reports no p99 in this mode; `-M simple`, -j 2). "
         "The cache-miss rows run the app with `LADDER_CACHE_TTL_SECS=0` and no Redis, so every redirect "
         f"reads the database. The shard tier has {shards} shards, databases of the one primary.\n")

o.append("## Latency at half of each peak\n")
o.append("Each app row again, paced to about half its median peak rate (wrk with a Lua delay "
         "between a connection's requests; the rate reached is in the req/s column).\n")
o.append("| workload | req/s | p50 ms | p99 ms | ok |")
o.append("|---|---:|---:|---:|---:|")
for name in order:
    h = rows[name].get("half")
    if h:
        o.append(f"| {name} | {h['rps']:.0f} | {h['p50']} | {h['p99']} | {h['ok']:.4f} |")
o.append("")

o.append("## Memory under load\n")
o.append("The app's resident set (VmRSS) right after its load rows, and its peak (VmHWM), in MiB: "
         "medians over the repetitions (max of the peaks).\n")
o.append("| app | RSS after load | peak RSS |")
o.append("|---|---:|---:|")
rss = defaultdict(list)
for line in open(rss_file):
    run, label, now, peak = line.rstrip("\n").split("\t")
    rss[label].append((int(now), int(peak)))
for label, v in rss.items():
    o.append(f"| {label} | {med([a for a, _ in v]) / 1024:.1f} | {max(b for _, b in v) / 1024:.1f} |")
o.append("")

o.append("## Goals (issue 12)\n")
def goal(label, name, ceiling, target):
    r = [x for x in ratios(name) if x[0] == ceiling]
    if not r:
        return
    m = r[0][1]
    o.append(f"- {label}: {m:.0%} of {ceiling} (goal ≥ {target:.0%}: {'met' if m >= target else 'NOT met'})")
goal("cached redirect, phase 1", "pgbouncer+redis redirect (cache hit)", "hyper", 0.75)
goal("cached redirect, phase 0", "sqlite redirect (cache hit)", "hyper", 0.75)
goal("cache-miss redirect through PgBouncer", "pgbouncer+redis redirect (cache miss)", "pgbench -S via PgBouncer", 0.60)
goal("cache-miss redirect, replicas", "replicas redirect (cache miss)", "pgbench -S direct", 0.60)
goal("create through PgBouncer", "pgbouncer+redis create", "pgbench -N via PgBouncer", 0.60)
goal("create, replicas", "replicas create", "pgbench -N direct", 0.60)
goal("create, shards", "shards create", f"{shards} × one-shard pgbench -N", 0.60)
o.append("")

o.append("## What shared the cores\n")
others = [rows[n][r]["other"] for n in order for r in runs_ if r in rows[n]]
o.append(f"Load average (1/5/15 min) {load0} at the start, {load1} at the end. "
         "Other work's share of the machine during each measured row (busy CPU time minus that of the "
         "app, the ceilings, wrk and the databases, as a fraction of both cores): "
         f"median {med(others):.0%}, range {min(others):.0%}–{max(others):.0%}.\n")

notes_marker = "<!-- notes below are kept by make bench-app -->"
kept = ""
if os.path.exists(out_path):
    text = open(out_path).read()
    if notes_marker in text:
        kept = text[text.index(notes_marker):]
o.append(kept if kept else notes_marker + "\n")
open(out_path, "w").write("\n".join(o).rstrip("\n") + "\n")
PY
log "results written to ${OUT#"$LADDER_ROOT/"}"
cat "$OUT"
