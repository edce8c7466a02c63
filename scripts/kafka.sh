#!/usr/bin/env bash
# A real Apache Kafka broker for development and tests: one KRaft node that is both
# controller and broker, listening on 127.0.0.1 only. No Docker: the broker's jars come from
# Maven Central (resolved once with mvn into a cache) and it runs on the local java.
#
# Usage: scripts/kafka.sh COMMAND
#   start         start the broker (or find it running) and print its bootstrap address;
#                 if a previous `stop --keep` left data behind, restart on the same data and ports
#   stop [--keep] stop the broker (SIGTERM, then SIGKILL after a timeout); remove its data
#                 unless --keep is given
#   status        exit 0 if the broker is running (and say where), 1 otherwise
#   env           print `export KAFKA_BOOTSTRAP=...` lines for a running broker (for eval)
#   fetch         only resolve the jars into the cache
#   logs [N]      print the last N (default 100) lines of the broker's log
#
# Environment (all optional):
#   TXFAST_CACHE                 cache root (default ~/.cache/txfast); jars go to
#                                $TXFAST_CACHE/kafka-4.4.0/libs
#   TXFAST_KAFKA_DIR             state directory: config, data, logs, pid and env files
#                                (default /tmp/txfast-kafka-$UID)
#   TXFAST_KAFKA_PORT            PLAINTEXT (client) port for a fresh broker (default: a free one)
#   TXFAST_KAFKA_CONTROLLER_PORT CONTROLLER port for a fresh broker (default: a free one)
#   TXFAST_KAFKA_HEAP            maximum JVM heap (default 1g)
#   TXFAST_KAFKA_JVM_OPTS        extra JVM options
#   TXFAST_KAFKA_START_TIMEOUT   seconds to wait for the broker to answer (default 120)
#   TXFAST_KAFKA_STOP_TIMEOUT    seconds to wait after SIGTERM before SIGKILL (default 30)
#   PYTHON                       Python used for small helpers (default python3); if it can
#                                import confluent_kafka, start also checks that the broker
#                                answers a metadata request
#
# Progress and errors go to stderr; stdout carries only the bootstrap address (start) or
# the requested output (status, env, logs).
set -euo pipefail

readonly KAFKA_VERSION=4.4.0
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly here
readonly pom=$here/kafka/pom.xml
readonly log4j_config=$here/kafka/log4j2.properties

cache_dir=${TXFAST_CACHE:-${HOME:-/tmp}/.cache/txfast}/kafka-$KAFKA_VERSION
readonly cache_dir
readonly libs=$cache_dir/libs
state=${TXFAST_KAFKA_DIR:-/tmp/txfast-kafka-${UID:-$(id -u)}}
state=${state%/}
readonly state
readonly props=$state/server.properties
readonly data_dir=$state/data
readonly log_dir=$state/logs
readonly pid_file=$state/kafka.pid
readonly env_file=$state/kafka.env
readonly server_log=$log_dir/server.log
readonly console_log=$log_dir/kafka.out

python=${PYTHON:-python3}
heap=${TXFAST_KAFKA_HEAP:-1g}
start_timeout=${TXFAST_KAFKA_START_TIMEOUT:-120}
stop_timeout=${TXFAST_KAFKA_STOP_TIMEOUT:-30}

# --- small helpers -------------------------------------------------------------------------

note() { echo "kafka.sh: $*" >&2; }
die() {
    echo "kafka.sh: error: $*" >&2
    exit 1
}

# Print the last lines of the broker's logs (and of the files given) to stderr.
show_logs() {
    local f
    for f in "$console_log" "$server_log" "$@"; do
        if [[ -s $f ]]; then
            echo "---- last lines of $f" >&2
            tail -n 40 "$f" >&2
        fi
    done
}

need_java() {
    command -v java >/dev/null 2>&1 \
        || die "java not found on PATH: install a JDK or JRE 17+ (e.g. apt-get install openjdk-17-jre-headless)"
    command -v "$python" >/dev/null 2>&1 \
        || die "$python not found: set PYTHON to a Python 3 interpreter"
}

