#!/usr/bin/env bash
# DKIM verification benchmark: verifications per second on one core, 5 KB
# message (the one bench/sign.sh uses), relaxed/relaxed, signed by
# mailgate's signer with mailgate's keys; every verifier gets the same
# signed files and the same key records:
#   - mailgate: bench/verify-bench, `mailgate::checks::dkim::verify` (the
#     server's code, mail-auth + ring underneath): parse + verify per
#     message, key records from a loopback DNS server (testkit) through
#     mailgate's resolver, whose cache is warm (DNS cached);
#   - OpenDKIM (Debian opendkim): `opendkim -t FILE,FILE,...` in test mode
#     (Mode v), keys from TestPublicKeys (no DNS);
#   - dkimpy (PyPI): dkim.DKIM(msg).verify() per signature, keys from a dict.
# Messages: ed25519-sha256, rsa-sha256 (2048-bit), and both (two signatures
# per message; a message counts once when all its signatures pass). Every
# side runs pinned to one core (taskset -c $CPU), in the same run, RUNS
# times interleaved; the best run counts.
#
# Before measuring, every verifier must pass every signature of every file.
#
# Usage: bench/verify.sh
# Environment:
#   RUNS=3   CPU=0
#   MG_N=40000,30000,15000   messages for mailgate: ed25519,rsa,both
#   OD_N=6000,6000,3000      for OpenDKIM
#   PY_N=1000,1000,500       for dkimpy
#   QUIET_PCT=10 QUIET_SECS=5 QUIET_MAX=600   wait (before each run) until
#                  no bench/relay.sh runs and the machine has been under
#                  QUIET_PCT % busy for QUIET_SECS seconds (at most QUIET_MAX s)
#   KEEP=1   keep the scratch directory
set -euo pipefail

RUNS=${RUNS:-3}
CPU=${CPU:-0}
MG_N=${MG_N:-40000,30000,15000}
OD_N=${OD_N:-6000,6000,3000}
PY_N=${PY_N:-1000,1000,500}
QUIET_PCT=${QUIET_PCT:-10}
QUIET_SECS=${QUIET_SECS:-5}
QUIET_MAX=${QUIET_MAX:-600}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MAILGATE=$ROOT/target/release/mailgate
# Shares the workspace's target directory: the bench links the mailgate
# library, and this reuses the already built dependencies.
BENCH_TARGET=${BENCH_TARGET:-$ROOT/target}
VERIFIER=$BENCH_TARGET/release/mailgate-verify-bench
DOMAIN=bench.test
ALGS="ed25519 rsa both"

