#!/usr/bin/env bash
# Real data services on loopback, from Debian's packages:
#   PostgreSQL 15 primary + a streaming replica (pg_basebackup), PgBouncer in
#   front of the primary (transaction pooling), Redis, ClickHouse and Varnish.
#
#   hack/services.sh up      install what is missing, start what is not running
#   hack/services.sh down    stop what `up` started, remove the state
#   hack/services.sh status  show what runs
#
# Data lives under .ladder/services/; connection URLs go to .ladder/services.env.
# `up` is idempotent: services that already answer are left alone.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"

PG_BIN=/usr/lib/postgresql/15/bin
PG_PRIMARY_PORT="${LADDER_PG_PRIMARY_PORT:-15432}"
PG_REPLICA_PORT="${LADDER_PG_REPLICA_PORT:-15433}"
PGBOUNCER_PORT="${LADDER_PGBOUNCER_PORT:-16432}"
REDIS_PORT="${LADDER_REDIS_PORT:-16379}"
CLICKHOUSE_HTTP_PORT="${LADDER_CLICKHOUSE_HTTP_PORT:-18123}"
CLICKHOUSE_TCP_PORT="${LADDER_CLICKHOUSE_TCP_PORT:-19000}"
VARNISH_PORT="${LADDER_VARNISH_PORT:-16081}"
VARNISH_ADMIN_PORT="${LADDER_VARNISH_ADMIN_PORT:-16082}"
# Varnish's backend: whatever serves HTTP on this loopback port (the app in the
# app's tests, a small origin in the smoke test).
VARNISH_ORIGIN_PORT="${LADDER_VARNISH_ORIGIN_PORT:-18080}"
DB_USER=ladder
DB_PASSWORD=ladder
DB_NAME=ladder
ENV_FILE="$LADDER_STATE/services.env"
# Where PostgreSQL's data goes when the postgres user cannot reach the clone.
PG_FALLBACK_DIR="/var/tmp/ladder-services-$(printf '%s' "$LADDER_ROOT" | cksum | cut -d' ' -f1)"

# PostgreSQL and PgBouncer refuse to run as root; run them as the Debian
# `postgres` user then, as ourselves otherwise.
if [[ $(id -u) == 0 ]]; then
  AS_DB=(runuser -u postgres --)
  DB_OWNER=postgres
else
  AS_DB=(env)
  DB_OWNER="$(id -un)"
fi
as_db() { "${AS_DB[@]}" "$@"; }

install_missing() { bash "$LADDER_ROOT/hack/toolchain.sh"; }