# Take an exclusive lock on FILE (held on file descriptor FD, 8 or 9) for the rest of the
# script, so two concurrent starts (or a start and a stop) do not race. Uses flock(1) when
# it is there. The broker is started with both descriptors closed, so it holds no lock.
lock() {
    command -v flock >/dev/null 2>&1 || return 0
    mkdir -p "$(dirname "$1")"
    eval "exec $2>\"\$1\""
    flock -w 600 "$2" || die "timed out waiting for the lock $1"
}

# The running broker's pid, or nothing. A pid counts only if that process is a Kafka broker
# started with this state directory's config (the pid file may be stale and the pid reused).
broker_pid() {
    local pid
    [[ -f $pid_file ]] || return 0
    pid=$(<"$pid_file")
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "kafka.Kafka $props"; then
        echo "$pid"
    fi
}

# Read KEY from the env file (KEY=VALUE lines).
env_value() {
    [[ -f $env_file ]] || return 0
    sed -n "s/^$1=//p" "$env_file" | tail -n 1
}

# Exit 0 if nothing listens on 127.0.0.1:PORT and it can be bound (SO_REUSEADDR, as a Java
# server socket does on Linux, so a port in TIME_WAIT after a restart counts as free).
port_free() {
    "$python" - "$1" <<'EOF'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
finally:
    s.close()
EOF
}

# Print two distinct free loopback ports.
free_ports() {
    "$python" - <<'EOF'
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
EOF
}

# A random KRaft cluster id: a UUID in URL-safe base64 without padding (as Kafka's own
# `random-uuid` prints), not starting with '-' so it cannot be mistaken for an option.
cluster_id() {
    "$python" - <<'EOF'
import base64, uuid
while True:
    cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
    if not cid.startswith("-"):
        print(cid)
        break
EOF
}

# Remove the state directory, but only if it looks like one this script made (or is empty):
# TXFAST_KAFKA_DIR may point anywhere.
remove_state() {
    [[ -e $state ]] || return 0
    case $state in
        "" | / | "${HOME:-/root}" | /tmp | /root) die "refusing to remove $state" ;;
    esac
    if [[ -f $props || -f $env_file || -z $(ls -A "$state") ]]; then
        rm -rf "$state"
    else
        die "refusing to remove $state: it is not a directory made by kafka.sh (no server.properties)"
    fi
}

# --- fetch: resolve the broker's jars once -------------------------------------------------

fetch() {
    [[ -f $libs/.complete ]] && return 0
    command -v mvn >/dev/null 2>&1 \
        || die "mvn not found on PATH: install Maven (e.g. apt-get install maven) to fetch Kafka $KAFKA_VERSION"
    command -v java >/dev/null 2>&1 || need_java
    lock "$cache_dir/.fetch.lock" 9
    [[ -f $libs/.complete ]] && return 0 # another process finished it meanwhile

    local tmp=$cache_dir/libs.tmp.$$ started=$SECONDS
    note "resolving Apache Kafka $KAFKA_VERSION from Maven Central into $libs (once)"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    if ! mvn -B -q -Dstyle.color=never -f "$pom" -Dkafka.version="$KAFKA_VERSION" \
        dependency:copy-dependencies -DoutputDirectory="$tmp" >"$cache_dir/mvn.log" 2>&1; then
        tail -n 30 "$cache_dir/mvn.log" >&2
        rm -rf "$tmp"
        die "mvn could not resolve org.apache.kafka:kafka_2.13:$KAFKA_VERSION (full log: $cache_dir/mvn.log)"
    fi
    [[ -f $tmp/kafka_2.13-$KAFKA_VERSION.jar ]] \
        || die "mvn finished but kafka_2.13-$KAFKA_VERSION.jar is missing from $tmp"
    touch "$tmp/.complete"
    rm -rf "$libs"
    mv "$tmp" "$libs"
    note "fetched $(find "$libs" -name '*.jar' | wc -l) jars in $((SECONDS - started)) s"
}

# --- configuration of a fresh broker -------------------------------------------------------

