#!/usr/bin/env bash
# Real data services on loopback, from Debian's packages:
#   PostgreSQL 15 primary + a streaming replica (pg_basebackup), durable
#   (fsync on) as in production, PgBouncer in front of the primary
#   (transaction pooling), Redis, ClickHouse and Varnish.
#
#   hack/services.sh up      install what is missing, start what is not running
#   hack/services.sh down    stop what `up` started, remove the state
#   hack/services.sh status  show what runs
#   hack/services.sh check-tls  connect to each service over TLS (verifying the
#                            local CA) and in plain text; non-zero if one fails
#
# Data lives under .ladder/services/; connection URLs go to .ladder/services.env.
# `up` is idempotent: services that already answer are left alone.
#
# TLS: `up` makes a local CA and one server certificate (localhost, 127.0.0.1)
# in .ladder/services/tls/, once. PostgreSQL (both), PgBouncer (client side),
# Redis (a second port) and ClickHouse (an HTTPS port) accept TLS beside plain
# text, so the plain URLs keep working. A service found running without TLS
# gets it: PostgreSQL and PgBouncer by a reload, Redis by CONFIG SET,
# ClickHouse by a restart.
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
# The TLS ports follow the plain ones unless set, so shifting the plain ports
# (a second clone) shifts these too: 16379 -> 16380, 18123 -> 18443.
REDIS_TLS_PORT="${LADDER_REDIS_TLS_PORT:-$((REDIS_PORT + 1))}"
CLICKHOUSE_HTTPS_PORT="${LADDER_CLICKHOUSE_HTTPS_PORT:-$((CLICKHOUSE_HTTP_PORT + 320))}"
TLS_DIR="$SERVICES_DIR/tls"
CA_FILE="$TLS_DIR/ca.crt"
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

# The TLS checks: each verifies the server's certificate against the local CA
# and the name `localhost`, as the operator's sslmode=verify-full does.
pg_tls_up() { [[ -f $CA_FILE ]] && "$PG_BIN/pg_isready" -q -d "host=localhost port=$1 sslmode=verify-full sslrootcert=$CA_FILE"; }
redis_tls_up() { [[ -f $CA_FILE ]] && redis-cli --tls --cacert "$CA_FILE" -h localhost -p "$REDIS_TLS_PORT" ping 2>/dev/null | grep -q PONG; }
clickhouse_tls_up() { [[ -f $CA_FILE ]] && curl -fsS --cacert "$CA_FILE" "https://localhost:$CLICKHOUSE_HTTPS_PORT/ping" >/dev/null 2>&1; }

# tls_valid: the CA and server certificate exist, chain up, match their keys
# and stay valid for another week.
tls_valid() {
  local f
  for f in ca.crt ca.key server.crt server.key; do [[ -s $TLS_DIR/$f ]] || return 1; done
  openssl verify -CAfile "$TLS_DIR/ca.crt" "$TLS_DIR/server.crt" >/dev/null 2>&1 || return 1
  openssl x509 -noout -checkend 604800 -in "$TLS_DIR/server.crt" >/dev/null 2>&1 || return 1
  openssl x509 -noout -checkhost localhost -in "$TLS_DIR/server.crt" 2>/dev/null | grep -q 'does match' || return 1
  openssl x509 -noout -checkip 127.0.0.1 -in "$TLS_DIR/server.crt" 2>/dev/null | grep -q 'does match' || return 1
  [[ "$(openssl x509 -noout -pubkey -in "$TLS_DIR/server.crt")" == "$(openssl pkey -pubout -in "$TLS_DIR/server.key" 2>/dev/null)" ]]
}

