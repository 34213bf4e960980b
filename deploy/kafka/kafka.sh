#!/usr/bin/env bash
# Local Apache Kafka (KRaft, one combined broker+controller on 127.0.0.1) for
# development and CI. Fetches the Kafka jars from Maven Central with mvn into a
# cache directory outside the repository and reuses them.
#
#   kafka.sh start [--fresh]  fetch (once), format (once), start, wait for a
#                     metadata answer; --fresh first deletes the broker's data
#   kafka.sh stop [--clean]  stop the broker; no process is left behind;
#                     --clean then deletes its data
#   kafka.sh kill9    SIGKILL the broker (fault tests); `start` brings it back
#                     on the same data
#   kafka.sh status   running or not, and the bootstrap address
#   kafka.sh configs ARGS...  Kafka's config command against this broker
#                     (fault tests: e.g. a producer quota, `--alter --add-config
#                     producer_byte_rate=1048576 --entity-type clients --entity-default`)
#
# Environment:
#   FRESHET_KAFKA_PORT        client port              (default 9092)
#   FRESHET_KAFKA_CONTROLLER_PORT  controller port     (default client port + 1)
#   FRESHET_KAFKA_SASL_PORT   SASL_PLAINTEXT port      (default client port + 2); mechanism
#                             PLAIN, development-only user "freshet", password "freshet-secret"
#   FRESHET_CACHE_DIR         jar cache + broker data  (default $HOME/.cache/freshet)
#   FRESHET_KAFKA_HEAP        JVM heap                 (default 768m, at most 1g)
#   FRESHET_KAFKA_START_TIMEOUT  seconds to wait       (default 90)
#   FRESHET_KAFKA_EXTRA_PROPERTIES  lines appended to server.properties (fault
#                             tests: e.g. log.retention.check.interval.ms=1000)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
port=${FRESHET_KAFKA_PORT:-9092}
controller_port=${FRESHET_KAFKA_CONTROLLER_PORT:-$((port + 1))}
sasl_port=${FRESHET_KAFKA_SASL_PORT:-$((port + 2))}
cache=${FRESHET_CACHE_DIR:-$HOME/.cache/freshet}
heap=${FRESHET_KAFKA_HEAP:-768m}
start_timeout=${FRESHET_KAFKA_START_TIMEOUT:-90}
kafka_version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/pom.xml")
libs="$cache/kafka-$kafka_version/libs"
run_dir="$cache/kafka-run-$port"
pid_file="$run_dir/kafka.pid"
log_file="$run_dir/kafka.log"
bootstrap="127.0.0.1:$port"

say() { echo "kafka.sh: $*" >&2; }
# shellcheck source=../lib/process.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib/process.sh"

fetch_jars() {
    if [[ -f "$libs/.complete" ]]; then return; fi
    command -v mvn >/dev/null || { say "mvn is required to fetch Kafka"; exit 1; }
    command -v java >/dev/null || { say "java (17+) is required to run Kafka"; exit 1; }
    say "fetching Apache Kafka $kafka_version and its dependencies from Maven Central into $libs"
    mkdir -p "$libs"
    mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$libs" >&2
    touch "$libs/.complete"
}

write_config() {
    mkdir -p "$run_dir/data"
    cat >"$run_dir/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller_port
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port,SASL_PLAINTEXT://127.0.0.1:$sasl_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port,SASL_PLAINTEXT://127.0.0.1:$sasl_port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT
sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="freshet" password="freshet-secret" user_freshet="freshet-secret";
log.dirs=$run_dir/data
auto.create.topics.enable=false
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
group.initial.rebalance.delay.ms=0
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
${FRESHET_KAFKA_EXTRA_PROPERTIES:-}
EOF
    cat >"$run_dir/log4j2.properties" <<'EOF'
status = warn
appender.console.type = Console
appender.console.name = console
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.console.ref = console
logger.kafka.name = kafka
logger.kafka.level = info
logger.state.name = state.change.logger
logger.state.level = warn
EOF
}

