#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for development and tests (loopback only, trust auth).
#
# Usage: scripts/postgres.sh start | stop [--keep] | status | env
#
#   start         Create the cluster if needed (initdb), start it on a free loopback port,
#                 create the database `txfast`, print its URL on stdout and write it to
#                 $TXFAST_PG_DIR/env (TXFAST_PG_URL=…, TXFAST_PG_PORT=…). A cluster stopped with --keep restarts with its data, on the same
#                 port. Does nothing but print the URL when the cluster already runs.
#   stop          Fast shutdown, then remove the directory.
#   stop --keep   Fast shutdown, keep the data (a later `start` resumes the same cluster).
#   status        Print the state; exit 0 when running, 3 when stopped or absent.
#   env           Print `export TXFAST_PG_URL=…` lines for `eval "$(scripts/postgres.sh env)"`.
#
# Environment:
#   TXFAST_PG_DIR      Cluster directory (data, socket, log, env file); default
#                      /tmp/txfast-pg-$UID. As root it must be reachable by the server's user.
#   TXFAST_PG_PORT     Port for a new cluster (default: a free one chosen at random).
#   TXFAST_PG_BIN      Directory holding initdb, pg_ctl and postgres (default: PATH, then the
#                      newest /usr/lib/postgresql/*/bin).
#   TXFAST_PG_OPTIONS  Extra server options, e.g. "-c fsync=off -c shared_buffers=256MB".
#   TXFAST_PG_OS_USER  System user running the server when invoked as root (default postgres).
#
# When initdb is missing and the script runs as root, Debian's `postgresql` package is
# installed with apt-get (without its default cluster). initdb and postgres refuse to run as
# root, so as root the server runs as the `postgres` system user and owns the directory.
set -euo pipefail

dir=${TXFAST_PG_DIR:-/tmp/txfast-pg-$UID}
dir=${dir%/}
data=$dir/data
log=$dir/postgres.log
envfile=$dir/env
portfile=$dir/port
marker=$dir/.txfast-pg
lock=${TMPDIR:-/tmp}/txfast-pg-$(printf '%s' "$dir" | cksum | cut -d' ' -f1).lock
db=txfast
is_root=false
[ "$(id -u)" -eq 0 ] && is_root=true
os_user=${TXFAST_PG_OS_USER:-postgres}
$is_root || os_user=$(id -un)
bindir=""

die() { echo "postgres.sh: error: $*" >&2; exit 1; }
note() { echo "postgres.sh: $*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2fs", b - a }'; }

