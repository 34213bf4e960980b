# Helpers sourced by the deploy scripts; the caller defines `say MESSAGE`.

# stop_process PID NAME SECONDS: asks PID to stop (SIGTERM), waits up to
# SECONDS for it to exit, then kills it.
stop_process() {
    local pid="$1" name="$2" seconds="$3"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 $((seconds * 2))); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.5
    done
    say "$name did not stop in $seconds s; killing it"
    kill -9 "$pid" 2>/dev/null || true
}
