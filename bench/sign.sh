#!/usr/bin/env bash
# DKIM signing benchmark: messages signed per second on one core, 5 KB
# message, relaxed/relaxed, the same oversigned header list, the same keys:
#   - mailgate: bench/sign-bench, which links the mailgate library and runs
#     the server's own signer (mailgate::sign::Signer, loaded from a config
#     and data_dir as at start-up), then prepends the fields as inbound.rs;
#   - OpenDKIM (Debian opendkim): `opendkim -t FILE,FILE,...` in test mode,
#     signing (Mode s, KeyTable/SigningTable); its output is verified with
#     TestPublicKeys (no DNS);
#   - dkimpy (PyPI).
# Algorithms: ed25519-sha256, rsa-sha256 (2048-bit) and both (two signatures
# per message). Every side runs pinned to one core (taskset -c $CPU), in the
# same run, RUNS times interleaved; the best run counts.
#
# Before measuring, every signer's output is checked: mailgate's with dkimpy
# and OpenDKIM, OpenDKIM's and dkimpy's with dkimpy.
#
# Usage: bench/sign.sh
# Environment:
#   RUNS=3   CPU=0
#   MG_N=20000,5000,4000   messages for mailgate: ed25519,rsa,both
#   OD_N=3000,2000,1200    for OpenDKIM
#   PY_N=1500,300,250      for dkimpy
#   QUIET_PCT=10 QUIET_SECS=5 QUIET_MAX=600   wait (before each run) until
#                  no bench/relay.sh runs and the machine has been under
#                  QUIET_PCT % busy for QUIET_SECS seconds (at most QUIET_MAX s)
#   KEEP=1   keep the scratch directory
set -euo pipefail

RUNS=${RUNS:-3}
CPU=${CPU:-0}
MG_N=${MG_N:-20000,5000,4000}
OD_N=${OD_N:-3000,2000,1200}
PY_N=${PY_N:-1500,300,250}
QUIET_PCT=${QUIET_PCT:-10}
QUIET_SECS=${QUIET_SECS:-5}
QUIET_MAX=${QUIET_MAX:-600}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MAILGATE=$ROOT/target/release/mailgate
SIGNER=$ROOT/target/release/mailgate-sign-bench
DOMAIN=bench.test
ALGS="ed25519 rsa both"