usage() {
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# Run a server-side command as the cluster's owner (from /, which that user can enter),
# without the lock's descriptor (the server must not inherit it).
as_owner() {
  if $is_root; then
    (cd / && runuser -u "$os_user" -- "$@" 9>&-)
  else
    "$@" 9>&-
  fi
}

find_bindir() {
  local d
  if [ -n "${TXFAST_PG_BIN:-}" ]; then
    [ -x "$TXFAST_PG_BIN/initdb" ] || die "TXFAST_PG_BIN=$TXFAST_PG_BIN has no executable initdb"
    echo "$TXFAST_PG_BIN"; return 0
  fi
  if d=$(command -v initdb 2>/dev/null); then
    d=$(dirname "$(readlink -f "$d")")
    if [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ]; then echo "$d"; return 0; fi
  fi
  d=$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/initdb' 2>/dev/null \
        | sort -V | tail -n 1)
  if [ -n "$d" ]; then dirname "$d"; return 0; fi
  return 1
}

install_server() {
  $is_root || die "PostgreSQL server binaries (initdb) not found; install them (Debian: sudo apt-get install postgresql) or set TXFAST_PG_BIN"
  command -v apt-get >/dev/null 2>&1 \
    || die "PostgreSQL server binaries (initdb) not found and apt-get is not available; install PostgreSQL or set TXFAST_PG_BIN"
  local t0; t0=$(now)
  note "initdb not found: installing Debian's postgresql package (apt-get)…"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2 || die "apt-get update failed"
  apt-get install -y -q postgresql-common >&2 || die "apt-get install postgresql-common failed"
  # Only the clusters this script creates: no default cluster on port 5432.
  local conf=/etc/postgresql-common/createcluster.conf edited
  if [ -f "$conf" ]; then
    edited=$(sed -r 's/^#?[[:space:]]*create_main_cluster[[:space:]]*=.*/create_main_cluster = false/' "$conf") \
      || die "cannot read $conf"
    printf '%s\n' "$edited" >"$conf" || die "cannot write $conf"
  fi
  apt-get install -y -q postgresql >&2 || die "apt-get install postgresql failed"
  note "installed postgresql in $(since "$t0")"
}

ensure_bindir() {
  [ -n "$bindir" ] && return 0
  if ! bindir=$(find_bindir); then
    install_server
    bindir=$(find_bindir) || die "postgresql is installed but initdb was not found under /usr/lib/postgresql/*/bin"
  fi
  local tool
  for tool in initdb pg_ctl postgres pg_isready psql; do
    [ -x "$bindir/$tool" ] || die "$bindir/$tool is missing (set TXFAST_PG_BIN to a complete PostgreSQL bin directory)"
  done
  if $is_root; then
    id -u "$os_user" >/dev/null 2>&1 \
      || die "running as root needs the system user '$os_user' to own the server (Debian's postgresql package creates 'postgres'); set TXFAST_PG_OS_USER"
    command -v runuser >/dev/null 2>&1 || die "runuser (util-linux) is required when running as root"
  fi
}

db_user() {
  if [ -f "$envfile" ]; then
    sed -n 's/^TXFAST_PG_USER=//p' "$envfile"
  else
    echo "$os_user"
  fi
}

url_for() { echo "postgresql://$(db_user)@127.0.0.1:$1/$db"; }

is_running() {
  [ -f "$data/PG_VERSION" ] || return 1
  ensure_bindir
  as_owner "$bindir/pg_ctl" status -D "$data" >/dev/null 2>&1
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pick_port() {
  local p _
  for _ in $(seq 1 50); do
    p=$(( 20000 + (RANDOM * 32768 + RANDOM) % 40000 ))
    port_in_use "$p" || { echo "$p"; return 0; }
  done
  die "no free loopback port found"
}

prepare_dir() {
  if [ -d "$dir" ] && [ ! -f "$marker" ] && [ -n "$(ls -A "$dir")" ]; then
    die "$dir exists and is not a txfast PostgreSQL directory; choose another TXFAST_PG_DIR"
  fi
  mkdir -p "$dir"
  touch "$marker"
  chmod 700 "$dir"
  if $is_root; then
    chown "$os_user:" "$dir"
    as_owner test -w "$dir" \
      || die "user '$os_user' cannot write $dir (a parent directory is not searchable by it); use a directory under /tmp"
  fi
}

write_env() {
  local port=$1 user=$2 tmp
  tmp=$(mktemp "$dir/.env.XXXXXX")
  {
    echo "TXFAST_PG_URL=postgresql://$user@127.0.0.1:$port/$db"
    echo "TXFAST_PG_DIR=$dir"
    echo "TXFAST_PG_PORT=$port"
    echo "TXFAST_PG_USER=$user"
  } >"$tmp"
  chmod 644 "$tmp"
  mv -f "$tmp" "$envfile"
}

cmd_start() {
  ensure_bindir
  prepare_dir
  local t0 port user pinned=false attempt
  if is_running; then
    port=$(cat "$portfile")
    note "already running ($dir)"
    url_for "$port"
    return 0
  fi
  user=$(db_user)
  if [ ! -f "$data/PG_VERSION" ]; then
    [ -e "$data" ] && [ -n "$(ls -A "$data" 2>/dev/null)" ] \
      && die "$data is not empty but holds no cluster; remove $dir"
    t0=$(now)
    as_owner "$bindir/initdb" -D "$data" -U "$user" -A trust -E UTF8 --no-locale -N \
      >"$dir/initdb.log" 2>&1 || { tail -n 20 "$dir/initdb.log" >&2; die "initdb failed (log: $dir/initdb.log)"; }
    cat >>"$data/postgresql.conf" <<EOF

# txfast throwaway cluster
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
timezone = 'UTC'
log_timezone = 'UTC'
EOF
    rm -f "$portfile" "$envfile"
    note "initdb $(since "$t0") ($("$bindir/postgres" --version))"
  fi
  if [ -f "$portfile" ]; then
    port=$(cat "$portfile"); pinned=true
    port_in_use "$port" && die "port $port of the kept cluster is taken by another process; free it or remove $dir"
  elif [ -n "${TXFAST_PG_PORT:-}" ]; then
    port=$TXFAST_PG_PORT; pinned=true
    port_in_use "$port" && die "TXFAST_PG_PORT=$port is already in use"
  else
    port=$(pick_port)
  fi
  t0=$(now)
  for attempt in 1 2 3 4 5; do
    : >"$log" 2>/dev/null || true
    $is_root && chown "$os_user:" "$log"
    if as_owner "$bindir/pg_ctl" start -D "$data" -l "$log" -w -t 60 \
        -o "-p $port ${TXFAST_PG_OPTIONS:-}" >/dev/null; then
      break
    fi
    if ! $pinned && grep -q -e 'could not bind' -e 'already in use' "$log" 2>/dev/null \
        && [ "$attempt" -lt 5 ]; then
      note "port $port was taken meanwhile; trying another"
      port=$(pick_port)
      continue
    fi
    tail -n 20 "$log" >&2 || true
    die "the server did not start (log: $log)"
  done
  echo "$port" >"$portfile"
  "$bindir/pg_isready" -q -h 127.0.0.1 -p "$port" -t 30 \
    || { tail -n 20 "$log" >&2; die "the server started but does not answer on 127.0.0.1:$port"; }
  if [ "$("$bindir/psql" -X -q -t -A -h 127.0.0.1 -p "$port" -U "$user" -d postgres \
        -c "SELECT 1 FROM pg_database WHERE datname = '$db'")" != 1 ]; then
    "$bindir/psql" -X -q -h 127.0.0.1 -p "$port" -U "$user" -d postgres \
      -c "CREATE DATABASE $db" >/dev/null || die "cannot create database $db"
  fi
  write_env "$port" "$user"
  note "started in $(since "$t0") on 127.0.0.1:$port (dir $dir)"
  url_for "$port"
}

cmd_stop() {
  local keep=false
  case "${1:-}" in
    "") ;;
    --keep) keep=true ;;
    *) usage ;;
  esac
  if [ ! -d "$dir" ]; then
    rm -f "$lock"
    note "nothing to stop ($dir does not exist)"
    return 0
  fi
  [ -f "$marker" ] || die "$dir is not a txfast PostgreSQL directory; not touching it"
  if is_running; then
    local t0; t0=$(now)
    if ! as_owner "$bindir/pg_ctl" stop -D "$data" -m fast -w -t 60 >/dev/null; then
      note "fast shutdown timed out; stopping immediately"
      as_owner "$bindir/pg_ctl" stop -D "$data" -m immediate -w -t 30 >/dev/null \
        || die "cannot stop the server in $data"
    fi
    note "stopped in $(since "$t0")"
  fi
  if $keep; then
    note "data kept in $dir"
  else
    rm -rf "$dir"
    rm -f "$lock"
    note "removed $dir"
  fi
}