write_config() {
    local port=$1 cport=$2
    cat >"$props" <<EOF
# Written by scripts/kafka.sh: a single-node KRaft broker for development and tests.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$data_dir

# One node: every replication factor and ISR minimum is 1.
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Fewer partitions for the internal topics: they are created on first use, during a test.
offsets.topic.num.partitions=4
transaction.state.log.num.partitions=4

# Tests: no delay before the first rebalance of a consumer group.
group.initial.rebalance.delay.ms=0

# Large messages (up to 16 MiB, e.g. for 10 MB dead letters).
message.max.bytes=16777216
replica.fetch.max.bytes=16777216
socket.request.max.bytes=104857600

# Sized for a 2-core machine.
num.network.threads=2
num.io.threads=4
background.threads=4
num.recovery.threads.per.data.dir=1
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=16777216
auto.create.topics.enable=true
EOF
    # The env file: where clients connect, and the ports a restart reuses.
    cat >"$env_file" <<EOF
KAFKA_BOOTSTRAP=127.0.0.1:$port
KAFKA_CONTROLLER=127.0.0.1:$cport
KAFKA_DIR=$state
KAFKA_LOG=$server_log
EOF
}

# Format the KRaft metadata and data directory of a fresh broker.
format_storage() {
    local cid
    cid=$(cluster_id)
    if ! java -Xmx256m -Dlog4j2.configurationFile="$log4j_config" -Dkafka.logs.dir="$log_dir" \
        -cp "$libs/*" kafka.tools.StorageTool format -t "$cid" -c "$props" \
        >"$log_dir/format.log" 2>&1; then
        show_logs "$log_dir/format.log"
        die "formatting the KRaft storage in $data_dir failed"
    fi
}

# --- wait until the broker answers ---------------------------------------------------------

