#!/usr/bin/env bash
# Accept benchmark: mailgate against a private Postfix instance, same load,
# same machine, same run. See BENCHMARKS.md ("Accept") for how Postfix is set up.
#
# Work compared: receive over SMTP and make the message durable (fsync before
# 250), nothing delivered during the run.
#   - Postfix puts every message on hold (check_client_access static:HOLD),
#     so cleanup writes and fsyncs it into hold/ and qmgr never touches it.
#   - mailgate's destination has a next hop that accepts TCP and never greets.
# Load: smtp-source -s 20 -m 20000 -l 5120, a fresh connection per message.
# Rate = messages / wall time of smtp-source.
#
# Usage (as root):  bench/accept.sh
# Environment:
#   RUNS=2          runs per side, interleaved (mailgate, postfix, mailgate, ...)
#   BUILD=0         do not build; use target/release/mailgate as it is
#   MESSAGES=20000  SESSIONS=20  SIZE=5120   smtp-source -m / -s / -l
#   SIDES="mailgate postfix sink"             which sides to run; "sink" is the
#                   ceiling: smtp-source straight to smtp-sink, nothing stored
#   BASELINE=BIN    another mailgate binary (an older build) run as side
#                   "baseline" with the same load, for before/after figures;
#                   add "baseline" to SIDES
#   CHECKS=1        mailgate runs its inbound checks (SPF, DKIM, DMARC, look-alike,
#                   recording each evaluation in the report store): the client is
#                   not a trusted network, and DNS is bench/nxdns.py on loopback
#                   (every name NXDOMAIN, negatively cached: a sender domain
#                   without records).
#                   Default 0: the client is trusted, so mail is relayed unchecked.
#   RECORD=both     the report store's cost: the same mailgate binary run as
#                   side "record" ([reports] record = true, the default) and
#                   side "norecord" (record = false), alternately, RUNS rounds
#                   (default 5 here); prints best and median of each and their
#                   ratios. Use with CHECKS=1 (without checks nothing is
#                   recorded). Sets SIDES="record norecord" unless given.
#   STORE=both      the report store's backend: side "sqlite" (embedded, the
#                   default) and side "postgres" ([cluster] store on a private
#                   PostgreSQL started here with initdb/pg_ctl in the scratch
#                   dir), alternately, RUNS rounds (default 3 here); prints the
#                   best and median of each and their ratio. Sets CHECKS=1 (so
#                   evaluations are recorded) and SIDES="sqlite postgres".
#                   bench/accept_store.sh runs this.
#   BENCH_TMP=DIR   parent of the scratch dir (default /var/tmp; must not be tmpfs)
#   KEEP=1          keep the scratch dir (configs, logs, queues) afterwards
#
# It never touches /etc/postfix or a system Postfix instance: Postfix runs
# only as `postfix -c SCRATCH/pfN/conf`, and everything started here is
# stopped by the EXIT trap.
set -euo pipefail

RECORD=${RECORD:-}
STORE=${STORE:-}
if [ "$STORE" = both ]; then
    RUNS=${RUNS:-3}
    CHECKS=1
    SIDES=${SIDES:-"sqlite postgres"}
fi
if [ "$RECORD" = both ]; then
    RUNS=${RUNS:-5}
    SIDES=${SIDES:-"record norecord"}
fi
RUNS=${RUNS:-2}
MESSAGES=${MESSAGES:-20000}
SESSIONS=${SESSIONS:-20}
SIZE=${SIZE:-5120}
SIDES=${SIDES:-"mailgate postfix sink"}
CHECKS=${CHECKS:-0}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MAILGATE=$ROOT/target/release/mailgate

log() { printf '[accept] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (Postfix's master must start as root)"

# ---------------------------------------------------------------- install
need_pkgs=()
command -v smtp-source >/dev/null 2>&1 && command -v postfix >/dev/null 2>&1 || need_pkgs+=(postfix)
command -v python3 >/dev/null 2>&1 || need_pkgs+=(python3)
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl)
[ -x /usr/bin/time ] || need_pkgs+=(time)
command -v ps >/dev/null 2>&1 || need_pkgs+=(procps)
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
# workspace, `cargo build --release`), as bench/relay.sh does.
if [ "${BUILD:-1}" != 0 ]; then
    log "building mailgate (release)"
    (cd "$ROOT" && cargo build --release -p mailgate) > "${TMPDIR:-/tmp}/mailgate-accept-build.log" 2>&1 ||
        { tail -30 "${TMPDIR:-/tmp}/mailgate-accept-build.log" >&2; die "cargo build failed"; }