# make_tls: a local CA and one server certificate it signs (DNS:localhost,
# IP:127.0.0.1), made once; kept while valid. Keys are ours, mode 0600; the
# daemons that run as another user get their own copy (install_tls_files).
make_tls() {
  command -v openssl >/dev/null || die "openssl is missing (hack/toolchain.sh installs it)"
  if tls_valid; then return; fi
  log "making a local CA and server certificate in ${TLS_DIR#"$LADDER_ROOT/"}"
  local tmp
  mkdir -p "$TLS_DIR" && chmod 755 "$TLS_DIR"
  tmp="$(mktemp -d "$TLS_DIR/.new.XXXXXX")"
  cat > "$tmp/openssl.cnf" <<'CNF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = Ladder local development CA
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost,IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
CNF
  (
    umask 077
    openssl req -x509 -new -config "$tmp/openssl.cnf" -extensions ca -newkey rsa:2048 -nodes -sha256 \
      -days 3650 -keyout "$tmp/ca.key" -out "$tmp/ca.crt"
    openssl req -new -config "$tmp/openssl.cnf" -newkey rsa:2048 -nodes -subj /CN=localhost \
      -keyout "$tmp/server.key" -out "$tmp/server.csr"
    openssl x509 -req -in "$tmp/server.csr" -CA "$tmp/ca.crt" -CAkey "$tmp/ca.key" \
      -set_serial "0x$(openssl rand -hex 16)" -days 825 -sha256 \
      -extfile "$tmp/openssl.cnf" -extensions server -out "$tmp/server.crt"
  ) >"$tmp/openssl.log" 2>&1 || { cat "$tmp/openssl.log" >&2; rm -rf "$tmp"; die "openssl failed to make the certificates"; }
  chmod 644 "$tmp/ca.crt" "$tmp/server.crt"
  chmod 600 "$tmp/ca.key" "$tmp/server.key"
  mv -f "$tmp/ca.key" "$tmp/ca.crt" "$tmp/server.key" "$tmp/server.crt" "$TLS_DIR/"
  rm -rf "$tmp"
  tls_valid || die "the certificates in $TLS_DIR do not check out"
}

# install_tls_files DIR: copies the server certificate, its key and the CA into
# DIR for a daemon that runs as $DB_OWNER; the key is the daemon user's, mode
# 0600 (PostgreSQL refuses a key that others can read). Sets TLS_CHANGED when
# a file was new or different.
TLS_CHANGED=""
install_tls_files() {
  local dir="$1" f mode
  for f in server.crt server.key ca.crt; do
    if ! cmp -s "$TLS_DIR/$f" "$dir/$f"; then
      mode=644; [[ $f == *.key ]] && mode=600
      install -m "$mode" -o "$DB_OWNER" "$TLS_DIR/$f" "$dir/$f.tmp" && mv -f "$dir/$f.tmp" "$dir/$f"
      TLS_CHANGED=1
    fi
  done
}

# pg_tls_config DIR: TLS for the PostgreSQL data folder DIR (fresh or from an
# earlier run, primary or pg_basebackup's copy). Sets TLS_CHANGED if it did
# anything, so a running server gets a reload.
pg_tls_config() {
  local dir="$1"
  install_tls_files "$dir"
  if ! grep -qx "include_if_exists = 'ladder-tls.conf'" "$dir/postgresql.conf"; then
    printf "%s\n" "include_if_exists = 'ladder-tls.conf'" >> "$dir/postgresql.conf"
    TLS_CHANGED=1
  fi
  # Relative to the data folder. Plain connections still work: pg_hba's
  # `host` lines take both.
  printf '%s\n' "ssl = on" "ssl_cert_file = 'server.crt'" "ssl_key_file = 'server.key'" > "$dir/ladder-tls.conf.tmp"
  if ! cmp -s "$dir/ladder-tls.conf.tmp" "$dir/ladder-tls.conf"; then
    chown "$DB_OWNER" "$dir/ladder-tls.conf.tmp"; mv -f "$dir/ladder-tls.conf.tmp" "$dir/ladder-tls.conf"; TLS_CHANGED=1
  else
    rm -f "$dir/ladder-tls.conf.tmp"
  fi
  pg_durable_config "$dir"
}

# pg_durable_config DIR: durable writes, as production runs them (fsync,
# full-page writes, synchronous commit), so no test's claim that an
# acknowledged write survives rests on a setting production never has. A
# data folder made by an older `up` (fsync = off) gets them by the include,
# read last; they take effect on the reload that follows (sets TLS_CHANGED).
pg_durable_config() {
  local dir="$1"
  if ! grep -qx "include_if_exists = 'ladder-durability.conf'" "$dir/postgresql.conf"; then
    printf "%s\n" "include_if_exists = 'ladder-durability.conf'" >> "$dir/postgresql.conf"
    TLS_CHANGED=1
  fi
  printf '%s\n' "fsync = on" "full_page_writes = on" "synchronous_commit = on" > "$dir/ladder-durability.conf.tmp"
  if ! cmp -s "$dir/ladder-durability.conf.tmp" "$dir/ladder-durability.conf"; then
    chown "$DB_OWNER" "$dir/ladder-durability.conf.tmp"
    mv -f "$dir/ladder-durability.conf.tmp" "$dir/ladder-durability.conf"; TLS_CHANGED=1
  else
    rm -f "$dir/ladder-durability.conf.tmp"
  fi
}

