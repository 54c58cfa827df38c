#!/usr/bin/env bash
# Relay benchmark: end to end, smtp-source -> MTA -> smtp-sink, mailgate
# against a private Postfix instance, same load, same machine, same run.
# See BENCHMARKS.md ("Relay") for how Postfix is set up.
#
# Work compared: receive over SMTP, make the message durable (fsync before
# 250), deliver it to smtp-sink over SMTP, remove it from the queue.
#   - Postfix: relayhost = [127.0.0.1]:SINKPORT (defaults otherwise:
#     destination concurrency 20, connection cache on demand).
#   - mailgate: [[domain]] dst.test, deliver = "smtp://127.0.0.1:SINKPORT",
#     [dns] nameservers on a closed loopback port (nothing leaves the machine).
#   - ceiling ("sink"): smtp-source straight into smtp-sink, no MTA.
# Load: smtp-source -s 20 -m 20000 -l 5120, a fresh connection per message.
# Clock: starts when smtp-source starts, stops when the sink has counted all
# messages (smtp-sink -c prints "sess=N quit=N mesg=N" after every session
# end, QUIT and "."; a poller watches the tail of that output every 5 ms).
# Rate = messages / that time.  Afterwards: the MTA's queue must empty and
# the sink's final count must equal the messages sent (a surplus would be
# duplicates, a shortfall losses).
#
# Usage (as root):  bench/relay.sh
# Environment:
#   RUNS=2          runs per side, interleaved (mailgate, postfix, sink, mailgate, ...)
#   MESSAGES=20000  SESSIONS=20  SIZE=5120   smtp-source -m / -s / -l
#   SIDES="mailgate postfix sink"             which sides to run; `hooks` is
#                   mailgate with a [[webhook]] receiving every event (a
#                   delivered one per message) at a local receiver, to
#                   compare with `mailgate` in the same run:
#                   SIDES="mailgate hooks" RUNS=1 MESSAGES=5000 bench/relay.sh
#   HOOK_SINK=nginx the `hooks` side's receiver: nginx (one process,
#                   `return 204`, a 2-byte access-log line per POST to count
#                   them), the cheapest real HTTP server at hand, since it
#                   shares these two cores with the relay (in production it
#                   runs elsewhere); or `python` (bench/hook-sink.py, an
#                   asyncio receiver costing several times nginx's CPU per POST)
#                   `verp` is mailgate with [delivery] verp = true (every
#                   message is submitted mail here: trusted network), so
#                   each recipient is a transaction of its own; with
#                   RCPTS=N, compare with `mailgate`, which sends the N
#                   recipients of one domain in one transaction:
#                   SIDES="mailgate verp" RCPTS=10 MESSAGES=2000 bench/relay.sh
#   RCPTS=1         recipients per message (smtp-source -r; all at dst.test)
#   MG_DELIVERY='concurrency_per_destination = 20'   extra lines for mailgate's
#                   [delivery] section (use \n between lines)
#   MAILGATE_LOG=info                         passed through to mailgate
#   QUIET_PCT=10 QUIET_SECS=5 QUIET_MAX=120   before each run, wait up to
#                   QUIET_MAX s for QUIET_SECS consecutive seconds with the
#                   machine under QUIET_PCT % busy (other agents share it)
#   DELIVER_TIMEOUT=300                       give up waiting for the sink
#   BENCH_TMP=DIR   parent of the scratch dir (default /var/tmp, the same ext4
#                   filesystem as /work here; must not be tmpfs)
#   BUILD=0         do not build; use target/release/mailgate as it is
#   KEEP=1          keep the scratch dir (configs, logs, queues) afterwards
#
# It never touches /etc/postfix or a system Postfix instance: Postfix runs
# only as `postfix -c SCRATCH/pfN/conf`, and everything started here is
# stopped by the EXIT trap.
set -euo pipefail

RUNS=${RUNS:-2}
MESSAGES=${MESSAGES:-20000}
SESSIONS=${SESSIONS:-20}
SIZE=${SIZE:-5120}
RCPTS=${RCPTS:-1}
SIDES=${SIDES:-"mailgate postfix sink"}
MG_DELIVERY=${MG_DELIVERY:-}
QUIET_PCT=${QUIET_PCT:-10}
QUIET_SECS=${QUIET_SECS:-5}
QUIET_MAX=${QUIET_MAX:-120}
DELIVER_TIMEOUT=${DELIVER_TIMEOUT:-300}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MAILGATE=$ROOT/target/release/mailgate

log() { printf '[relay] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (Postfix's master must start as root)"

# ---------------------------------------------------------------- install
need_pkgs=()
command -v smtp-source >/dev/null 2>&1 && command -v smtp-sink >/dev/null 2>&1 &&
    command -v postfix >/dev/null 2>&1 || need_pkgs+=(postfix)