jvm=(java "-Xmx$heap" -Xms128m -XX:+UseG1GC -Djava.awt.headless=true
    "-Dlog4j2.configurationFile=$run_dir/log4j2.properties" -cp "$libs/*")

format_storage() {
    if [[ -f "$run_dir/data/meta.properties" ]]; then return; fi
    local cluster_id
    cluster_id=$("${jvm[@]}" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)
    "${jvm[@]}" kafka.tools.StorageTool format -t "$cluster_id" \
        -c "$run_dir/server.properties" --ignore-formatted >>"$log_file" 2>&1
}

running_pid() {
    [[ -f "$pid_file" ]] || return 1
    local pid
    pid=$(cat "$pid_file")
    kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

# Sends a Kafka Metadata v4 request and succeeds when the answer lists a broker.
answers_metadata() {
    python3 - "$port" <<'EOF'
import socket, struct, sys
port = int(sys.argv[1])
client = b"kafka.sh"
# header v1: api_key=3 (Metadata), api_version=4, correlation_id, client_id
body = struct.pack(">hhih", 3, 4, 7, len(client)) + client
body += struct.pack(">i", -1) + b"\x00"  # all topics, no auto-creation
try:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.sendall(struct.pack(">i", len(body)) + body)
        size = struct.unpack(">i", s.recv(4, socket.MSG_WAITALL))[0]
        resp = b""
        while len(resp) < size:
            chunk = s.recv(size - len(resp))
            if not chunk:
                break
            resp += chunk
    correlation, _throttle, brokers = struct.unpack(">iii", resp[:12])
    sys.exit(0 if correlation == 7 and brokers >= 1 else 1)
except (OSError, struct.error):
    sys.exit(1)
EOF
}

start() {
    if [[ "${1:-}" == "--fresh" ]]; then
        stop
        rm -rf "$run_dir"
    fi
    if pid=$(running_pid) && answers_metadata; then
        say "already running (pid $pid), log $log_file"
        echo "$bootstrap"
        return
    fi
    fetch_jars
    write_config
    format_storage
    say "starting Kafka $kafka_version on $bootstrap (heap $heap), log $log_file"
    # nohup execs the JVM, so the recorded pid is the broker's own.
    nohup "${jvm[@]}" kafka.Kafka "$run_dir/server.properties" >>"$log_file" 2>&1 &
    echo $! >"$pid_file"
    local waited=0
    until answers_metadata; do
        if ! running_pid >/dev/null; then
            say "Kafka exited during start; last lines of $log_file:"
            tail -n 30 "$log_file" >&2
            exit 1
        fi
        if ((waited >= start_timeout)); then
            say "Kafka did not answer a metadata request within ${start_timeout}s"
            stop
            exit 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
    say "ready after ${waited}s"
    echo "$bootstrap"
}

stop() {
    local pid
    if pid=$(running_pid); then
        stop_process "$pid" broker 30
    fi
    # A broker started from this run directory by an earlier, lost pid file.
    pkill -9 -f "$run_dir/server.properties" 2>/dev/null || true
    rm -f "$pid_file"
    say "stopped"
    if [[ "${1:-}" == "--clean" ]]; then
        rm -rf "$run_dir"
    fi
}

kill9() {
    local pid
    if pid=$(running_pid); then
        kill -9 "$pid"
        while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
        say "killed (pid $pid, SIGKILL)"
    else
        say "not running"
    fi
}

status() {
    if pid=$(running_pid) && answers_metadata; then
        say "running (pid $pid), log $log_file"
        echo "$bootstrap"
    else
        say "not running"
        return 1
    fi
}

configs() {
    running_pid >/dev/null || { say "not running"; return 1; }
    "${jvm[@]}" kafka.admin.ConfigCommand --bootstrap-server "$bootstrap" "$@"
}

case "${1:-}" in
start) start "${2:-}" ;;
stop) stop "${2:-}" ;;
kill9) kill9 ;;
status) status ;;
configs) shift && configs "$@" ;;
*)
    echo "usage: $0 start [--fresh] | stop [--clean] | kill9 | status | configs ARGS..." >&2
    exit 2
    ;;
esac