start_primary() {
  local dir="$SERVICES_DIR/pg-primary"
  if pg_up "$PG_PRIMARY_PORT"; then
    log "postgres primary already running on :$PG_PRIMARY_PORT"
    pg_tls_reload "postgres primary" "$dir" "$PG_PRIMARY_PORT" "$SERVICES_DIR/pg-primary.log"
    return
  fi
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
fsync = on
synchronous_commit = on
full_page_writes = on
shared_buffers = 128MB
CONF
    cat > "$dir/pg_hba.conf" <<CONF
local all all trust
host all all 127.0.0.1/32 scram-sha-256
host replication all 127.0.0.1/32 scram-sha-256
CONF
  fi
  pg_tls_config "$dir"
  clean "${AS_DB[@]}" "$PG_BIN/pg_ctl" -D "$dir" -l "$SERVICES_DIR/pg-primary.log" -w -t 60 start >/dev/null \
    || { tail -n 25 "$SERVICES_DIR/pg-primary.log" >&2; die "postgres primary failed to start"; }
  wait_for "postgres primary" "$SERVICES_DIR/pg-primary.log" 30 pg_up "$PG_PRIMARY_PORT"
  wait_for "postgres primary (TLS)" "$SERVICES_DIR/pg-primary.log" 10 pg_tls_up "$PG_PRIMARY_PORT"
  # The application database (the bootstrap superuser is `ladder`).
  if ! as_db "$PG_BIN/psql" -h "$dir" -p "$PG_PRIMARY_PORT" -U "$DB_USER" -d postgres -tAc \
      "select 1 from pg_database where datname='$DB_NAME'" | grep -q 1; then
    as_db "$PG_BIN/createdb" -h "$dir" -p "$PG_PRIMARY_PORT" -U "$DB_USER" "$DB_NAME"
  fi
  log "postgres primary on 127.0.0.1:$PG_PRIMARY_PORT (TLS too)"
}

# pg_tls_reload LABEL DIR PORT LOGFILE: TLS for a PostgreSQL server that already
# runs (started by an older `up`): write the settings, reload, check.
pg_tls_reload() {
  local label="$1" dir="$2" port="$3" logfile="$4"
  [[ -f $dir/PG_VERSION ]] || { warn "$label on :$port is not ours ($dir); leaving its TLS alone"; return; }
  TLS_CHANGED=""
  pg_tls_config "$dir"
  if [[ -n $TLS_CHANGED ]] || ! pg_tls_up "$port"; then
    log "$label: loading the TLS settings (reload)"
    as_db "$PG_BIN/pg_ctl" -D "$dir" reload >/dev/null
  fi
  wait_for "$label (TLS)" "$logfile" 10 pg_tls_up "$port"
}

start_replica() {
  local dir="$SERVICES_DIR/pg-replica"
  if pg_up "$PG_REPLICA_PORT"; then
    log "postgres replica already running on :$PG_REPLICA_PORT"
    pg_tls_reload "postgres replica" "$dir" "$PG_REPLICA_PORT" "$SERVICES_DIR/pg-replica.log"
    return
  fi
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
    # The primary's TLS settings and files came along; pg_tls_config checks.
  fi
  pg_tls_config "$dir"
  clean "${AS_DB[@]}" "$PG_BIN/pg_ctl" -D "$dir" -l "$SERVICES_DIR/pg-replica.log" -w -t 60 start >/dev/null \
    || { tail -n 25 "$SERVICES_DIR/pg-replica.log" >&2; die "postgres replica failed to start"; }
  wait_for "postgres replica" "$SERVICES_DIR/pg-replica.log" 30 pg_up "$PG_REPLICA_PORT"
  wait_for "postgres replica (TLS)" "$SERVICES_DIR/pg-replica.log" 10 pg_tls_up "$PG_REPLICA_PORT"
  log "postgres streaming replica on 127.0.0.1:$PG_REPLICA_PORT (TLS too)"
}