command -v python3 >/dev/null 2>&1 || need_pkgs+=(python3)
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl)
[ -x /usr/bin/time ] || need_pkgs+=(time)
command -v ps >/dev/null 2>&1 || need_pkgs+=(procps)
HOOK_SINK=${HOOK_SINK:-nginx}
case " ${SIDES:-} " in
*" hooks "*) [ "$HOOK_SINK" != nginx ] || command -v nginx >/dev/null 2>&1 || need_pkgs+=(nginx) ;;
esac
if [ ${#need_pkgs[@]} -gt 0 ]; then
    log "installing ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi
PF_MASTER_CF=/usr/share/postfix/master.cf.dist
[ -f "$PF_MASTER_CF" ] || PF_MASTER_CF=/etc/postfix/master.cf   # read only
PF_VERSION=$(postconf -d -h mail_version 2>/dev/null || echo unknown)

# ---------------------------------------------------------------- build
# BUILD=0 uses target/release/mailgate as it is (built with the whole
# workspace: `-p mailgate` alone unifies features differently and rebuilds
# dependencies).
if [ "${BUILD:-1}" != 0 ]; then
    log "building mailgate (release)"
    (cd "$ROOT" && cargo build --release -p mailgate) > "${TMPDIR:-/tmp}/mailgate-relay-build.log" 2>&1 ||
        { tail -30 "${TMPDIR:-/tmp}/mailgate-relay-build.log" >&2; die "cargo build failed"; }
fi
[ -x "$MAILGATE" ] || die "no $MAILGATE after build"

# ---------------------------------------------------------------- scratch
BENCH_TMP=${BENCH_TMP:-/var/tmp}
[ "$(stat -f -c %T "$BENCH_TMP")" != tmpfs ] || die "$BENCH_TMP is tmpfs; set BENCH_TMP to a disk directory"
WORK=$(mktemp -d "$BENCH_TMP/mailgate-relay.XXXXXX")
chmod 755 "$WORK"   # Postfix's unprivileged daemons and smtp-sink must reach it
FS_TYPE=$(stat -f -c %T "$WORK")
FS_DEV=$(df -P "$WORK" | awk 'NR==2{print $1}')
WORK_FS_DEV=$(df -P /work 2>/dev/null | awk 'NR==2{print $1}' || true)

PIDS=()             # our background processes (mailgate, smtp-sink, samplers)
PF_DIRS=()          # Postfix instances we started
cleanup() {
    local rc=$?
    set +e
    for d in "${PF_DIRS[@]}"; do pf_stop "$d"; done
    for p in "${PIDS[@]}"; do
        if kill -0 "$p" 2>/dev/null; then kill -TERM "$p" 2>/dev/null; fi
    done
    for p in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null
    done
    if [ "${KEEP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() { # port seconds
    local i
    for i in $(seq $(( $2 * 10 ))); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# Waits until smtp-sink's counter output (FILE) shows mesg >= N; prints the
# wall-clock time (epoch seconds) at which it saw that, or "timeout".
cat > "$WORK/sinkwait.py" <<'EOF'
import os, re, sys, time
path, want, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
pat = re.compile(rb"sess=(\d+) quit=(\d+) mesg=(\d+)")
end = time.time() + limit
while True:
    now = time.time()
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            n = f.tell()
            f.seek(max(0, n - 200))
            m = pat.findall(f.read())
        if m and int(m[-1][2]) >= want:
            print("%.6f" % now)
            break
    except OSError:
        pass
    if now > end:
        print("timeout")
        break
    time.sleep(0.005)
EOF

# The sink's latest counters: "sessions messages".
sink_count() { # file
    tail -c 200 "$1" 2>/dev/null | tr '\r' '\n' | awk '/mesg=/{s=$1; m=$3} END {sub("sess=","",s); sub("mesg=","",m); print (s==""?0:s), (m==""?0:m)}'
}

start_sink() { # dir -> SINK_PORT SINK_PID
    SINK_PORT=$(free_port)
    smtp-sink -c -u postfix "127.0.0.1:$SINK_PORT" 256 > "$1/sink.out" 2> "$1/sink.err" &
    SINK_PID=$!; PIDS+=("$SINK_PID")
    wait_port "$SINK_PORT" 20 || die "smtp-sink did not listen on $SINK_PORT"
    # (wait_port's probe connection counts as one session, no message)
    sleep 0.2
}

# ---------------------------------------------------------------- measuring
# CPU ticks (utime+stime) of a pid; with "all", children already reaped too.
ticks() { # pid [all]
    local f
    f=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
    if [ "${2:-}" = all ]; then echo "$f" | awk '{print $12+$13+$14+$15}'
    else echo "$f" | awk '{print $12+$13}'; fi
}
HZ=$(getconf CLK_TCK)

# A process and its children (Postfix: master and its daemons).
tree() { echo "$1"; ps -o pid= --ppid "$1" 2>/dev/null | tr -d ' ' || true; }

tree_ticks() { # root-pid -> ticks of root (incl. reaped children) + live children
    local root=$1 total p
    total=$(ticks "$root" all)
    for p in $(ps -o pid= --ppid "$root" 2>/dev/null); do total=$(( total + $(ticks "$p") )); done
    echo "$total"
}

# Memory of a process tree: "nprocs rss_kib pss_kib".
tree_mem() {
    local p n=0 rss=0 pss=0 r s
    for p in $(tree "$1"); do
        r=$(awk '/^VmRSS:/{print $2}' "/proc/$p/status" 2>/dev/null) || continue
        [ -n "$r" ] || continue
        s=$(awk '/^Pss:/{print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)
        n=$((n + 1)); rss=$((rss + r)); pss=$((pss + ${s:-0}))
    done
    echo "$n $rss $pss"
}

# Samples the summed RSS (and process count) of a tree once a second; the
# peaks go to FILE as "rss_kib procs".
sampler() { # root-pid file
    local peak=0 np=0 r n p x
    while kill -0 "$1" 2>/dev/null; do
        r=0; n=0
        for p in $(tree "$1"); do
            x=$(awk '/^VmRSS:/{print $2}' "/proc/$p/status" 2>/dev/null) || x=0
            [ -n "$x" ] && n=$((n + 1))
            r=$(( r + ${x:-0} ))   # a zombie has no VmRSS
        done
        [ "$n" -gt "$np" ] && np=$n
        [ "$r" -gt "$peak" ] && peak=$r
        echo "$peak $np" > "$2"
        sleep 1
    done
}

# busy iowait total irq+softirq kernel-thread-ticks
cpu_stat() {
    local k
    # (processes come and go while cat reads: ignore its complaints)
    k=$( (cat /proc/[0-9]*/stat 2>/dev/null || true) | awk '{sub(/^.*\) /, ""); if ($2 == 2) t += $12 + $13} END {print t + 0}')
    awk -v k="$k" '/^cpu /{print $2+$3+$4+$7+$8, $6, $2+$3+$4+$5+$6+$7+$8, $7+$8, k}' /proc/stat
}

# Waits for QUIET_SECS consecutive seconds under QUIET_PCT % busy (all
# cores), at most QUIET_MAX seconds. Sets QUIET ("yes after Ns" / "no").
wait_quiet() {
    local start ok=0 a b t0 t1 pct
    start=$(date +%s)
    read -r a _ t0 < <(awk '/^cpu /{print $2+$3+$4+$7+$8, $6, $2+$3+$4+$5+$6+$7+$8}' /proc/stat)
    while :; do
        sleep 1
        read -r b _ t1 < <(awk '/^cpu /{print $2+$3+$4+$7+$8, $6, $2+$3+$4+$5+$6+$7+$8}' /proc/stat)
        pct=$(( t1 > t0 ? 100 * (b - a) / (t1 - t0) : 0 ))
        a=$b; t0=$t1
        if [ "$pct" -lt "$QUIET_PCT" ]; then ok=$((ok + 1)); else ok=0; fi
        if [ "$ok" -ge "$QUIET_SECS" ]; then QUIET="yes/$(( $(date +%s) - start ))s"; return; fi
        if [ $(( $(date +%s) - start )) -ge "$QUIET_MAX" ]; then QUIET="no/${QUIET_MAX}s"; return; fi
    done
}

# Runs the load and waits for the sink; sets SECS (end to end), RATE,
# SRC_SECS (smtp-source wall time: the accept phase), SRC_RATE, SRC_CPU,
# SYS_BUSY, SYS_IOWAIT, BUSY_S, KERNEL_S, LOAD.
run_load() { # port dir sinkfile [transactions the sink must count]
    local want=${4:-$MESSAGES} t0 t1 ts rc c0b c0w c0t c0i c0k c1b c1w c1t c1i c1k src
    LOAD=$(cut -d' ' -f1 /proc/loadavg)
    read -r c0b c0w c0t c0i c0k < <(cpu_stat)
    t0=$(date +%s.%N)
    ( /usr/bin/time -f '%U %S' -o "$2/source.time" \
        smtp-source -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" -r "$RCPTS" \
        -f sender@src.test -t rcpt@dst.test "127.0.0.1:$1" > "$2/source.out" 2>&1
      echo $? > "$2/source.rc"; date +%s.%N > "$2/source.end" ) &
    src=$!
    t1=$(python3 "$WORK/sinkwait.py" "$3" "$want" "$DELIVER_TIMEOUT")
    read -r c1b c1w c1t c1i c1k < <(cpu_stat)
    wait "$src" || true
    rc=$(cat "$2/source.rc")
    [ "$rc" = 0 ] || { cat "$2/source.out" >&2; die "smtp-source exited $rc"; }
    [ ! -s "$2/source.out" ] || { log "smtp-source said:"; head -5 "$2/source.out" >&2; }
    [ "$t1" != timeout ] || die "the sink did not get $want messages within ${DELIVER_TIMEOUT}s (has: $(sink_count "$3"))"
    ts=$(cat "$2/source.end")
    SECS=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b - a}')
    RATE=$(awk -v m="$MESSAGES" -v s="$SECS" 'BEGIN{printf "%.1f", m / s}')
    SRC_SECS=$(awk -v a="$t0" -v b="$ts" 'BEGIN{printf "%.3f", b - a}')
    SRC_RATE=$(awk -v m="$MESSAGES" -v s="$SRC_SECS" 'BEGIN{printf "%.1f", m / s}')
    SRC_CPU=$(awk '{printf "%.1f", $1+$2}' "$2/source.time")
    SYS_BUSY=$(( 100 * (c1b - c0b) / (c1t - c0t) ))
    SYS_IOWAIT=$(( 100 * (c1w - c0w) / (c1t - c0t) ))
    BUSY_S=$(awk -v t="$(( c1b - c0b ))" -v hz="$HZ" 'BEGIN{printf "%.2f", t / hz}')
    KERNEL_S=$(awk -v t="$(( c1i - c0i + c1k - c0k ))" -v hz="$HZ" 'BEGIN{printf "%.1f", t < 0 ? 0 : t / hz}')
}

# CPU seconds used by other processes during the run (other agents on the
# shared machine): busy time of all cores minus the server's, the sink's,
# smtp-source's and the kernel's (kernel threads, irq, softirq).
other_cpu() { # server-ticks sink-ticks
    awk -v b="$BUSY_S" -v s="$1" -v k2="$2" -v hz="$HZ" -v c="$SRC_CPU" -v k="$KERNEL_S" \
        'BEGIN{o = b - (s + k2) / hz - c - k; printf "%.1f", o < 0 ? 0 : o}'
}

# Per-thread CPU of mailgate, busiest first: "name=user+sys ...", seconds.
thread_cpu() { # pid
    local t
    for t in /proc/"$1"/task/*; do
        printf '%s %s\n' "$(cat "$t/comm")" "$(sed 's/.*) //' "$t/stat" | awk '{print $12, $13}')"
    done | awk -v hz="$HZ" '{u[$1] += $2; s[$1] += $3} END {for (n in u) printf "%.2f %s=%.2f+%.2f\n", (u[n] + s[n]) / hz, n, u[n] / hz, s[n] / hz}' |
        sort -rn | head -6 | cut -d' ' -f2 | tr '\n' ' '
}

# After the clock stopped: waits until the sink's count stops changing for
# 2 s (late duplicates would show), then sets SINK_SESS SINK_MESG.
settle_sink() { # file
    local prev="" cur i
    for i in $(seq 40); do
        cur=$(sink_count "$1")
        [ "$cur" = "$prev" ] && [ "$i" -gt 4 ] && break
        prev=$cur; sleep 0.5
    done
    read -r SINK_SESS SINK_MESG <<< "$cur"
    SINK_SESS=$(( SINK_SESS - 1 ))   # start_sink's probe connection
}

RESULTS=()   # one line per run, see the report

# ---------------------------------------------------------------- mailgate
# The webhook receiver for the `hooks` side, listening on $2; sets HOOK_PID.
start_hook_sink() { # dir port
    local d=$1 port=$2
    if [ "$HOOK_SINK" = python ]; then
        python3 "$ROOT/bench/hook-sink.py" "$port" "$d/hooks.count" 2> "$d/hooks.err" &
        HOOK_PID=$!
        return
    fi
    mkdir -p "$d/nginx"
    cat > "$d/nginx/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $d/nginx/nginx.pid;
error_log $d/nginx/error.log warn;
events { worker_connections 1024; }
http {
    client_body_temp_path $d/nginx/body;
    proxy_temp_path $d/nginx/proxy;
    fastcgi_temp_path $d/nginx/fastcgi;
    uwsgi_temp_path $d/nginx/uwsgi;
    scgi_temp_path $d/nginx/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    log_format one "1";
    server {
        listen 127.0.0.1:$port backlog=512;
        access_log $d/hooks.log one buffer=64k flush=100ms;
        location / { return 204; }
    }
}
EOF
    : > "$d/hooks.log"
    nginx -c "$d/nginx/nginx.conf" -p "$d/nginx" -e "$d/nginx/error.log" 2> "$d/hooks.err" &
    HOOK_PID=$!
}

# POSTs the webhook receiver has answered so far.
hook_count() { # dir
    if [ "$HOOK_SINK" = python ]; then
        cat "$1/hooks.count" 2>/dev/null || echo 0
    else
        echo $(( $(stat -c %s "$1/hooks.log" 2>/dev/null || echo 0) / 2 ))
    fi
}

# mailgate with webhooks on: the same run, plus a [[webhook]] for every
# event, POSTed to a local receiver (HOOK_SINK).
run_hooks() { # run-number
    SIDE=hooks run_mailgate "$1"
}

# mailgate with VERP on: a transaction per recipient (see SIDES above).
run_verp() { # run-number
    SIDE=verp run_mailgate "$1"
}

run_mailgate() { # run-number
    local side=${SIDE:-mailgate} hooks_port="" hooks_toml="" hook_pid="" verp_toml="" want=$MESSAGES t2
    local d=$WORK/$side$1 port http dns pid t0 t1 s0 s1 metrics fsyncs records accepted left hwm pss delivered deferred dups
    mkdir -p "$d"; chmod 755 "$d"
    start_sink "$d"
    port=$(free_port); http=$(free_port); dns=$(free_port)   # dns: nothing listens there
    if [ "$side" = verp ]; then
        verp_toml="verp = true"
        want=$(( MESSAGES * RCPTS ))   # the sink counts transactions
    fi
    if [ "$side" = hooks ]; then
        hooks_port=$(free_port)
        start_hook_sink "$d" "$hooks_port"
        hook_pid=$HOOK_PID; PIDS+=("$hook_pid")
        wait_port "$hooks_port" 20 || die "the webhook receiver ($HOOK_SINK) did not listen on $hooks_port"
        hooks_toml=$(printf '[[webhook]]\nurl = "http://127.0.0.1:%s/hook"\nsecret = "bench"\n' "$hooks_port")
    fi
    cat > "$d/mailgate.toml" <<EOF
[server]
hostname = "mailgate.bench.test"
data_dir = "$d/data"

[[listener]]
role = "mx"
bind = "127.0.0.1:$port"

[[domain]]
name = "dst.test"
deliver = "smtp://127.0.0.1:$SINK_PORT"
dkim = false

# Relayed for a trusted client, like Postfix's mynetworks: the same work
# on both sides (no SPF/DKIM/DMARC checks, which Postfix does not do;
# bench/verify.sh measures those).
[relay]
trusted_networks = ["127.0.0.0/8"]

[dns]
nameservers = ["127.0.0.1:$dns"]

[http]
bind = "127.0.0.1:$http"

[limits]
max_connections = $(( SESSIONS * 4 > 500 ? SESSIONS * 4 : 500 ))
max_connections_per_ip = $(( SESSIONS * 2 > 100 ? SESSIONS * 2 : 100 ))
# smtp-source opens a connection per message; Postfix has no rate limit by
# default (smtpd_client_connection_rate_limit = 0), so neither does this side.
connections_per_ip_per_minute = 0

[delivery]
$verp_toml
$(printf '%b' "$MG_DELIVERY")

$hooks_toml
EOF
    "$MAILGATE" serve --config "$d/mailgate.toml" 2> "$d/mailgate.log" &
    pid=$!; PIDS+=("$pid")
    wait_port "$port" 20 || { cat "$d/mailgate.log" >&2; die "mailgate did not listen on $port"; }
    wait_port "$http" 20 || die "mailgate admin API did not listen on $http"
    sampler "$pid" "$d/peak_rss" & PIDS+=($!)
    t0=$(ticks "$pid"); s0=$(ticks "$SINK_PID")
    log "$side run $1 (quiet: $QUIET): smtp-source -s $SESSIONS -m $MESSAGES -l $SIZE -> 127.0.0.1:$port -> smtp-sink 127.0.0.1:$SINK_PORT"
    run_load "$port" "$d" "$d/sink.out" "$want"
    t1=$(ticks "$pid"); s1=$(ticks "$SINK_PID")
    # The queue must empty (the last removals may trail the sink's count).
    left=-1
    for _ in $(seq 100); do
        metrics=$(curl -fsS "http://127.0.0.1:$http/metrics")
        left=$(echo "$metrics" | awk '$1=="mailgate_queue_messages"{print $2}')
        [ "$left" = 0 ] && break
        sleep 0.1
    done
    if [ -n "$hook_pid" ]; then
        # Outside the clock, with mailgate still running: how long until
        # the receiver has a POST per message (the outbox drains).
        local hw0 hw1
        hw0=$(date +%s.%N)
        for _ in $(seq 600); do
            [ "$(hook_count "$d")" -ge "$MESSAGES" ] && break
            sleep 0.1
        done
        hw1=$(date +%s.%N)
        log "hooks run $1: the receiver got $(hook_count "$d") webhook POSTs for $MESSAGES messages, $(awk -v a="$hw0" -v b="$hw1" 'BEGIN{printf "%.1f", b - a}') s after the sink had all messages"
        # The receiver shares the machine's cores with the relay here (in
        # production it runs elsewhere): its CPU is part of the slowdown.
        local hk
        hk=$(ticks "$hook_pid")
        log "hooks run $1: events $(curl -fsS "http://127.0.0.1:$http/metrics" | awk -F'[{}" ]+' '$1=="mailgate_webhook_events_total"{printf "%s %s, ", $3, $4}')(stored: written to the outbox, not sent before their batch was committed)"
        log "hooks run $1: the receiver ($HOOK_SINK) used $(awk -v t="$hk" -v hz="$HZ" 'BEGIN{printf "%.2f", t / hz}') CPU s, $(awk -v t="$hk" -v hz="$HZ" -v m="$MESSAGES" 'BEGIN{printf "%.3f", 1000 * t / hz / m}') ms per POST"
    fi
    # All the work done (queue empty, outbox drained): mailgate's CPU for
    # the whole run, which the clock's figure above may cut short.
    t2=$(ticks "$pid")
    log "$side run $1: mailgate CPU until the queue and outbox drained: $(awk -v t="$(( t2 - t0 ))" -v hz="$HZ" 'BEGIN{printf "%.2f", t / hz}') s, $(awk -v t="$(( t2 - t0 ))" -v hz="$HZ" -v m="$MESSAGES" 'BEGIN{printf "%.3f", 1000 * t / hz / m}') ms per message"
    hwm=$(awk '/^VmHWM:/{print $2}' "/proc/$pid/status")   # before the listing below allocates
    read -r _ _ pss < <(tree_mem "$pid")
    log "$side run $1: threads (CPU s): $(thread_cpu "$pid")"
    fsyncs=$(echo "$metrics" | awk '$1=="mailgate_spool_fsyncs_total"{print $2}')
    records=$(echo "$metrics" | awk '$1=="mailgate_spool_records_total"{print $2}')
    accepted=$(echo "$metrics" | awk '$1=="mailgate_messages_accepted_total"{print $2}')
    delivered=$(echo "$metrics" | awk '$1=="mailgate_delivered_total"{print $2}')
    if [ -z "$delivered" ]; then   # no such metric (yet): count the log's lines
        delivered=$(grep -c ' INFO delivered ' "$d/mailgate.log" || true)
    fi
    deferred=$(grep -c ' INFO deferred ' "$d/mailgate.log" || true)
    # mailgate's own view of duplicates: a queue id delivered twice.
    dups=$( { grep ' INFO delivered ' "$d/mailgate.log" | grep -o 'queue_id=[0-9A-F]*' | sort | uniq -d | wc -l; } || true)
    if [ "$delivered" = 0 ]; then delivered=-; dups=-; deferred=-; fi   # MAILGATE_LOG above info
    left=$("$MAILGATE" --config "$d/mailgate.toml" queue list --json |
        python3 -c 'import json,sys; print(len(json.load(sys.stdin)["messages"]))')
    # Stop the MTA first so that the sink counts its cached connections too.
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
    settle_sink "$d/sink.out"
    kill -TERM "$SINK_PID"; wait "$SINK_PID" 2>/dev/null || true
    if [ -n "$hook_pid" ]; then
        kill -TERM "$hook_pid" 2>/dev/null; wait "$hook_pid" 2>/dev/null || true
    fi
    RESULTS+=("$side $1 $RATE $SECS $SRC_RATE $(( (t1 - t0) * 100 / HZ )) $(( (s1 - s0) * 100 / HZ )) $SRC_CPU $KERNEL_S $(other_cpu $(( t1 - t0 )) $(( s1 - s0 ))) $SYS_BUSY $SYS_IOWAIT $LOAD $QUIET $SINK_MESG $SINK_SESS $left 1 $hwm $pss ${fsyncs:--} ${records:--} $delivered $deferred")
    log "$(printf '%s run %s: %.0f msg/s end to end (%.2f s; accept phase %.0f msg/s), sink has %s messages in %s sessions, queue left %s, fsyncs %s for %s records, delivered %s (ids delivered twice: %s), deferred %s, peak RSS %s KiB' \
        "$side" "$1" "$RATE" "$SECS" "$SRC_RATE" "$SINK_MESG" "$SINK_SESS" "$left" "$fsyncs" "$records" "$delivered" "$dups" "$deferred" "$hwm")"
    [ "$left" = 0 ] || die "mailgate queue still holds $left messages"
    [ "$SINK_MESG" = "$want" ] || log "WARNING: sink counted $SINK_MESG messages, expected $want (duplicates: $(( SINK_MESG - MESSAGES )))"
    [ "${KEEP:-0}" = 1 ] || rm -rf "$d/data"
}

# ---------------------------------------------------------------- postfix
pf_master() { cat "$1/queue/pid/master.pid" 2>/dev/null | tr -d ' '; }

pf_stop() { # dir
    local m kids p
    m=$(pf_master "$1")
    [ -n "$m" ] && kill -0 "$m" 2>/dev/null || return 0
    kids=$(ps -o pid= --ppid "$m" 2>/dev/null || true)
    postfix -c "$1/conf" stop >/dev/null 2>&1 || kill -TERM "$m" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$m" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$m" 2>/dev/null && kill -KILL "$m" 2>/dev/null
    for p in $kids; do
        for _ in $(seq 30); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null
    done
    return 0
}

pf_queued() { # dir -> files in the queue's message directories
    find "$1/queue/maildrop" "$1/queue/incoming" "$1/queue/active" "$1/queue/deferred" \
         "$1/queue/hold" "$1/queue/corrupt" -type f 2>/dev/null | wc -l
}

run_postfix() { # run-number
    local d=$WORK/pf$1 port m t0 t1 s0 s1 left n rss pss peak np delivered deferred
    mkdir -p "$d/conf" "$d/queue"   # post-install creates data/ as postfix
    chmod 755 "$d"
    start_sink "$d"
    port=$(free_port)
    cat > "$d/conf/main.cf" <<EOF
# Private benchmark instance (bench/relay.sh).
compatibility_level = 3.6
config_directory = $d/conf
queue_directory = $d/queue
data_directory = $d/data
myhostname = postfix.bench.test
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
mynetworks = 127.0.0.0/8
smtpd_peername_lookup = no
smtpd_recipient_restrictions = permit_mynetworks, reject
relayhost = [127.0.0.1]:$SINK_PORT
maillog_file = $d/maillog
maillog_file_prefixes = $d
EOF
    # The packaged master.cf: smtp inet on our port, chroot off everywhere,
    # pipe services (maildrop, uucp, ...) removed with their argument lines.
    awk -v port="$port" '
        /^[ \t]/       { if (!skip) print; next }
        /^#/ || /^$/   { skip = 0; print; next }
        {   skip = 0
            if ($1 == "smtp" && $2 == "inet") { print "127.0.0.1:" port " inet n - n - - smtpd"; next }
            if ($8 == "pipe") { skip = 1; next }
            $5 = "n"; print }' "$PF_MASTER_CF" > "$d/conf/master.cf"
    PF_DIRS+=("$d")
    postfix -c "$d/conf" start >/dev/null 2>"$d/start.err" || { cat "$d/start.err" "$d/maillog" >&2; die "postfix start failed"; }
    wait_port "$port" 20 || { cat "$d/maillog" >&2; die "postfix did not listen on $port"; }
    m=$(pf_master "$d")
    sampler "$m" "$d/peak_rss" & PIDS+=($!)
    t0=$(tree_ticks "$m"); s0=$(ticks "$SINK_PID")
    log "postfix run $1 (quiet: $QUIET): smtp-source -s $SESSIONS -m $MESSAGES -l $SIZE -> 127.0.0.1:$port -> smtp-sink 127.0.0.1:$SINK_PORT"
    run_load "$port" "$d" "$d/sink.out"
    t1=$(tree_ticks "$m"); s1=$(ticks "$SINK_PID")
    left=-1
    for _ in $(seq 100); do
        left=$(pf_queued "$d"); [ "$left" = 0 ] && break; sleep 0.1
    done
    read -r n rss pss < <(tree_mem "$m")
    read -r peak np < "$d/peak_rss" 2>/dev/null || { peak=0; np=0; }
    [ "$rss" -gt "$peak" ] && peak=$rss
    [ "$n" -gt "$np" ] && np=$n
    pf_stop "$d"   # first, so that the sink counts its cached connections too
    settle_sink "$d/sink.out"
    kill -TERM "$SINK_PID"; wait "$SINK_PID" 2>/dev/null || true
    delivered=$(grep -c 'status=sent' "$d/maillog" || true)
    deferred=$(grep -c 'status=deferred' "$d/maillog" || true)
    RESULTS+=("postfix $1 $RATE $SECS $SRC_RATE $(( (t1 - t0) * 100 / HZ )) $(( (s1 - s0) * 100 / HZ )) $SRC_CPU $KERNEL_S $(other_cpu $(( t1 - t0 )) $(( s1 - s0 ))) $SYS_BUSY $SYS_IOWAIT $LOAD $QUIET $SINK_MESG $SINK_SESS $left $np $peak $pss - - $delivered $deferred")
    log "$(printf 'postfix run %s: %.0f msg/s end to end (%.2f s; accept phase %.0f msg/s), sink has %s messages in %s sessions, queue left %s, sent %s, deferred %s, %s processes (peak), RSS %s KiB (peak), PSS %s KiB' \
        "$1" "$RATE" "$SECS" "$SRC_RATE" "$SINK_MESG" "$SINK_SESS" "$left" "$delivered" "$deferred" "$np" "$peak" "$pss")"
    [ "$left" = 0 ] || die "Postfix queue still holds $left messages"
    [ "$SINK_MESG" = "$MESSAGES" ] || log "WARNING: sink counted $SINK_MESG messages, expected $MESSAGES"
    [ "${KEEP:-0}" = 1 ] || rm -rf "$d/queue"
}

# ---------------------------------------------------------------- ceiling
# smtp-source straight into smtp-sink (no MTA, nothing stored): what the load
# generator and the kernel's loopback TCP can do on this machine.
run_sink() { # run-number
    local d=$WORK/sink$1 s0 s1
    mkdir -p "$d"; chmod 755 "$d"
    start_sink "$d"
    s0=$(ticks "$SINK_PID")
    log "sink run $1 (quiet: $QUIET): smtp-source -s $SESSIONS -m $MESSAGES -l $SIZE -> smtp-sink 127.0.0.1:$SINK_PORT"
    run_load "$SINK_PORT" "$d" "$d/sink.out"
    s1=$(ticks "$SINK_PID")
    settle_sink "$d/sink.out"
    kill -TERM "$SINK_PID"; wait "$SINK_PID" 2>/dev/null || true
    RESULTS+=("sink $1 $RATE $SECS $SRC_RATE 0 $(( (s1 - s0) * 100 / HZ )) $SRC_CPU $KERNEL_S $(other_cpu 0 $(( s1 - s0 ))) $SYS_BUSY $SYS_IOWAIT $LOAD $QUIET $SINK_MESG $SINK_SESS - 1 0 0 - - - -")
    log "$(printf 'sink run %s: %.0f msg/s (%.2f s), sink has %s messages in %s sessions' "$1" "$RATE" "$SECS" "$SINK_MESG" "$SINK_SESS")"
}

# ---------------------------------------------------------------- run
log "machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); scratch $WORK ($FS_TYPE on $FS_DEV; /work is on ${WORK_FS_DEV:-?})"
log "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for i in $(seq "$RUNS"); do
    for side in $SIDES; do
        sync
        wait_quiet
        "run_$side" "$i"
    done
done

# ---------------------------------------------------------------- report
best() { printf '%s\n' "${RESULTS[@]}" | awk -v s="$1" '$1==s && $3>b {b=$3} END {printf "%.0f", b}'; }
echo
echo "## relay: smtp-source -s $SESSIONS -m $MESSAGES -l $SIZE -r $RCPTS -> MTA -> smtp-sink, clock stops when the sink has all $MESSAGES"
echo "mailgate $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null) vs Postfix $PF_VERSION; $(nproc) cores; scratch on $FS_TYPE ($FS_DEV); $(date -u '+%Y-%m-%d %H:%M UTC')"
[ -z "$MG_DELIVERY" ] || echo "mailgate [delivery]: $(printf '%b' "$MG_DELIVERY" | tr '\n' ';')"
echo
echo "| side | run | msg/s | wall s | accept-phase msg/s | server CPU s | sink CPU s | smtp-source CPU s | kernel CPU s | other CPU s | busy % | iowait % | load 1m | quiet | sink msgs | sink sessions | queue left | procs | peak RSS MiB | PSS MiB | fsyncs | records | delivered | deferred |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for r in "${RESULTS[@]}"; do
    echo "$r" | awk '{printf "| %s | %s | %.0f | %.2f | %.0f | %.2f | %.2f | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %.1f | %.1f | %s | %s | %s | %s |\n",
        $1, $2, $3, $4, $5, $6/100, $7/100, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19/1024, $20/1024, $21, $22, $23, $24}'
done
MG=$(best mailgate); PF=$(best postfix)
echo
echo "best: mailgate ${MG:-?} msg/s, postfix ${PF:-?} msg/s, ceiling (smtp-source -> smtp-sink) $(best sink) msg/s"
if [ "${MG:-0}" -gt 0 ] && [ "${PF:-0}" -gt 0 ]; then
    echo "ratio mailgate/postfix: $(awk -v a="$MG" -v b="$PF" 'BEGIN{printf "%.2f", a / b}')"
fi
HK=$(best hooks)
if [ "${MG:-0}" -gt 0 ] && [ "${HK:-0}" -gt 0 ]; then
    echo "webhooks: off ${MG} msg/s, on ${HK} msg/s, on/off $(awk -v a="$HK" -v b="$MG" 'BEGIN{printf "%.3f (%.1f%% slower)", a / b, 100 * (1 - a / b)}')"
fi
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
