# shellcheck shell=bash
# Shared settings for the hack/ scripts. Source it; don't run it.
#
# Versions are the cache key: bump one and the next `make cluster-up` builds
# the new binaries into a fresh folder, leaving the old ones alone.

LADDER_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export LADDER_ROOT

K8S_VERSION="${K8S_VERSION:-v1.37.2}"
K8S_STAGING_VERSION="${K8S_STAGING_VERSION:-v0.37.2}"
ETCD_VERSION="${ETCD_VERSION:-v3.7.0}"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"

# Heavy caches live outside the clone so that CI's fresh clone reuses them.
LADDER_CACHE="${LADDER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ladder}"
LADDER_BIN="${LADDER_BIN:-$LADDER_CACHE/bin/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION}"
export LADDER_CACHE LADDER_BIN

# Runtime state: git-ignored, inside the clone.
LADDER_STATE="$LADDER_ROOT/.ladder"
CLUSTER_DIR="$LADDER_STATE/cluster"
SERVICES_DIR="$LADDER_STATE/services"

log()  { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
warn() { printf '\033[1;33mwarning:\033[0m %s\n' "$*" >&2; }
die()  { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }

# run_with_heartbeat LABEL LOGFILE CMD...: runs CMD with its output in LOGFILE
# and prints a line every 30 s so a long build never looks hung. On failure it
# prints the log's tail.
run_with_heartbeat() {
  local label="$1" logfile="$2"; shift 2
  local start=$SECONDS
  "$@" >"$logfile" 2>&1 &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 5
    if (( (SECONDS - start) % 30 < 5 )) && kill -0 "$pid" 2>/dev/null; then
      local last
      last="$(tail -n 1 "$logfile" 2>/dev/null | cut -c1-100)"
      printf '    ... %s: still going, %dm%02ds elapsed%s\n' "$label" $(( (SECONDS-start)/60 )) $(( (SECONDS-start)%60 )) "${last:+ (last: $last)}" >&2
    fi
  done
  if ! wait "$pid"; then
    printf '\033[1;31merror:\033[0m %s failed; last lines of %s:\n' "$label" "$logfile" >&2
    tail -n 30 "$logfile" >&2
    return 1
  fi
  printf '    %s: done in %dm%02ds\n' "$label" $(( (SECONDS-start)/60 )) $(( (SECONDS-start)%60 )) >&2
}

# close_inherited_fds: closes every descriptor above 2 of the current
# (sub)shell, so a daemon started from it never keeps our lock file or a
# caller's pipe open. Call it inside a subshell that then execs.
close_inherited_fds() {
  local fd
  for fd in /proc/$BASHPID/fd/*; do
    fd="${fd##*/}"
    if (( fd > 2 )); then eval "exec $fd>&-" 2>/dev/null || true; fi
  done
}

# clean CMD...: runs CMD (which daemonizes itself) without our descriptors.
clean() {
  ( close_inherited_fds; exec "$@" )
}

# daemon PIDFILE LOGFILE CMD...: starts CMD detached (own session, stdin from
# /dev/null, output to LOGFILE, no inherited descriptors) and records its pid.
# The backgrounded subshell execs CMD, so the recorded pid is CMD's own and
# stopping it stops exactly that process.
daemon() {
  local pidfile="$1" logfile="$2"; shift 2
  ( close_inherited_fds; exec setsid "$@" ) </dev/null >"$logfile" 2>&1 &
  echo $! > "$pidfile"
}