# Transaction pooling, as production runs it. Debian's 1.18 has no
# prepared-statement support in this mode: the app must not reuse server-side
# prepared statements across transactions. TLS on the client side only
# (`allow`: plain clients still connect); to PostgreSQL it is loopback, plain.
pgbouncer_ini() {
  local dir="$1"
  cat <<CONF
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
client_tls_sslmode = allow
client_tls_key_file = $dir/server.key
client_tls_cert_file = $dir/server.crt
client_tls_ca_file = $dir/ca.crt
CONF
}

start_pgbouncer() {
  local dir="$SERVICES_DIR/pgbouncer" pid
  mkdir -p "$dir"
  TLS_CHANGED=""
  install_tls_files "$dir"
  if [[ -f $dir/pgbouncer.pid ]] && pid="$(cat "$dir/pgbouncer.pid")" && kill -0 "$pid" 2>/dev/null; then
    log "pgbouncer already running on :$PGBOUNCER_PORT"
    # One started by an older `up` has no TLS yet: a reload (SIGHUP) adds it.
    pgbouncer_ini "$dir" > "$dir/pgbouncer.ini.new"
    if ! cmp -s "$dir/pgbouncer.ini.new" "$dir/pgbouncer.ini"; then
      chown "$DB_OWNER" "$dir/pgbouncer.ini.new"; mv -f "$dir/pgbouncer.ini.new" "$dir/pgbouncer.ini"; TLS_CHANGED=1
    else
      rm -f "$dir/pgbouncer.ini.new"
    fi
    if [[ -n $TLS_CHANGED ]] || ! pg_tls_up "$PGBOUNCER_PORT"; then
      log "pgbouncer: loading the TLS settings (reload)"
      kill -HUP "$pid"
    fi
    wait_for "pgbouncer (TLS)" "$dir/pgbouncer.log" 10 pg_tls_up "$PGBOUNCER_PORT"
    return
  fi
  pgbouncer_ini "$dir" > "$dir/pgbouncer.ini"
  printf '"%s" "%s"\n' "$DB_USER" "$DB_PASSWORD" > "$dir/userlist.txt"
  chown -R "$DB_OWNER" "$dir"; chmod 600 "$dir/userlist.txt"
  clean "${AS_DB[@]}" pgbouncer -d "$dir/pgbouncer.ini" >"$dir/start.log" 2>&1 \
    || { cat "$dir/start.log" >&2; tail "$dir/pgbouncer.log" >&2 || true; die "pgbouncer failed to start"; }
  wait_for "pgbouncer" "$dir/pgbouncer.log" 20 pg_up "$PGBOUNCER_PORT"
  wait_for "pgbouncer (TLS)" "$dir/pgbouncer.log" 10 pg_tls_up "$PGBOUNCER_PORT"
  log "pgbouncer (transaction pooling) on 127.0.0.1:$PGBOUNCER_PORT (TLS too)"
}