wait_for() { # wait_for LABEL LOGFILE TIMEOUT CMD...
  local label="$1" logfile="$2" timeout="$3"; shift 3
  local i
  for ((i = 0; i < timeout * 5; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  printf '\033[1;31merror:\033[0m %s did not come up within %ss; last lines of %s:\n' "$label" "$timeout" "$logfile" >&2
  tail -n 25 "$logfile" >&2 || true
  exit 1
}

pg_up() { as_db "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$1"; }

start_primary() {
  local dir="$SERVICES_DIR/pg-primary"
  if pg_up "$PG_PRIMARY_PORT"; then log "postgres primary already running on :$PG_PRIMARY_PORT"; return; fi
  if [[ ! -f $dir/PG_VERSION ]]; then
    log "initialising postgres primary in $dir"
    mkdir -p "$dir" && chown "$DB_OWNER" "$dir" && chmod 700 "$dir"
    printf '%s\n' "$DB_PASSWORD" > "$SERVICES_DIR/pgpass.tmp"; chown "$DB_OWNER" "$SERVICES_DIR/pgpass.tmp"
    as_db "$PG_BIN/initdb" -D "$dir" -U "$DB_USER" --pwfile="$SERVICES_DIR/pgpass.tmp" \
      --auth=scram-sha-256 -E UTF8 --locale=C.UTF-8 >"$SERVICES_DIR/pg-initdb.log" 2>&1 \
      || { tail "$SERVICES_DIR/pg-initdb.log"; die "initdb failed"; }
    rm -f "$SERVICES_DIR/pgpass.tmp"
    cat >> "$dir/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PG_PRIMARY_PORT
unix_socket_directories = '$dir'
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
hot_standby = on
max_connections = 200
fsync = off
synchronous_commit = on
full_page_writes = off
shared_buffers = 128MB
CONF
    cat > "$dir/pg_hba.conf" <<CONF
local all all trust
host all all 127.0.0.1/32 scram-sha-256
host replication all 127.0.0.1/32 scram-sha-256
CONF
  fi
  clean "${AS_DB[@]}" "$PG_BIN/pg_ctl" -D "$dir" -l "$SERVICES_DIR/pg-primary.log" -w -t 60 start >/dev/null \
    || { tail -n 25 "$SERVICES_DIR/pg-primary.log" >&2; die "postgres primary failed to start"; }
  wait_for "postgres primary" "$SERVICES_DIR/pg-primary.log" 30 pg_up "$PG_PRIMARY_PORT"
  # The application database (the bootstrap superuser is `ladder`).
  if ! as_db "$PG_BIN/psql" -h "$dir" -p "$PG_PRIMARY_PORT" -U "$DB_USER" -d postgres -tAc \
      "select 1 from pg_database where datname='$DB_NAME'" | grep -q 1; then
    as_db "$PG_BIN/createdb" -h "$dir" -p "$PG_PRIMARY_PORT" -U "$DB_USER" "$DB_NAME"
  fi
  log "postgres primary on 127.0.0.1:$PG_PRIMARY_PORT"
}

start_replica() {
  local dir="$SERVICES_DIR/pg-replica"
  if pg_up "$PG_REPLICA_PORT"; then log "postgres replica already running on :$PG_REPLICA_PORT"; return; fi
  if [[ ! -f $dir/PG_VERSION ]]; then
    log "cloning the streaming replica with pg_basebackup"
    mkdir -p "$dir"; find "$dir/" -mindepth 1 -delete; chown "$DB_OWNER" "$dir" && chmod 700 "$dir"
    as_db env PGPASSWORD="$DB_PASSWORD" "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "$PG_PRIMARY_PORT" \
      -U "$DB_USER" -D "$dir" -R -c fast -X stream -C -S ladder_replica_1 >"$SERVICES_DIR/pg-basebackup.log" 2>&1 \
      || { tail "$SERVICES_DIR/pg-basebackup.log" >&2; die "pg_basebackup failed"; }
    cat >> "$dir/postgresql.conf" <<CONF
port = $PG_REPLICA_PORT
unix_socket_directories = '$dir'
CONF
    # -R wrote primary_conninfo with the password into postgresql.auto.conf.
  fi
  clean "${AS_DB[@]}" "$PG_BIN/pg_ctl" -D "$dir" -l "$SERVICES_DIR/pg-replica.log" -w -t 60 start >/dev/null \
    || { tail -n 25 "$SERVICES_DIR/pg-replica.log" >&2; die "postgres replica failed to start"; }
  wait_for "postgres replica" "$SERVICES_DIR/pg-replica.log" 30 pg_up "$PG_REPLICA_PORT"
  log "postgres streaming replica on 127.0.0.1:$PG_REPLICA_PORT"
}

start_pgbouncer() {
  local dir="$SERVICES_DIR/pgbouncer"
  if [[ -f $dir/pgbouncer.pid ]] && kill -0 "$(cat "$dir/pgbouncer.pid")" 2>/dev/null; then
    log "pgbouncer already running on :$PGBOUNCER_PORT"; return
  fi
  mkdir -p "$dir"
  # Transaction pooling, as production runs it. Debian's 1.18 has no
  # prepared-statement support in this mode: the app must not reuse
  # server-side prepared statements across transactions.
  cat > "$dir/pgbouncer.ini" <<CONF
[databases]
* = host=127.0.0.1 port=$PG_PRIMARY_PORT

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGBOUNCER_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $dir/userlist.txt
admin_users = $DB_USER
pool_mode = transaction
max_client_conn = 1000
default_pool_size = 40
ignore_startup_parameters = extra_float_digits,options
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
CONF
  printf '"%s" "%s"\n' "$DB_USER" "$DB_PASSWORD" > "$dir/userlist.txt"
  chown -R "$DB_OWNER" "$dir"; chmod 600 "$dir/userlist.txt"
  clean "${AS_DB[@]}" pgbouncer -d "$dir/pgbouncer.ini" >"$dir/start.log" 2>&1 \
    || { cat "$dir/start.log" >&2; tail "$dir/pgbouncer.log" >&2 || true; die "pgbouncer failed to start"; }
  wait_for "pgbouncer" "$dir/pgbouncer.log" 20 pg_up "$PGBOUNCER_PORT"
  log "pgbouncer (transaction pooling) on 127.0.0.1:$PGBOUNCER_PORT"
}

start_redis() {
  local dir="$SERVICES_DIR/redis"
  if redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; then log "redis already running on :$REDIS_PORT"; return; fi
  mkdir -p "$dir"
  clean redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$dir" --daemonize yes \
    --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --save "" --appendonly no --protected-mode yes
  wait_for "redis" "$dir/redis.log" 20 bash -c "redis-cli -p $REDIS_PORT ping | grep -q PONG"
  log "redis on 127.0.0.1:$REDIS_PORT"
}

start_clickhouse() {
  local dir="$SERVICES_DIR/clickhouse"
  if curl -fsS "http://127.0.0.1:$CLICKHOUSE_HTTP_PORT/ping" >/dev/null 2>&1; then
    log "clickhouse already running on :$CLICKHOUSE_HTTP_PORT"; return
  fi
  mkdir -p "$dir/data" "$dir/tmp" "$dir/user_files" "$dir/format_schemas"
  cat > "$dir/config.xml" <<CONF
<?xml version="1.0"?>
<yandex>
    <logger>
        <level>information</level>
        <log>$dir/clickhouse.log</log>
        <errorlog>$dir/clickhouse.err.log</errorlog>
        <size>100M</size>
        <count>2</count>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    <http_port>$CLICKHOUSE_HTTP_PORT</http_port>
    <tcp_port>$CLICKHOUSE_TCP_PORT</tcp_port>
    <max_connections>256</max_connections>
    <keep_alive_timeout>3</keep_alive_timeout>
    <max_concurrent_queries>64</max_concurrent_queries>
    <uncompressed_cache_size>104857600</uncompressed_cache_size>
    <mark_cache_size>104857600</mark_cache_size>
    <path>$dir/data/</path>
    <tmp_path>$dir/tmp/</tmp_path>
    <user_files_path>$dir/user_files/</user_files_path>
    <format_schema_path>$dir/format_schemas/</format_schema_path>
    <users_config>$dir/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mlock_executable>false</mlock_executable>
</yandex>
CONF
  cat > "$dir/users.xml" <<CONF
<?xml version="1.0"?>
<yandex>
    <profiles><default><max_memory_usage>2000000000</max_memory_usage></default></profiles>
    <users>
        <default>
            <password></password>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>
      <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
CONF
  # Debian's 18.16 does not write --pid-file reliably: record the pid ourselves.
  daemon "$dir/clickhouse.pid" "$dir/stdout.log" /usr/sbin/clickhouse-server --config-file="$dir/config.xml"
  wait_for "clickhouse" "$dir/clickhouse.err.log" 60 curl -fsS "http://127.0.0.1:$CLICKHOUSE_HTTP_PORT/ping"
  log "clickhouse (HTTP) on 127.0.0.1:$CLICKHOUSE_HTTP_PORT"
}

start_varnish() {
  local dir="$SERVICES_DIR/varnish"
  if [[ -f $dir/varnishd.pid ]] && kill -0 "$(cat "$dir/varnishd.pid")" 2>/dev/null; then
    log "varnish already running on :$VARNISH_PORT"; return
  fi
  mkdir -p "$dir"
  if [[ ! -f $dir/default.vcl ]]; then
    sed -e "s/@ORIGIN_PORT@/$VARNISH_ORIGIN_PORT/" "$LADDER_ROOT/hack/services/default.vcl" > "$dir/default.vcl"
  fi
  [[ -f $dir/secret ]] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$dir/secret"
  clean /usr/sbin/varnishd -a "127.0.0.1:$VARNISH_PORT" -T "127.0.0.1:$VARNISH_ADMIN_PORT" -S "$dir/secret" \
    -f "$dir/default.vcl" -n "$dir/work" -P "$dir/varnishd.pid" -s malloc,64m \
    >"$dir/varnishd.log" 2>&1 || { cat "$dir/varnishd.log" >&2; die "varnishd failed to start"; }
  wait_for "varnish" "$dir/varnishd.log" 20 bash -c "exec 3<>/dev/tcp/127.0.0.1/$VARNISH_PORT"
  log "varnish on 127.0.0.1:$VARNISH_PORT (origin 127.0.0.1:$VARNISH_ORIGIN_PORT)"
}

write_env() {
  cat > "$ENV_FILE.tmp" <<ENV
# Written by hack/services.sh; source it or let the tests read it.
LADDER_PG_PRIMARY_URL=postgres://$DB_USER:$DB_PASSWORD@127.0.0.1:$PG_PRIMARY_PORT/$DB_NAME
LADDER_PG_REPLICA_URL=postgres://$DB_USER:$DB_PASSWORD@127.0.0.1:$PG_REPLICA_PORT/$DB_NAME
LADDER_PGBOUNCER_URL=postgres://$DB_USER:$DB_PASSWORD@127.0.0.1:$PGBOUNCER_PORT/$DB_NAME
LADDER_REDIS_URL=redis://127.0.0.1:$REDIS_PORT
LADDER_CLICKHOUSE_URL=http://127.0.0.1:$CLICKHOUSE_HTTP_PORT
LADDER_VARNISH_URL=http://127.0.0.1:$VARNISH_PORT
LADDER_VARNISH_ADMIN=127.0.0.1:$VARNISH_ADMIN_PORT
LADDER_VARNISH_SECRET_FILE=$SERVICES_DIR/varnish/secret
LADDER_VARNISH_ORIGIN_PORT=$VARNISH_ORIGIN_PORT
ENV
  mv "$ENV_FILE.tmp" "$ENV_FILE"
}

stop_pidfile() { # stop_pidfile NAME PIDFILE
  local pidfile="$2" pid
  [[ -f $pidfile ]] || return 0
  pid="$(head -n1 "$pidfile")"
  if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
    log "stopped $1"
  fi
}

cmd_up() {
  install_missing
  mkdir -p "$SERVICES_DIR"
  chown "$DB_OWNER" "$SERVICES_DIR" 2>/dev/null || true
  # PostgreSQL runs as `postgres` when we are root: it must be able to reach
  # the data folder. If a parent of the clone is private, keep the data in a
  # private folder of its own under /var/tmp and link it from .ladder/services.
  if ! as_db test -w "$SERVICES_DIR" 2>/dev/null; then
    warn "$DB_OWNER cannot reach $SERVICES_DIR; keeping PostgreSQL data in $PG_FALLBACK_DIR"
    mkdir -p "$PG_FALLBACK_DIR" && chown "$DB_OWNER" "$PG_FALLBACK_DIR" && chmod 700 "$PG_FALLBACK_DIR"
    for d in pg-primary pg-replica pgbouncer; do
      mkdir -p "$PG_FALLBACK_DIR/$d"; chown "$DB_OWNER" "$PG_FALLBACK_DIR/$d"; ln -sfn "$PG_FALLBACK_DIR/$d" "$SERVICES_DIR/$d"
    done
  fi
  start_primary
  start_replica
  start_pgbouncer
  start_redis
  start_clickhouse
  start_varnish
  write_env
  log "services up; connection URLs in ${ENV_FILE#"$LADDER_ROOT/"}"
}

cmd_down() {
  stop_pidfile varnish "$SERVICES_DIR/varnish/varnishd.pid"
  stop_pidfile clickhouse "$SERVICES_DIR/clickhouse/clickhouse.pid"
  stop_pidfile redis "$SERVICES_DIR/redis/redis.pid"
  stop_pidfile pgbouncer "$SERVICES_DIR/pgbouncer/pgbouncer.pid"
  for d in pg-replica pg-primary; do
    if [[ -f $SERVICES_DIR/$d/postmaster.pid ]]; then
      as_db "$PG_BIN/pg_ctl" -D "$SERVICES_DIR/$d" -m fast -w stop >/dev/null 2>&1 || true
      log "stopped $d"
    fi
  done
  rm -rf "$PG_FALLBACK_DIR"
  rm -rf "$SERVICES_DIR" "$ENV_FILE"
}

cmd_status() {
  pg_up "$PG_PRIMARY_PORT" && echo "postgres primary  up  :$PG_PRIMARY_PORT" || echo "postgres primary  down"
  pg_up "$PG_REPLICA_PORT" && echo "postgres replica  up  :$PG_REPLICA_PORT" || echo "postgres replica  down"
  pg_up "$PGBOUNCER_PORT" && echo "pgbouncer         up  :$PGBOUNCER_PORT" || echo "pgbouncer         down"
  redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && echo "redis             up  :$REDIS_PORT" || echo "redis             down"
  curl -fsS "http://127.0.0.1:$CLICKHOUSE_HTTP_PORT/ping" >/dev/null 2>&1 && echo "clickhouse        up  :$CLICKHOUSE_HTTP_PORT" || echo "clickhouse        down"
  (exec 3<>"/dev/tcp/127.0.0.1/$VARNISH_PORT") 2>/dev/null && echo "varnish           up  :$VARNISH_PORT" || echo "varnish           down"
}

mkdir -p "$LADDER_STATE"
case "${1:-}" in
  # One `up` or `down` at a time: a second `up` waits, then finds everything
  # running. flock -o keeps the lock out of the daemons we start.
  up|down) exec flock -o "$LADDER_STATE/services.lock" "$0" "__$1" ;;
  __up) cmd_up ;;
  __down) cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
