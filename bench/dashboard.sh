#!/usr/bin/env bash
# Dashboard speed benchmark: fills a scratch data directory's report store
# with 1,000,000 DMARC evaluations over the last 30 days (through the
# store's API: crates/mailgate/benches/dashboard.rs), starts the real
# server on it (DNS: bench/nxdns.py on loopback, so the domain page's
# lookups answer at once), then times the overview and a domain page over
# HTTP with the bearer token, and prints the best, median and worst of
# RUNS requests each. Goal: both under 200 ms.
#
# Usage:  bench/dashboard.sh
# Environment:
#   EVALUATIONS=1000000  DOMAINS=300  SOURCES=3000  MESSAGES=100000
#   RUNS=20
#   KEEP=DIR   fill DIR once and reuse it on later runs
#   BENCH_TMP=DIR   parent of the scratch directory (default: the system's temp dir)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
RUNS=${RUNS:-20}
BIN="$ROOT/target/release/mailgate"
cargo build --release --locked 2>&1 | grep -v '^\s*\(Compiling\|Finished\)' || true
if [ -n "${KEEP:-}" ]; then
    WORK="$KEEP"
    mkdir -p "$WORK"
else
    WORK="$(mktemp -d "${BENCH_TMP:-${TMPDIR:-/tmp}}/mailgate-dash.XXXXXX")"
    trap 'rm -rf "$WORK"' EXIT
fi
DATA="$WORK/data"
if [ ! -f "$DATA/reports.db" ]; then
    mkdir -p "$DATA"
    DATA_DIR="$DATA" cargo bench -p mailgate --bench dashboard --locked 2>&1 | grep -v '^\s*\(Compiling\|Finished\|Running\)'
fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
HTTP_PORT=$(free_port); SMTP_PORT=$(free_port); DNS_PORT=$(free_port)
python3 "$ROOT/bench/nxdns.py" "$DNS_PORT" &
DNS_PID=$!
cat > "$WORK/mailgate.toml" <<TOML
[server]
hostname = "mx.bench.example"
data_dir = "$DATA"
[[listener]]
role = "mx"
bind = "127.0.0.1:$SMTP_PORT"
[http]
bind = "127.0.0.1:$HTTP_PORT"
[dns]
nameservers = ["127.0.0.1:$DNS_PORT"]
[[domain]]
name = "domain0.example"
dkim = false
deliver = "smtp://127.0.0.1:9"
[reports]
send = false
TOML
"$BIN" serve --config "$WORK/mailgate.toml" > "$WORK/mailgate.log" 2>&1 &
SRV_PID=$!
cleanup() { kill "$SRV_PID" "$DNS_PID" 2>/dev/null || true; wait "$SRV_PID" 2>/dev/null || true; }
trap 'cleanup; [ -n "${KEEP:-}" ] || rm -rf "$WORK"' EXIT
for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$HTTP_PORT/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done
TOKEN="$(cat "$DATA/admin.token")"
time_page() {
    local path="$1" times=()
    # One request first: SQLite's page cache warm, as on a running server.
    curl -fsS -o /dev/null -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$HTTP_PORT$path"
    for _ in $(seq "$RUNS"); do
        times+=("$(curl -fsS -o /dev/null -w '%{time_total}' -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$HTTP_PORT$path")")
    done
    printf '%s\n' "${times[@]}" | sort -n | awk -v p="$path" '{ a[NR] = $1 * 1000 } END {
        printf "%-32s best %7.1f ms   median %7.1f ms   worst %7.1f ms   (%d requests)\n", p, a[1], a[int((NR + 1) / 2)], a[NR], NR }'
}
time_page "/"
time_page "/domains/domain0.example"
time_page "/?format=json"
time_page "/domains/domain0.example?format=json"
time_page "/messages?q=user5000%40sender.example"
echo "reports.db: $(du -h "$DATA/reports.db" | cut -f1)"