log() { printf '[verify] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
# shellcheck source=dkim-lib.sh
. "$ROOT/bench/dkim-lib.sh"
sigs() { [ "$1" = both ] && echo 2 || echo 1; }

# ---------------------------------------------------------------- install
install_dkim_peers

# ---------------------------------------------------------------- build
BUILD_LOG=${TMPDIR:-/tmp}/mailgate-verify-build.log
log "building mailgate and bench/verify-bench (release)"
(cd "$ROOT" && cargo build --release -p mailgate) > "$BUILD_LOG" 2>&1 ||
    { tail -30 "$BUILD_LOG" >&2; die "cargo build failed"; }
(cd "$ROOT/bench/verify-bench" && CARGO_TARGET_DIR=$BENCH_TARGET cargo build --release) >> "$BUILD_LOG" 2>&1 ||
    { tail -30 "$BUILD_LOG" >&2; die "verify-bench build failed"; }
[ -x "$MAILGATE" ] && [ -x "$VERIFIER" ] || die "binaries missing after build"

# ---------------------------------------------------------------- scratch
enter_scratch verify

# Keys: made by mailgate itself (Ed25519 + RSA-2048).
mailgate_keys
mkdir -p keys-ed25519 keys-rsa
ln -s "$KEYDIR/$ED_SEL.pem" keys-ed25519/ && ln -s "$KEYDIR/$RSA_SEL.pem" keys-rsa/

write_message

# The signed files, one per algorithm set, by mailgate's signing code.
for a in $ALGS; do
    kd=$WORK/keys-$a; [ "$a" = both ] && kd=$KEYDIR
    "$VERIFIER" sign "$kd" "$DOMAIN" msg.eml "$a" "signed-$a.eml"
done

# OpenDKIM verifies up to MaximumSignaturesToVerify signatures per message
# (both of ours), but test mode prints one line per message: the result of
# the first good signature. So the count checked is messages, not signatures.
printf 'Mode v\nSyslog no\nTestPublicKeys %s/testkeys\nMaximumSignaturesToVerify 10\n' "$WORK" > opendkim-verify.conf

# dkimpy: verifies every signature of the message N times in one process.
cat > dkimpy_verify.py <<'EOF'
import sys, time
import dkim
keys = dict(l.rstrip("\n").split(" ", 1) for l in open(sys.argv[1]))
def dnsfunc(name, timeout=5):
    name = name.decode() if isinstance(name, bytes) else name
    v = keys.get(name.rstrip("."))
    return v.encode() if v else None
msg = open(sys.argv[2], "rb").read()
n, label = int(sys.argv[3]), sys.argv[4]
sigs = msg.count(b"\nDKIM-Signature:") + msg.startswith(b"DKIM-Signature:")
def verify_one():
    d = dkim.DKIM(msg)
    return all(d.verify(idx=i, dnsfunc=dnsfunc) for i in range(sigs))
assert sigs and verify_one(), f"dkimpy rejects {sys.argv[2]}"
t = time.perf_counter()
for _ in range(n):
    assert verify_one()
secs = time.perf_counter() - t
print(f"{label} {n} {secs:.4f} {n / secs:.1f}")
EOF

pin() { taskset -c "$CPU" "$@"; }
file_list() { python3 -c 'import sys; print(",".join([sys.argv[1]] * int(sys.argv[2])))' "$1" "$2"; }

# ---------------------------------------------------------------- checks
log "checking that every verifier passes every signature"
for a in $ALGS; do
    pin "$VERIFIER" verify testkeys "signed-$a.eml" 1 "$a" > /dev/null || die "mailgate does not pass signed-$a.eml"
    python3 dkimpy_verify.py testkeys "signed-$a.eml" 1 "$a" > /dev/null
    "$OPENDKIM" -x opendkim-verify.conf -t "signed-$a.eml" > "od-check-$a.out" 2>&1 || true
    ok=$(grep -c "verification (s=.*) succeeded" "od-check-$a.out" || true)
    [ "$ok" = 1 ] || die "OpenDKIM does not pass signed-$a.eml: $(cat "od-check-$a.out")"
done

# ---------------------------------------------------------------- measuring
RESULTS=()   # "side alg run n secs rate quiet"

run_mailgate() { # alg run
    local n out
    n=$(nth "$MG_N" "$(alg_index "$1")")
    out=$(pin "$VERIFIER" verify testkeys "signed-$1.eml" "$n" "$1" 2>/dev/null) || die "mailgate verify-bench failed ($1)"
    RESULTS+=("mailgate $1 $2 $n $(echo "$out" | awk '{print $3, $4}') $QUIET")
}

run_opendkim() { # alg run
    local n t0 t1 files c want
    n=$(nth "$OD_N" "$(alg_index "$1")")
    # One argument holds every name: short ones keep it under the kernel's
    # 128 KiB per-argument limit.
    ln -sf "signed-$1.eml" "m-$1"
    files=$(file_list "m-$1" "$n")
    t0=$(now)
    pin "$OPENDKIM" -x opendkim-verify.conf -t "$files" > od-run.out 2>&1 || true
    t1=$(now)
    c=$(grep -c "verification (s=.*) succeeded" od-run.out || true)
    [ "$c" = "$n" ] || die "OpenDKIM ($1) passed $c of $n messages: $(head -3 od-run.out)"
    RESULTS+=("opendkim $1 $2 $n $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.4f", b - a}') $(rate "$n" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b - a}')") $QUIET")
}

run_dkimpy() { # alg run
    local n out
    n=$(nth "$PY_N" "$(alg_index "$1")")
    out=$(pin python3 dkimpy_verify.py testkeys "signed-$1.eml" "$n" "$1")
    RESULTS+=("dkimpy $1 $2 $n $(echo "$out" | awk '{print $3, $4}') $QUIET")
}