start_redis() {
  local dir="$SERVICES_DIR/redis"
  local tls=(--tls-cert-file "$TLS_DIR/server.crt" --tls-key-file "$TLS_DIR/server.key"
             --tls-ca-cert-file "$TLS_DIR/ca.crt" --tls-auth-clients no)
  if redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; then
    log "redis already running on :$REDIS_PORT"
    if ! redis_tls_up; then
      # Started by an older `up` (or the certificate is new): Redis 7 takes
      # the TLS port and files at runtime.
      log "redis: loading the TLS settings, port :$REDIS_TLS_PORT (CONFIG SET)"
      local args=() i
      for ((i = 0; i < ${#tls[@]}; i += 2)); do args+=("${tls[i]#--}" "${tls[i+1]}"); done
      redis-cli -p "$REDIS_PORT" config set "${args[@]}" tls-port "$REDIS_TLS_PORT" >/dev/null
      wait_for "redis (TLS)" "$dir/redis.log" 10 redis_tls_up
    fi
    return
  fi
  mkdir -p "$dir"
  clean redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --tls-port "$REDIS_TLS_PORT" "${tls[@]}" \
    --dir "$dir" --daemonize yes \
    --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --save "" --appendonly no --protected-mode yes
  wait_for "redis" "$dir/redis.log" 20 bash -c "redis-cli -p $REDIS_PORT ping | grep -q PONG"
  wait_for "redis (TLS)" "$dir/redis.log" 10 redis_tls_up
  log "redis on 127.0.0.1:$REDIS_PORT, TLS on :$REDIS_TLS_PORT"
}

start_clickhouse() {
  local dir="$SERVICES_DIR/clickhouse"
  if curl -fsS "http://127.0.0.1:$CLICKHOUSE_HTTP_PORT/ping" >/dev/null 2>&1; then
    if clickhouse_tls_up; then log "clickhouse already running on :$CLICKHOUSE_HTTP_PORT"; return; fi
    # Started by an older `up` (no HTTPS port, or an old certificate): 18.16
    # reads both only at start, so restart it. Its data stays.
    log "clickhouse: restarting it for HTTPS on :$CLICKHOUSE_HTTPS_PORT"
    stop_pidfile clickhouse "$dir/clickhouse.pid"
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
    <https_port>$CLICKHOUSE_HTTPS_PORT</https_port>
    <openSSL>
        <server>
            <certificateFile>$TLS_DIR/server.crt</certificateFile>
            <privateKeyFile>$TLS_DIR/server.key</privateKeyFile>
            <caConfig>$TLS_DIR/ca.crt</caConfig>
            <verificationMode>none</verificationMode>
            <loadDefaultCAFile>false</loadDefaultCAFile>
            <cacheSessions>true</cacheSessions>
            <disableProtocols>sslv2,sslv3,tlsv1,tlsv1_1</disableProtocols>
            <preferServerCiphers>true</preferServerCiphers>
        </server>
    </openSSL>
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
        <!-- The user the operator renders for the app (tests start the app with that wiring). -->
        <ladder>
            <password>ladder</password>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </ladder>
    </users>
    <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>
      <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
CONF
  # Debian's 18.16 does not write --pid-file reliably: record the pid ourselves.
  daemon "$dir/clickhouse.pid" "$dir/stdout.log" /usr/sbin/clickhouse-server --config-file="$dir/config.xml"
  wait_for "clickhouse" "$dir/clickhouse.err.log" 60 curl -fsS "http://127.0.0.1:$CLICKHOUSE_HTTP_PORT/ping"
  wait_for "clickhouse (HTTPS)" "$dir/clickhouse.err.log" 20 clickhouse_tls_up
  log "clickhouse on 127.0.0.1: HTTP :$CLICKHOUSE_HTTP_PORT, HTTPS :$CLICKHOUSE_HTTPS_PORT"
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

pg_tls_url() { # pg_tls_url PORT
  echo "postgres://$DB_USER:$DB_PASSWORD@localhost:$1/$DB_NAME?sslmode=verify-full&sslrootcert=$CA_FILE"
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
# TLS, verified against the local CA with the name localhost (quoted: '&').
LADDER_TLS_CA_FILE=$CA_FILE
LADDER_PG_PRIMARY_TLS_URL='$(pg_tls_url "$PG_PRIMARY_PORT")'
LADDER_PG_REPLICA_TLS_URL='$(pg_tls_url "$PG_REPLICA_PORT")'
LADDER_PGBOUNCER_TLS_URL='$(pg_tls_url "$PGBOUNCER_PORT")'
LADDER_REDIS_TLS_URL=rediss://localhost:$REDIS_TLS_PORT
LADDER_CLICKHOUSE_HTTPS_URL=https://localhost:$CLICKHOUSE_HTTPS_PORT
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
  make_tls
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
  local tls
  pg_st() { # pg_st LABEL PORT
    if ! pg_up "$2"; then printf '%-18sdown\n' "$1"; return; fi
    tls="(no TLS)"; pg_tls_up "$2" && tls="(TLS too)"
    printf '%-18sup  :%s %s\n' "$1" "$2" "$tls"
  }
  pg_st "postgres primary" "$PG_PRIMARY_PORT"
  pg_st "postgres replica" "$PG_REPLICA_PORT"
  pg_st pgbouncer "$PGBOUNCER_PORT"
  if redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; then
    tls="no TLS :$REDIS_TLS_PORT"; redis_tls_up && tls="TLS :$REDIS_TLS_PORT"
    echo "redis             up  :$REDIS_PORT, $tls"
  else
    echo "redis             down"
  fi
  if curl -fsS "http://127.0.0.1:$CLICKHOUSE_HTTP_PORT/ping" >/dev/null 2>&1; then
    tls="no HTTPS :$CLICKHOUSE_HTTPS_PORT"; clickhouse_tls_up && tls="HTTPS :$CLICKHOUSE_HTTPS_PORT"
    echo "clickhouse        up  :$CLICKHOUSE_HTTP_PORT, $tls"
  else
    echo "clickhouse        down"
  fi
  (exec 3<>"/dev/tcp/127.0.0.1/$VARNISH_PORT") 2>/dev/null && echo "varnish           up  :$VARNISH_PORT" || echo "varnish           down"
}

# check-tls: what a client of the operator's TLS wiring does, with the real
# CLIs: verify-full / --cacert against the local CA, and plain text beside it.
cmd_check_tls() {
  local failed=0 out plain="postgres://$DB_USER:$DB_PASSWORD@127.0.0.1"
  [[ -f $CA_FILE ]] || die "no CA at $CA_FILE: run hack/services.sh up"
  check() { # check LABEL EXPECTED CMD...: runs CMD, matches its output to the regex EXPECTED
    local label="$1" want="$2"; shift 2
    out="$("$@" 2>&1 | tr '\n' ' ' | sed 's/ *$//')" || true
    if [[ $out =~ ^($want)$ ]]; then printf 'ok    %-34s %s\n' "$label" "$out"
    else printf 'FAIL  %-34s %s (wanted %s)\n' "$label" "$out" "$want"; failed=1; fi
  }
  local q='select ssl from pg_stat_ssl where pid = pg_backend_pid()'
  check "postgres primary  TLS :$PG_PRIMARY_PORT" t "$PG_BIN/psql" "$(pg_tls_url "$PG_PRIMARY_PORT")" -tAc "$q"
  check "postgres primary  plain :$PG_PRIMARY_PORT" f "$PG_BIN/psql" "$plain:$PG_PRIMARY_PORT/$DB_NAME?sslmode=disable" -tAc "$q"
  check "postgres replica  TLS :$PG_REPLICA_PORT" t "$PG_BIN/psql" "$(pg_tls_url "$PG_REPLICA_PORT")" -tAc "$q"
  check "postgres replica  plain :$PG_REPLICA_PORT" f "$PG_BIN/psql" "$plain:$PG_REPLICA_PORT/$DB_NAME?sslmode=disable" -tAc "$q"
  # PgBouncer: its admin console lists our own client connection with its TLS
  # version and cipher (empty when plain).
  pgbouncer_own_tls() { "$PG_BIN/psql" "$1" -tA -F'|' -c 'show clients' | awk -F'|' '$3 == "pgbouncer" { print $17 }'; }
  check "pgbouncer         TLS :$PGBOUNCER_PORT" 'TLSv1\.[23]/.+' pgbouncer_own_tls "$(pg_tls_url "$PGBOUNCER_PORT" | sed "s|/$DB_NAME?|/pgbouncer?|")"
  check "pgbouncer         TLS query :$PGBOUNCER_PORT" 1 "$PG_BIN/psql" "$(pg_tls_url "$PGBOUNCER_PORT")" -tAc 'select 1'
  check "pgbouncer         plain :$PGBOUNCER_PORT" 1 "$PG_BIN/psql" "$plain:$PGBOUNCER_PORT/$DB_NAME?sslmode=disable" -tAc 'select 1'
  check "redis             TLS :$REDIS_TLS_PORT" PONG redis-cli --tls --cacert "$CA_FILE" -h localhost -p "$REDIS_TLS_PORT" ping
  check "redis             plain :$REDIS_PORT" PONG redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping
  check "clickhouse        HTTPS :$CLICKHOUSE_HTTPS_PORT" 'Ok\.' curl -fsS --cacert "$CA_FILE" "https://localhost:$CLICKHOUSE_HTTPS_PORT/ping"
  check "clickhouse        HTTPS query" 1 curl -fsS --cacert "$CA_FILE" "https://localhost:$CLICKHOUSE_HTTPS_PORT/?query=SELECT%201"
  check "clickhouse        HTTP :$CLICKHOUSE_HTTP_PORT" 'Ok\.' curl -fsS "http://127.0.0.1:$CLICKHOUSE_HTTP_PORT/ping"
  return "$failed"
}

mkdir -p "$LADDER_STATE"
case "${1:-}" in
  # One `up` or `down` at a time: a second `up` waits, then finds everything
  # running. flock -o keeps the lock out of the daemons we start.
  up|down) exec flock -o "$LADDER_STATE/services.lock" "$0" "__$1" ;;
  __up) cmd_up ;;
  __down) cmd_down ;;
  status) cmd_status ;;
  check-tls) cmd_check_tls ;;
  *) echo "usage: $0 up|down|status|check-tls" >&2; exit 2 ;;
esac