cmd_status() {
  if [ ! -f "$data/PG_VERSION" ]; then
    echo "absent: no cluster in $dir"
    return 3
  fi
  if is_running; then
    echo "running: $(url_for "$(cat "$portfile")") (dir $dir)"
    return 0
  fi
  echo "stopped: data kept in $dir"
  return 3
}

cmd_env() {
  [ -f "$envfile" ] || die "no cluster in $dir; run: scripts/postgres.sh start"
  sed 's/^/export /' "$envfile"
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  start|status|env) [ $# -eq 0 ] || usage ;;
  stop) [ $# -eq 0 ] || { [ $# -eq 1 ] && [ "$1" = --keep ]; } || usage ;;
  *) usage ;;
esac
case "$dir" in
  *[[:space:]\'\"]*) die "TXFAST_PG_DIR must not contain spaces or quotes: '$dir'" ;;
  /?*) ;;
  *) die "TXFAST_PG_DIR must be an absolute path: '$dir'" ;;
esac
# One invocation at a time per directory.
if command -v flock >/dev/null 2>&1 && [ "$cmd" != env ] && [ "$cmd" != status ]; then
  exec 9>>"$lock"
  flock -w 300 9 || die "another postgres.sh holds $lock"
fi
case "$cmd" in
  start) cmd_start ;;
  stop) cmd_stop "$@" ;;
  status) cmd_status ;;
  env) cmd_env ;;
esac