log "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); pinned to CPU $CPU"
for r in $(seq "$RUNS"); do
    wait_quiet
    log "run $r (quiet: $QUIET, load $(cut -d' ' -f1 /proc/loadavg))"
    for a in $ALGS; do
        run_mailgate "$a" "$r"
        run_opendkim "$a" "$r"
        run_dkimpy "$a" "$r"
        log "  $a: $(printf '%s\n' "${RESULTS[@]}" | awk -v a="$a" -v r="$r" '$2==a && $3==r {printf "%s %.0f/s  ", $1, $6}')"
    done
done

# ------------------------------------------------ full-message checks
# SPF (MAIL FROM + HELO) + DKIM + ARC + DMARC + look-alike per message
# through the gateway's own `checks::verdict::Checker` (the bench adds SPF
# and p=reject DMARC records for the signing domain). No peer does this
# same work in one step, so it is reported on its own.
FULL="not measured"
for a in both; do
    set +e
    out=$(pin "$VERIFIER" full testkeys "signed-$a.eml" "$(nth "$MG_N" 3)" "full-$a" 2>/dev/null)
    rc=$?
    set -e
    case $rc in
        0) FULL="$(echo "$out" | awk '{printf "%.0f msg/s (%s messages, %.3f s)", $4, $2, $3}')";;
        *) die "full-message checks failed (exit $rc)";;
    esac
done

wait_quiet
SSL=$(pin openssl speed -seconds 3 rsa2048 2>/dev/null | awk '/^rsa 2048 bits/{print $7}')
SSL_ED=$(pin openssl speed -seconds 3 ed25519 2>/dev/null | awk '/EdDSA \(Ed25519\)/{print $NF}')

# ---------------------------------------------------------------- report
best() { printf '%s\n' "${RESULTS[@]}" | awk -v s="$1" -v a="$2" '$1==s && $2==a && $6>b {b=$6} END {printf "%.0f", b}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b > 0) printf "%.1f", a / b; else print "-" }'; }
echo
echo "## verify: DKIM verifications on one core (taskset -c $CPU), 5120-byte message, relaxed/relaxed"
echo "mailgate $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null) (checks::dkim: mail-auth + ring, DNS cached), OpenDKIM $OD_VERSION (opendkim -t, TestPublicKeys), dkimpy $PY_VERSION; $(nproc) cores; $(date -u '+%Y-%m-%d %H:%M UTC')"
echo
echo "| side | algorithm | run | messages | seconds | msg/s | quiet before |"
echo "|---|---|---|---|---|---|---|"
for r in "${RESULTS[@]}"; do
    echo "$r" | awk '{printf "| %s | %s | %s | %s | %.3f | %.0f | %s |\n", $1, $2, $3, $4, $5, $6, $7}'
done
echo
echo "| algorithm | mailgate msg/s | OpenDKIM msg/s | dkimpy msg/s | mailgate / OpenDKIM | mailgate / dkimpy |"
echo "|---|---|---|---|---|---|"
for a in $ALGS; do
    mg=$(best mailgate "$a"); od=$(best opendkim "$a"); py=$(best dkimpy "$a")
    echo "| $a | $mg | $od | $py | $(ratio "$mg" "$od") | $(ratio "$mg" "$py") |"
done
echo
echo "best of $RUNS runs. \"both\" = an Ed25519 and an RSA-2048 signature per message, both verified."
echo "full-message checks (SPF+DKIM+DMARC+ARC), mailgate: $FULL"
echo "reference, same core: openssl speed rsa2048 ${SSL:-?} verify/s, ed25519 ${SSL_ED:-?} verify/s"
echo "goal (issue): mailgate >= 5x OpenDKIM: rsa $(ratio "$(best mailgate rsa)" "$(best opendkim rsa)")x, ed25519 $(ratio "$(best mailgate ed25519)" "$(best opendkim ed25519)")x, both $(ratio "$(best mailgate both)" "$(best opendkim both)")x"