# Exit 0 if a TCP connection to 127.0.0.1:PORT succeeds.
port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Exit 0 if the broker answers a metadata request (only when PYTHON has confluent_kafka;
# otherwise the log line and the open port are taken as enough).
broker_answers() {
    "$python" -c 'import confluent_kafka' 2>/dev/null || return 0
    "$python" - "$1" <<'EOF' 2>/dev/null
import sys
from confluent_kafka.admin import AdminClient
md = AdminClient({"bootstrap.servers": sys.argv[1]}).list_topics(timeout=5)
sys.exit(0 if md.brokers else 1)
EOF
}

# Wait for PID to log that it started, to accept connections and to answer.
wait_ready() {
    local pid=$1 bootstrap=$2 deadline=$((SECONDS + start_timeout))
    local port=${bootstrap##*:}
    while ((SECONDS < deadline)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            show_logs
            rm -f "$pid_file"
            die "the broker (pid $pid) died during start-up; logs in $log_dir"
        fi
        if grep -qs "Kafka Server started" "$server_log" && port_open "$port" \
            && broker_answers "$bootstrap"; then
            return 0
        fi
        sleep 0.3
    done
    show_logs
    note "the broker did not answer within ${start_timeout}s; stopping it"
    stop_broker keep
    die "the broker at $bootstrap did not become ready within ${start_timeout}s (TXFAST_KAFKA_START_TIMEOUT); logs in $log_dir"
}

# --- commands ------------------------------------------------------------------------------

start() {
    need_java
    lock "$state.lock" 8
    local pid bootstrap controller port cport
    pid=$(broker_pid)
    if [[ -n $pid ]]; then
        env_value KAFKA_BOOTSTRAP
        return 0
    fi
    fetch

    local started=$SECONDS
    if [[ -f $data_dir/meta.properties && -f $props && -f $env_file ]]; then
        # Data kept by `stop --keep`: restart the same broker on the same ports.
        bootstrap=$(env_value KAFKA_BOOTSTRAP)
        controller=$(env_value KAFKA_CONTROLLER)
        port=${bootstrap##*:}
        cport=${controller##*:}
        note "restarting the broker in $state (data kept) on $bootstrap"
    else
        remove_state
        mkdir -p "$data_dir" "$log_dir"
        if [[ -n ${TXFAST_KAFKA_PORT:-} || -n ${TXFAST_KAFKA_CONTROLLER_PORT:-} ]]; then
            local picked
            picked=$(free_ports)
            port=${TXFAST_KAFKA_PORT:-${picked% *}}
            cport=${TXFAST_KAFKA_CONTROLLER_PORT:-${picked#* }}
            [[ $port != "$cport" ]] || die "the client and controller ports must differ ($port)"
        else
            read -r port cport < <(free_ports)
        fi
        write_config "$port" "$cport"
        format_storage
        bootstrap=127.0.0.1:$port
    fi
    local p
    for p in "$port" "$cport"; do
        if ! port_free "$p"; then
            ss -ltnp "sport = :$p" 2>/dev/null | tail -n +2 >&2 || true
            die "port $p on 127.0.0.1 is busy; free it, or run \`$0 stop\` to discard the kept broker and start afresh on new ports"
        fi
    done

    # Logs of this run only (the previous run's are kept once, as *.prev).
    mkdir -p "$log_dir"
    local f
    for f in "$server_log" "$console_log"; do
        if [[ -f $f ]]; then mv -f "$f" "$f.prev"; fi
    done
    rm -f "$server_log".[0-9]*

    # The broker, detached from this shell (setsid) so that it outlives it; its console
    # output (JVM errors, before log4j is up) goes to kafka.out.
    local detach=()
    if command -v setsid >/dev/null 2>&1; then detach=(setsid); fi
    # shellcheck disable=SC2086 # TXFAST_KAFKA_JVM_OPTS is a list of options
    "${detach[@]}" java -Xms256m -Xmx"$heap" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
        -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$log4j_config" -Dkafka.logs.dir="$log_dir" \
        ${TXFAST_KAFKA_JVM_OPTS:-} \
        -cp "$libs/*" kafka.Kafka "$props" >>"$console_log" 2>&1 </dev/null 8>&- 9>&- &
    pid=$!
    echo "$pid" >"$pid_file"
    wait_ready "$pid" "$bootstrap"
    note "broker ready at $bootstrap in $((SECONDS - started)) s (pid $pid, logs $server_log)"
    echo "$bootstrap"
}

# Stop the broker if it runs. With "keep", leave the state directory for a later start.
stop_broker() {
    local keep=${1:-} pid
    pid=$(broker_pid)
    if [[ -n $pid ]]; then
        kill -TERM "$pid" 2>/dev/null || true
        local deadline=$((SECONDS + stop_timeout))
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
            sleep 0.2
        done
        if kill -0 "$pid" 2>/dev/null; then
            note "the broker (pid $pid) did not stop within ${stop_timeout}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
        fi
        note "stopped the broker (pid $pid)"
    fi
    rm -f "$pid_file"
    if [[ $keep != keep ]]; then
        remove_state
    fi
}

stop() {
    local keep=
    case ${1:-} in
        --keep) keep=keep ;;
        "") ;;
        *) die "unknown option for stop: $1 (expected --keep)" ;;
    esac
    lock "$state.lock" 8
    stop_broker "$keep"
}

status() {
    local pid
    pid=$(broker_pid)
    if [[ -n $pid ]]; then
        echo "running: $(env_value KAFKA_BOOTSTRAP) (pid $pid, dir $state)"
        return 0
    fi
    if [[ -f $data_dir/meta.properties ]]; then
        echo "stopped: data kept in $state ('start' resumes it, 'stop' discards it)"
    else
        echo "not running"
    fi
    return 1
}

print_env() {
    [[ -n $(broker_pid) ]] || die "no broker is running (state dir $state); run: $0 start"
    local key value
    while IFS='=' read -r key value; do
        if [[ -n $key ]]; then printf 'export %s=%q\n' "$key" "$value"; fi
    done <"$env_file"
}

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//' >&2
    exit 2
}

cmd=${1:-}
[[ $# -gt 0 ]] && shift
case $cmd in
    start) start ;;
    stop) stop "$@" ;;
    status) status ;;
    env) print_env ;;
    fetch) fetch && echo "$libs" ;;
    logs)
        [[ -f $server_log ]] || die "no broker log at $server_log"
        tail -n "${1:-100}" "$server_log"
        ;;
    -h | --help | help) usage ;;
    *) usage ;;
esac
