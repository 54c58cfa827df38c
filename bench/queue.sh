#!/usr/bin/env bash
# Queue benchmark: N small messages queued for a next hop that accepts TCP
# and never greets (so nothing leaves), then:
#   - peak RSS of the server while the queue fills (VmHWM), and its RSS
#     with the full queue at rest;
#   - time to list the first page (API, 100 messages; CLI, first 1,000);
#   - time to delete N/100 messages by a filter (`queue delete --sender`);
#     10,000 at the default N;
#   - restart/recovery time (SIGTERM, start, until the admin API answers
#     and the spool is recovered) and the peak RSS after recovery.
# This is a benchmark, not a test: run it once, not in a loop.
#
# Usage:  bench/queue.sh                 # N=1000000
#         N=20000 bench/queue.sh          # try it small first
# Environment:
#   N=1000000    messages
#   PROCS=2 CONNS=16   loader processes and connections per process
#   BENCH_TMP=DIR      parent of the scratch dir (default /var/tmp; a disk,
#                      not tmpfs: 1M messages take about 1.5 GB of spool)
#   KEEP=1             keep the scratch dir afterwards
#   LIST_ALL=1         also time a full `queue list --json`
set -euo pipefail

N=${N:-1000000}
PROCS=${PROCS:-2}
CONNS=${CONNS:-16}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MAILGATE=$ROOT/target/release/mailgate

log() { printf '[queue] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ -x "$MAILGATE" ] || die "no $MAILGATE: run cargo build --release first"
command -v curl >/dev/null || die "needs curl"

BENCH_TMP=${BENCH_TMP:-/var/tmp}
WORK=$(mktemp -d "$BENCH_TMP/mailgate-queue.XXXXXX")
PIDS=()
cleanup() {
    local rc=$?
    set +e
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do
        for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null
    done
    if [ "${KEEP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # port seconds
    local i
    for i in $(seq $(( $2 * 10 ))); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", b-a}'; }
kib() { awk -v k="$1" 'BEGIN{printf "%.1f MiB", k/1024}'; }
status_kib() { awk -v f="$2" '$1==f":"{print $2}' "/proc/$1/status"; }

# A next hop that accepts TCP and never greets: deliveries hang, nothing leaves.
HOLE=$(free_port)
python3 -c '
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(128)
held = []
while True:
    c, _ = s.accept(); held.append(c)
' "$HOLE" &
PIDS+=($!)
wait_port "$HOLE" 10 || die "next hop did not start"

SMTP=$(free_port); HTTP=$(free_port)
CONF=$WORK/mailgate.toml
cat > "$CONF" <<EOF
[server]
hostname = "mailgate.bench.test"
data_dir = "$WORK/data"

[[listener]]
role = "mx"
bind = "127.0.0.1:$SMTP"

[[domain]]
name = "dst.test"
dkim = false
deliver = "smtp://127.0.0.1:$HOLE"

[relay]
trusted_networks = ["127.0.0.0/8"]

[http]
bind = "127.0.0.1:$HTTP"

[limits]
max_connections = 1000
max_connections_per_ip = $(( PROCS * CONNS + 50 ))
EOF

start() {
    "$MAILGATE" serve --config "$CONF" 2>> "$WORK/mailgate.log" &
    PID=$!; PIDS+=("$PID")
    for _ in $(seq 6000); do
        curl -fsS -o /dev/null "http://127.0.0.1:$HTTP/healthz" 2>/dev/null && return 0
        kill -0 "$PID" 2>/dev/null || { tail -5 "$WORK/mailgate.log" >&2; die "mailgate exited"; }
        sleep 0.05
    done
    die "mailgate did not answer within 300 s"
}
queued() { curl -fsS "http://127.0.0.1:$HTTP/metrics" | awk '$1=="mailgate_queue_messages"{print $2}'; }
api() { curl -fsS -H "Authorization: Bearer $(cat "$WORK/data/admin.token")" "$@"; }

log "N=$N, loader $PROCS x $CONNS connections, scratch $WORK"
start
log "injecting $N messages"
t0=$(now)
python3 "$ROOT/bench/queue-load.py" 127.0.0.1 "$SMTP" "$N" "$PROCS" "$CONNS" > "$WORK/load.out"
t1=$(now)
inject_s=$(secs "$t0" "$t1")
[ "$(queued)" = "$N" ] || die "queue holds $(queued), expected $N"
sleep 2   # let the scheduler settle
hwm_fill=$(status_kib "$PID" VmHWM); rss_rest=$(status_kib "$PID" VmRSS)
log "injected in $inject_s s ($(awk -v n="$N" -v s="$inject_s" 'BEGIN{printf "%.0f", n/s}') msg/s); peak RSS $(kib "$hwm_fill"), now $(kib "$rss_rest")"

page_api=$(api -o /dev/null -w '%{time_total}' "http://127.0.0.1:$HTTP/api/v1/queue?limit=100")
t0=$(now)
"$MAILGATE" --config "$CONF" queue list 2>/dev/null | head -n 2 > /dev/null || true
page_cli=$(secs "$t0" "$(now)")
log "first page: API (100) ${page_api} s, CLI (first 1,000 printed) ${page_cli} s"

list_all=skipped
if [ "${LIST_ALL:-0}" = 1 ]; then
    t0=$(now)
    listed=$("$MAILGATE" --config "$CONF" queue list --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["messages"]))')
    list_all=$(secs "$t0" "$(now)")
    [ "$listed" = "$N" ] || die "listed $listed, expected $N"
    log "full list --json: $list_all s"
fi

t0=$(now)
out=$("$MAILGATE" --config "$CONF" queue delete --sender s7@src.test)
delete_s=$(secs "$t0" "$(now)")
deleted=$(echo "$out" | awk '{print $2}')
expect=$(( N / 100 + (N % 100 > 7 ? 1 : 0) ))
[ "$deleted" = "$expect" ] || die "deleted $deleted, expected $expect ($out)"
left=$(queued)
log "delete --sender: $deleted in $delete_s s; $left left"
hwm_before=$(status_kib "$PID" VmHWM)

kill -TERM "$PID"; wait "$PID" 2>/dev/null || true
t0=$(now)
start
restart_s=$(secs "$t0" "$(now)")
[ "$(queued)" = "$left" ] || die "after restart the queue holds $(queued), expected $left"
sleep 2
hwm_restart=$(status_kib "$PID" VmHWM); rss_restart=$(status_kib "$PID" VmRSS)
recovered=$(grep 'spool recovered' "$WORK/mailgate.log" | tail -1)
log "restart: admin API up ${restart_s} s after start ($recovered)"
du_spool=$(du -sh "$WORK/data/spool" | cut -f1)

cat <<EOF

| messages | inject msg/s | peak RSS filling | RSS full queue | first page API | first page CLI | full list | delete by sender | restart to API | peak RSS after restart | spool on disk |
|---|---|---|---|---|---|---|---|---|---|---|
| $N | $(awk -v n="$N" -v s="$inject_s" 'BEGIN{printf "%.0f", n/s}') | $(kib "$hwm_fill") | $(kib "$rss_rest") | ${page_api} s | ${page_cli} s | ${list_all} s | $deleted in ${delete_s} s | ${restart_s} s | $(kib "$hwm_restart") (now $(kib "$rss_restart")) | $du_spool |
EOF