log() { printf '[sign] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
# shellcheck source=dkim-lib.sh
. "$ROOT/bench/dkim-lib.sh"

# ---------------------------------------------------------------- install
install_dkim_peers

# ---------------------------------------------------------------- build
log "building mailgate and bench/sign-bench (release)"
(cd "$ROOT" && cargo build --release -p mailgate) > "${TMPDIR:-/tmp}/mailgate-sign-build.log" 2>&1 ||
    { tail -30 "${TMPDIR:-/tmp}/mailgate-sign-build.log" >&2; die "cargo build failed"; }
# The bench shares the workspace's target directory: its Cargo.lock pins
# the same versions, so mailgate's dependencies are not built twice.
(cd "$ROOT/bench/sign-bench" && CARGO_TARGET_DIR=$ROOT/target cargo build --release) \
    >> "${TMPDIR:-/tmp}/mailgate-sign-build.log" 2>&1 ||
    { tail -30 "${TMPDIR:-/tmp}/mailgate-sign-build.log" >&2; die "sign-bench build failed"; }
[ -x "$MAILGATE" ] && [ -x "$SIGNER" ] || die "binaries missing after build"

# ---------------------------------------------------------------- scratch
enter_scratch sign

# Keys: made by mailgate itself (Ed25519 + RSA-2048), used by every side.
mailgate_keys
# One configuration per algorithm for the bench: mg-both.toml is mg.toml
# (both keys active); mg-ed25519.toml and mg-rsa.toml each point at a
# data_dir whose keys.json lists only that key.
cp mg.toml mg-both.toml
for a in ed25519 rsa; do
    sel=$([ "$a" = ed25519 ] && echo "$ED_SEL" || echo "$RSA_SEL")
    mkdir -p "data-$a/dkim/$DOMAIN"
    ln -s "$KEYDIR/$sel.pem" "data-$a/dkim/$DOMAIN/"
    python3 -c 'import json,sys; k=json.load(open(sys.argv[1])); k["keys"]=[x for x in k["keys"] if x["selector"]==sys.argv[2]]; json.dump(k, open(sys.argv[3], "w"))' \
        "$KEYDIR/keys.json" "$sel" "data-$a/dkim/$DOMAIN/keys.json"
    sed "s|^data_dir = .*|data_dir = \"$WORK/data-$a\"|" mg.toml > "mg-$a.toml"
done

# Key formats for the others: OpenSSL 3.0 cannot read ring's PKCS#8 v2
# Ed25519 PEM (with the public key), so OpenDKIM gets the same seed as
# PKCS#8 v1; dkimpy wants the raw seed (base64) and RSA as PKCS#1.
python3 - "$KEYDIR/$ED_SEL.pem" <<'EOF'
import base64, sys
der = base64.b64decode("".join(l for l in open(sys.argv[1]) if not l.startswith("-----")))
i = der.index(bytes.fromhex("0420")) + 2
seed = der[i:i + 32]
v1 = bytes.fromhex("302e020100300506032b657004220420") + seed
open("ed-v1.pem", "w").write("-----BEGIN PRIVATE KEY-----\n" + base64.b64encode(v1).decode() + "\n-----END PRIVATE KEY-----\n")
open("ed.seed", "w").write(base64.b64encode(seed).decode() + "\n")
EOF
openssl pkey -in "$KEYDIR/$RSA_SEL.pem" -traditional -out rsa-pkcs1.pem 2>/dev/null ||
    openssl rsa -in "$KEYDIR/$RSA_SEL.pem" -traditional -out rsa-pkcs1.pem

write_message

# OpenDKIM: one signing configuration per algorithm (SignatureAlgorithm is
# global in 2.11, so "both" is two passes), and one verifying configuration.
SIGN_HEADERS="From,Reply-To,Subject,Date,To,Cc,Message-ID,In-Reply-To,References,MIME-Version,Content-Type,Content-Transfer-Encoding,Content-Disposition,List-Unsubscribe,List-Unsubscribe-Post"
OVERSIGN="From,Reply-To,Subject,Date,To,Cc,Message-ID,MIME-Version,Content-Type,Content-Transfer-Encoding"
od_conf() { # alg selector keyfile
    echo "k $DOMAIN:$2:$3" > "keytable-$1"
    echo "*@$DOMAIN k" > "signingtable-$1"
    cat > "opendkim-$1.conf" <<EOF
Mode s
Syslog no
KeyTable file:$WORK/keytable-$1
SigningTable refile:$WORK/signingtable-$1
SignatureAlgorithm $( [ "$1" = ed25519 ] && echo ed25519-sha256 || echo rsa-sha256 )
Canonicalization relaxed/relaxed
SignHeaders $SIGN_HEADERS
OversignHeaders $OVERSIGN
TestPublicKeys $WORK/testkeys
RequireSafeKeys no
EOF
}
od_conf ed25519 "$ED_SEL" "$WORK/ed-v1.pem"
od_conf rsa "$RSA_SEL" "$KEYDIR/$RSA_SEL.pem"
printf 'Mode v\nSyslog no\nTestPublicKeys %s/testkeys\n' "$WORK" > opendkim-verify.conf

# dkimpy: signs N times in one process; OUT gets the last signed message.
cat > dkimpy_sign.py <<'EOF'
import base64, sys, time
import dkim
msg = open(sys.argv[1], "rb").read()
n, mode, domain, ed_sel, rsa_sel, out = int(sys.argv[2]), sys.argv[3], sys.argv[4].encode(), sys.argv[5].encode(), sys.argv[6].encode(), sys.argv[7]
ed_key = open("ed.seed", "rb").read().strip()
rsa_key = open("rsa-pkcs1.pem", "rb").read()
SIGN = [h.encode() for h in "from reply-to subject date to cc message-id in-reply-to references mime-version content-type content-transfer-encoding content-disposition list-unsubscribe list-unsubscribe-post".split()]
OVER = [h.encode() for h in "from reply-to subject date to cc message-id mime-version content-type content-transfer-encoding".split()]
keys = {"ed25519": [(b"ed25519-sha256", ed_sel, ed_key)], "rsa": [(b"rsa-sha256", rsa_sel, rsa_key)]}
keys["both"] = keys["ed25519"] + keys["rsa"]
def sign_one():
    out = b""
    for alg, sel, key in keys[mode]:
        d = dkim.DKIM(msg)
        d.add_frozen(OVER)
        out += d.sign(sel, domain, key, signature_algorithm=alg, canonicalize=(b"relaxed", b"relaxed"), include_headers=SIGN)
    return out + msg
last = sign_one()
t = time.perf_counter()
for _ in range(n):
    last = sign_one()
secs = time.perf_counter() - t
print(f"{mode} {n} {secs:.4f} {n / secs:.1f}")
open(out, "wb").write(last)
EOF

# A verifier for the sanity checks: dkimpy against the TestPublicKeys file.
cat > dkimpy_verify.py <<'EOF'
import sys
import dkim
keys = dict(l.rstrip("\n").split(" ", 1) for l in open(sys.argv[1]))
def dnsfunc(name, timeout=5):
    name = name.decode() if isinstance(name, bytes) else name
    v = keys.get(name.rstrip("."))
    return v.encode() if v else None
msg = open(sys.argv[2], "rb").read()
want = int(sys.argv[3])
n = msg.count(b"\nDKIM-Signature:") + msg.startswith(b"DKIM-Signature:")
assert n == want, f"{sys.argv[2]}: {n} signatures, expected {want}"
for i in range(n):
    assert dkim.DKIM(msg).verify(idx=i, dnsfunc=dnsfunc), f"{sys.argv[2]}: dkimpy rejects signature {i}"
print(f"{sys.argv[2]}: {n} signature(s) valid")
EOF

# Builds a signed message from OpenDKIM's test-mode output (the
# DKIM-Signature field it prints) and the message.
od_signed() { # output-file message out
    python3 - "$1" "$2" "$3" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
fields = re.findall(r"^(DKIM-Signature:.*?)(?=^opendkim:|\Z)", text, re.M | re.S)
assert fields, f"no DKIM-Signature in OpenDKIM output: {text[:500]}"
head = b"".join(f.rstrip("\n").replace("\n", "\r\n").encode() + b"\r\n" for f in fields)
open(sys.argv[3], "wb").write(head + open(sys.argv[2], "rb").read())
EOF
}

pin() { taskset -c "$CPU" "$@"; }
file_list() { python3 -c 'import sys; print(",".join([sys.argv[1]] * int(sys.argv[2])))' "$WORK/msg.eml" "$1"; }

# ---------------------------------------------------------------- checks
log "checking every signer's output"
for a in $ALGS; do
    want=$([ "$a" = both ] && echo 2 || echo 1)
    pin "$SIGNER" "mg-$a.toml" msg.eml 1 "$a" "mg-$a.eml" > /dev/null
    python3 dkimpy_verify.py testkeys "mg-$a.eml" "$want" >&2
    "$OPENDKIM" -x opendkim-verify.conf -t "mg-$a.eml" > "od-verify-$a.out" 2>&1 || true
    grep -q "verification (s=.*) succeeded" "od-verify-$a.out" ||
        die "OpenDKIM does not verify mailgate's $a signature: $(cat "od-verify-$a.out")"
    python3 dkimpy_sign.py msg.eml 1 "$a" "$DOMAIN" "$ED_SEL" "$RSA_SEL" "py-$a.eml" > /dev/null
    python3 dkimpy_verify.py testkeys "py-$a.eml" "$want" >&2
done
for a in ed25519 rsa; do
    "$OPENDKIM" -x "opendkim-$a.conf" -t msg.eml > "od-$a.out" 2>&1
    od_signed "od-$a.out" msg.eml "od-$a.eml"
    python3 dkimpy_verify.py testkeys "od-$a.eml" 1 >&2
done

# ---------------------------------------------------------------- measuring
RESULTS=()   # "side alg run n secs rate quiet"

run_mailgate() { # alg run
    local n out
    n=$(nth "$MG_N" "$(alg_index "$1")")
    out=$(pin "$SIGNER" "mg-$1.toml" msg.eml "$n" "$1")
    RESULTS+=("mailgate $1 $2 $n $(echo "$out" | awk '{print $3, $4}') $QUIET")
}

run_opendkim() { # alg run
    local n t0 t1 files a secs=0 c
    n=$(nth "$OD_N" "$(alg_index "$1")")
    files=$(file_list "$n")
    for a in $([ "$1" = both ] && echo "ed25519 rsa" || echo "$1"); do
        t0=$(now)
        pin "$OPENDKIM" -x "opendkim-$a.conf" -t "$files" > "od-run.out" 2>&1
        t1=$(now)
        c=$(grep -c '^DKIM-Signature:' od-run.out || true)
        [ "$c" = "$n" ] || die "OpenDKIM ($a) printed $c signatures for $n messages: $(head -3 od-run.out)"
        secs=$(awk -v s="$secs" -v a="$t0" -v b="$t1" 'BEGIN{printf "%.4f", s + b - a}')
    done
    RESULTS+=("opendkim $1 $2 $n $secs $(rate "$n" "$secs") $QUIET")
}

run_dkimpy() { # alg run
    local n out
    n=$(nth "$PY_N" "$(alg_index "$1")")
    out=$(pin python3 dkimpy_sign.py msg.eml "$n" "$1" "$DOMAIN" "$ED_SEL" "$RSA_SEL" py-run.eml)
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
wait_quiet
SSL=$(pin openssl speed -seconds 3 rsa2048 2>/dev/null | awk '/^rsa 2048 bits/{print $6}')
SSL_ED=$(pin openssl speed -seconds 3 ed25519 2>/dev/null | awk '/EdDSA \(Ed25519\)/{print $(NF-1)}')

# ---------------------------------------------------------------- report
best() { printf '%s\n' "${RESULTS[@]}" | awk -v s="$1" -v a="$2" '$1==s && $2==a && $6>b {b=$6} END {printf "%.0f", b}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b > 0) printf "%.1f", a / b; else print "-" }'; }
echo
echo "## sign: DKIM signatures on one core (taskset -c $CPU), 5120-byte message, relaxed/relaxed"
echo "mailgate $(git -C "$ROOT" describe --always --dirty 2>/dev/null) (mailgate::sign::Signer), OpenDKIM $OD_VERSION (opendkim -t), dkimpy $PY_VERSION; $(nproc) cores; $(date -u '+%Y-%m-%d %H:%M UTC')"
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
echo "best of $RUNS runs. \"both\" = an Ed25519 and an RSA-2048 signature per message (OpenDKIM: two passes, times added)."
echo "reference, same core: openssl speed rsa2048 ${SSL:-?} sign/s, ed25519 ${SSL_ED:-?} sign/s"
echo "goal (issue): mailgate RSA-2048 >= 3x OpenDKIM: $(ratio "$(best mailgate rsa)" "$(best opendkim rsa)")x"