fi
[ -x "$MAILGATE" ] || die "no $MAILGATE after build"

# ---------------------------------------------------------------- scratch
BENCH_TMP=${BENCH_TMP:-/var/tmp}
[ "$(stat -f -c %T "$BENCH_TMP")" != tmpfs ] || die "$BENCH_TMP is tmpfs; set BENCH_TMP to a disk directory"
WORK=$(mktemp -d "$BENCH_TMP/mailgate-accept.XXXXXX")
chmod 755 "$WORK"   # Postfix's unprivileged daemons must reach their queue
FS_TYPE=$(stat -f -c %T "$WORK")
FS_DEV=$(df -P "$WORK" | awk 'NR==2{print $1}')

PIDS=()             # our background processes (mailgate, blackhole, samplers)
PF_DIRS=()          # Postfix instances we started
cleanup() {
    local rc=$?
    set +e
    for d in "${PF_DIRS[@]}"; do pf_stop "$d"; done
    [ -z "${PG_STOP:-}" ] || $PG_STOP >/dev/null 2>&1
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

# With CHECKS=1, a DNS server where no name exists.
if [ "$CHECKS" = 1 ]; then
    DNS_PORT=$(free_port)
    python3 "$ROOT/bench/nxdns.py" "$DNS_PORT" &
    PIDS+=($!)
fi

# A next hop that accepts TCP and never greets.
BLACKHOLE_PORT=$(free_port)
python3 -c '
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(128)
held = []
while True:
    c, _ = s.accept(); held.append(c)
' "$BLACKHOLE_PORT" &
PIDS+=($!)
wait_port "$BLACKHOLE_PORT" 10 || die "blackhole did not start"

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

# Samples the summed RSS of a tree once a second; the peak goes to FILE.
sampler() { # root-pid file
    local peak=0 r p x
    while kill -0 "$1" 2>/dev/null; do
        r=0
        for p in $(tree "$1"); do
            x=$(awk '/^VmRSS:/{print $2}' "/proc/$p/status" 2>/dev/null) || x=0
            r=$(( r + ${x:-0} ))   # a zombie has no VmRSS
        done
        [ "$r" -gt "$peak" ] && { peak=$r; echo "$peak" > "$2"; }
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

# Runs the load; sets SECS, RATE, SRC_CPU, SYS_BUSY, SYS_IOWAIT, BUSY_S,
# KERNEL_S (kernel threads, irq, softirq), LOAD.
run_load() { # port dir
    local t0 t1 rc c0b c0w c0t c0i c0k c1b c1w c1t c1i c1k
    LOAD=$(cut -d' ' -f1 /proc/loadavg)
    read -r c0b c0w c0t c0i c0k < <(cpu_stat)
    t0=$(date +%s.%N)
    set +e
    /usr/bin/time -f '%U %S' -o "$2/source.time" \
        smtp-source -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" \
        -f sender@src.test -t rcpt@dst.test "127.0.0.1:$1" > "$2/source.out" 2>&1
    rc=$?
    set -e
    t1=$(date +%s.%N)
    read -r c1b c1w c1t c1i c1k < <(cpu_stat)
    [ $rc = 0 ] || { cat "$2/source.out" >&2; die "smtp-source exited $rc"; }
    [ ! -s "$2/source.out" ] || { log "smtp-source said:"; head -5 "$2/source.out" >&2; }
    SECS=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b - a}')
    RATE=$(awk -v m="$MESSAGES" -v s="$SECS" 'BEGIN{printf "%.1f", m / s}')
    SRC_CPU=$(awk '{printf "%.1f", $1+$2}' "$2/source.time")
    SYS_BUSY=$(( 100 * (c1b - c0b) / (c1t - c0t) ))
    SYS_IOWAIT=$(( 100 * (c1w - c0w) / (c1t - c0t) ))
    BUSY_S=$(awk -v t="$(( c1b - c0b ))" -v hz="$HZ" 'BEGIN{printf "%.2f", t / hz}')
    # (kernel threads that exited drop out of the sum: clamp at zero)
    KERNEL_S=$(awk -v t="$(( c1i - c0i + c1k - c0k ))" -v hz="$HZ" 'BEGIN{printf "%.1f", t < 0 ? 0 : t / hz}')
}

# CPU seconds used by other processes during the load (other agents on a
# shared machine): busy time of all cores minus the server's, smtp-source's
# and the kernel's (kernel threads such as jbd2/kworker, irq, softirq).
other_cpu() { # server-ticks
    awk -v b="$BUSY_S" -v s="$1" -v hz="$HZ" -v c="$SRC_CPU" -v k="$KERNEL_S" \
        'BEGIN{o = b - s / hz - c - k; printf "%.1f", o < 0 ? 0 : o}'
}

# Per-thread CPU of mailgate, busiest first: "name=user+sys ...", seconds.
thread_cpu() { # pid
    local t
    for t in /proc/"$1"/task/*; do
        printf '%s %s\n' "$(cat "$t/comm")" "$(sed 's/.*) //' "$t/stat" | awk '{print $12, $13}')"
    done | awk -v hz="$HZ" '{u[$1] += $2; s[$1] += $3} END {for (n in u) printf "%.2f %s=%.2f+%.2f\n", (u[n] + s[n]) / hz, n, u[n] / hz, s[n] / hz}' |
        sort -rn | head -6 | cut -d' ' -f2 | tr '\n' ' '
}

RESULTS=()   # "side run rate secs server_cpu src_cpu sys_busy sys_iowait load stored mem..."

# ---------------------------------------------------------------- mailgate
run_mailgate() { run_mg mailgate "$MAILGATE" "$1"; }
# The same binary with the report store recording on and off.
run_record() { REC=true run_mg record "$MAILGATE" "$1"; }
run_norecord() { REC=false run_mg norecord "$MAILGATE" "$1"; }
# The same binary with the report store in SQLite and in PostgreSQL.
run_sqlite() { run_mg sqlite "$MAILGATE" "$1"; }
run_postgres() { start_pg; PGSTORE="$PG_URL" run_mg postgres "$MAILGATE" "$1"; }
PG_URL=""
start_pg() { # a private PostgreSQL in the scratch dir, once
    [ -z "$PG_URL" ] || return 0
    local bin port
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    [ -x "$bin/initdb" ] || die "PostgreSQL is not installed (Debian: apt-get install postgresql)"
    port=$(free_port)
    mkdir -p "$WORK/pg"; chown postgres "$WORK/pg"
    runuser -u postgres -- "$bin/initdb" -D "$WORK/pg/data" -U postgres -A trust -E UTF8 --locale=C >/dev/null
    printf "listen_addresses = '127.0.0.1'\nport = %s\nunix_socket_directories = '%s'\n" "$port" "$WORK/pg" >> "$WORK/pg/data/postgresql.conf"
    runuser -u postgres -- "$bin/pg_ctl" -D "$WORK/pg/data" -l "$WORK/pg/log" -w start >/dev/null
    PG_STOP="runuser -u postgres -- $bin/pg_ctl -D $WORK/pg/data -m fast stop"
    PG_URL="postgres://postgres@127.0.0.1:$port/postgres"
    log "PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port (fsync on, defaults)"
}
run_baseline() { [ -x "${BASELINE:-}" ] || die "BASELINE must name a mailgate binary"; run_mg baseline "$BASELINE" "$1"; }

run_mg() { # side binary run-number
    local side=$1 MAILGATE=$2; shift 2
    local d=$WORK/$side$1 port http pid t0 t1 metrics fsyncs records stored hwm pss
    mkdir -p "$d"
    port=$(free_port); http=$(free_port)
    cat > "$d/mailgate.toml" <<EOF
[server]
hostname = "mailgate.bench.test"
data_dir = "$d/data"

[[listener]]
role = "mx"
bind = "127.0.0.1:$port"

[[domain]]
name = "dst.test"
deliver = "smtp://127.0.0.1:$BLACKHOLE_PORT"

$(if [ "$CHECKS" = 1 ]; then
    printf '[dns]\nnameservers = ["127.0.0.1:%s"]\n' "$DNS_PORT"
else
    printf '[relay]\ntrusted_networks = ["127.0.0.0/8"]\n'
fi)

$([ -z "${REC:-}" ] || printf '[reports]\nrecord = %s\n' "$REC")
$([ -z "${PGSTORE:-}" ] || printf '[cluster]\nstore = "%s"\nnode_id = "bench"\n' "$PGSTORE")

[http]
bind = "127.0.0.1:$http"

[limits]
max_connections = $(( SESSIONS * 4 > 500 ? SESSIONS * 4 : 500 ))
max_connections_per_ip = $(( SESSIONS * 2 > 100 ? SESSIONS * 2 : 100 ))
# smtp-source opens a connection per message; Postfix has no rate limit by
# default (smtpd_client_connection_rate_limit = 0), so neither does this side.
connections_per_ip_per_minute = 0
EOF
    "$MAILGATE" serve --config "$d/mailgate.toml" 2> "$d/mailgate.log" &
    pid=$!; PIDS+=("$pid")
    wait_port "$port" 20 || { cat "$d/mailgate.log" >&2; die "mailgate did not listen on $port"; }
    wait_port "$http" 20 || die "mailgate admin API did not listen on $http"
    sampler "$pid" "$d/peak_rss" & PIDS+=($!)
    t0=$(ticks "$pid")
    log "mailgate run $1: smtp-source -s $SESSIONS -m $MESSAGES -l $SIZE -> 127.0.0.1:$port"
    run_load "$port" "$d"
    t1=$(ticks "$pid")
    hwm=$(awk '/^VmHWM:/{print $2}' "/proc/$pid/status")   # before the listing below allocates
    read -r _ _ pss < <(tree_mem "$pid")
    log "mailgate run $1: threads (CPU s): $(thread_cpu "$pid")"
    metrics=$(curl -fsS "http://127.0.0.1:$http/metrics")
    fsyncs=$(echo "$metrics" | awk '$1=="mailgate_spool_fsyncs_total"{print $2}')
    records=$(echo "$metrics" | awk '$1=="mailgate_spool_records_total"{print $2}')
    if [ "$CHECKS" = 1 ]; then   # the server's own mean time per inbound check
        log "$side run $1: mean check time $(echo "$metrics" | awk '$1=="mailgate_check_duration_seconds_sum"{s=$2} $1=="mailgate_check_duration_seconds_count"{c=$2} END{if (c > 0) printf "%.0f us over %d checks", s / c * 1e6, c; else print "?"}')"
    fi
    stored=$("$MAILGATE" --config "$d/mailgate.toml" queue list --json |
        python3 -c 'import json,sys; print(len(json.load(sys.stdin)["messages"]))')
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
    RESULTS+=("$side $1 $RATE $SECS $(( (t1 - t0) * 100 / HZ )) $SRC_CPU $KERNEL_S $(other_cpu $(( t1 - t0 ))) $SYS_BUSY $SYS_IOWAIT $LOAD $stored 1 $hwm $pss $fsyncs $records")
    log "$(printf '%s run %s: %.0f msg/s (%.2f s), stored %s, fsyncs %s for %s records, peak RSS %s KiB' \
        "$side" "$1" "$RATE" "$SECS" "$stored" "$fsyncs" "$records" "$hwm")"
    [ "$stored" = "$MESSAGES" ] || die "mailgate queue holds $stored, expected $MESSAGES"
    rm -rf "$d/data"
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

run_postfix() { # run-number
    local d=$WORK/pf$1 port m t0 t1 stored n rss pss peak
    mkdir -p "$d/conf" "$d/queue"   # post-install creates data/ as postfix
    chmod 755 "$d"
    port=$(free_port)
    cat > "$d/conf/main.cf" <<EOF
# Private benchmark instance (bench/accept.sh).
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
smtpd_recipient_restrictions = check_client_access static:HOLD, permit_mynetworks, reject
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
    t0=$(tree_ticks "$m")
    log "postfix run $1: smtp-source -s $SESSIONS -m $MESSAGES -l $SIZE -> 127.0.0.1:$port"
    run_load "$port" "$d"
    t1=$(tree_ticks "$m")
    read -r n rss pss < <(tree_mem "$m")
    peak=$(cat "$d/peak_rss" 2>/dev/null || echo 0)
    [ "$rss" -gt "$peak" ] && peak=$rss
    # smtpd answers 250 only after cleanup fsynced the file into hold/.
    stored=$(find "$d/queue/hold" -type f | wc -l)
    pf_stop "$d"
    RESULTS+=("postfix $1 $RATE $SECS $(( (t1 - t0) * 100 / HZ )) $SRC_CPU $KERNEL_S $(other_cpu $(( t1 - t0 ))) $SYS_BUSY $SYS_IOWAIT $LOAD $stored $n $peak $pss - -")
    log "$(printf 'postfix run %s: %.0f msg/s (%.2f s), hold/ holds %s, %s processes, RSS %s KiB, PSS %s KiB' \
        "$1" "$RATE" "$SECS" "$stored" "$n" "$rss" "$pss")"
    [ "$stored" = "$MESSAGES" ] || die "Postfix hold/ holds $stored, expected $MESSAGES"
    rm -rf "$d/queue"
}

# ---------------------------------------------------------------- ceiling
# smtp-source straight into smtp-sink (no MTA, nothing stored): what the load
# generator and the kernel's loopback TCP can do on this machine.
run_sink() { # run-number
    local d=$WORK/sink$1 port pid t0 t1
    mkdir -p "$d"
    port=$(free_port)
    smtp-sink -u postfix "127.0.0.1:$port" 256 > "$d/sink.log" 2>&1 &
    pid=$!; PIDS+=("$pid")
    wait_port "$port" 20 || die "smtp-sink did not listen on $port"
    t0=$(ticks "$pid")
    log "sink run $1: smtp-source -s $SESSIONS -m $MESSAGES -l $SIZE -> smtp-sink 127.0.0.1:$port"
    run_load "$port" "$d"
    t1=$(ticks "$pid")
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
    RESULTS+=("sink $1 $RATE $SECS $(( (t1 - t0) * 100 / HZ )) $SRC_CPU $KERNEL_S $(other_cpu $(( t1 - t0 ))) $SYS_BUSY $SYS_IOWAIT $LOAD - 1 0 0 - -")
    log "$(printf 'sink run %s: %.0f msg/s (%.2f s)' "$1" "$RATE" "$SECS")"
}

# ---------------------------------------------------------------- run
log "machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); scratch $WORK ($FS_TYPE on $FS_DEV)"
log "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for i in $(seq "$RUNS"); do
    for side in $SIDES; do
        "run_$side" "$i"
        sync; sleep 5   # let the previous run's writeback and exits settle
    done
done

# ---------------------------------------------------------------- report
best() { printf '%s\n' "${RESULTS[@]}" | awk -v s="$1" '$1==s && $3>b {b=$3} END {printf "%.0f", b}'; }
echo
echo "## accept: smtp-source -s $SESSIONS -m $MESSAGES -l $SIZE, one connection per message"
echo "mailgate $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null) vs Postfix $PF_VERSION; $(nproc) cores; scratch on $FS_TYPE ($FS_DEV); $(date -u '+%Y-%m-%d %H:%M UTC')"
echo
echo "| side | run | msg/s | wall s | server CPU s | smtp-source CPU s | kernel CPU s | other CPU s | machine busy % | iowait % | load 1m before | stored | procs | peak RSS MiB | PSS MiB | fsyncs | records |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for r in "${RESULTS[@]}"; do
    echo "$r" | awk '{printf "| %s | %s | %.0f | %.2f | %.2f | %s | %s | %s | %s | %s | %s | %s | %s | %.1f | %.1f | %s | %s |\n",
        $1, $2, $3, $4, $5/100, $6, $7, $8, $9, $10, $11, $12, $13, $14/1024, $15/1024, $16, $17}'
done
MG=$(best mailgate); PF=$(best postfix)
echo
echo "best: mailgate ${MG:-?} msg/s, postfix ${PF:-?} msg/s, ceiling (smtp-sink) $(best sink) msg/s"
BL=$(best baseline)
if [ "${BL:-0}" -gt 0 ] && [ "${MG:-0}" -gt 0 ]; then
    echo "baseline ($BASELINE): $BL msg/s; ratio mailgate/baseline: $(awk -v a="$MG" -v b="$BL" 'BEGIN{printf "%.2f", a / b}')"
fi
median() { printf '%s\n' "${RESULTS[@]}" | awk -v s="$1" '$1==s {print $3}' | sort -n |
    awk '{v[NR] = $1} END {if (NR) printf "%.0f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
RB=$(best record); NB=$(best norecord)
if [ "${RB:-0}" -gt 0 ] && [ "${NB:-0}" -gt 0 ]; then
    RM=$(median record); NM=$(median norecord)
    echo "recording on: best $RB msg/s, median $RM; off: best $NB, median $NM"
    echo "ratio on/off: best $(awk -v a="$RB" -v b="$NB" 'BEGIN{printf "%.3f", a / b}'), median $(awk -v a="$RM" -v b="$NM" 'BEGIN{printf "%.3f", a / b}')"
fi
SB=$(best sqlite); PB=$(best postgres)
if [ "${SB:-0}" -gt 0 ] && [ "${PB:-0}" -gt 0 ]; then
    SM=$(median sqlite); PM=$(median postgres)
    echo "report store SQLite: best $SB msg/s, median $SM; PostgreSQL: best $PB, median $PM"
    echo "ratio postgres/sqlite: best $(awk -v a="$PB" -v b="$SB" 'BEGIN{printf "%.3f", a / b}'), median $(awk -v a="$PM" -v b="$SM" 'BEGIN{printf "%.3f", a / b}')"
fi
if [ "${MG:-0}" -gt 0 ] && [ "${PF:-0}" -gt 0 ]; then
    echo "ratio mailgate/postfix: $(awk -v a="$MG" -v b="$PF" 'BEGIN{printf "%.2f", a / b}')"
fi
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
