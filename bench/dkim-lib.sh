# Shared by bench/sign.sh and bench/verify.sh (sourced, not run): the DKIM
# peers' installation, the scratch directory, mailgate's keys and their
# records, the 5 KB message, and the quiet-machine wait. The caller defines
# log/die, MAILGATE, DOMAIN, QUIET_PCT, QUIET_SECS and QUIET_MAX first.

nth() { echo "$1" | cut -d, -f"$2"; }   # nth "a,b,c" 2 -> b
alg_index() { case $1 in ed25519) echo 1;; rsa) echo 2;; both) echo 3;; esac; }

# OpenDKIM (Debian), taskset, openssl, dkimpy; sets OPENDKIM, OD_VERSION
# and PY_VERSION.
install_dkim_peers() {
    local need=()
    command -v opendkim >/dev/null 2>&1 || [ -x /usr/sbin/opendkim ] || need+=(opendkim opendkim-tools)
    command -v taskset >/dev/null 2>&1 || need+=(util-linux)
    command -v openssl >/dev/null 2>&1 || need+=(openssl)
    if [ ${#need[@]} -gt 0 ]; then
        [ "$(id -u)" = 0 ] || die "missing ${need[*]}; install them or run as root"
        log "installing ${need[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
    OPENDKIM=$(command -v opendkim || echo /usr/sbin/opendkim)
    python3 -c 'import dkim, nacl' 2>/dev/null ||
        python3 -m pip install -q --disable-pip-version-check dkimpy pynacl dnspython
    OD_VERSION=$("$OPENDKIM" -V 2>&1 | head -1 | sed 's/.*Filter v//')
    PY_VERSION=$(python3 -c 'import importlib.metadata as m; print(m.version("dkimpy"))')
}

# A scratch directory (WORK, kept with KEEP=1) that becomes the working
# directory. $1 names it.
enter_scratch() {
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/mailgate-$1.XXXXXX")
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    cd "$WORK"
}
cleanup() {
    local rc=$?
    if [ "${KEEP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    exit $rc
}

# Keys made by mailgate itself (Ed25519 + RSA-2048) in WORK/data, with
# mg.toml; sets KEYDIR, ED_SEL and RSA_SEL, and writes `testkeys`, the
# published records (from `mailgate records`) as OpenDKIM's TestPublicKeys
# file ("NAME VALUE" per line).
mailgate_keys() {
cat > mg.toml <<EOF
[server]
hostname = "mx.$DOMAIN"
data_dir = "$WORK/data"
[[domain]]
name = "$DOMAIN"
deliver = "smtp://127.0.0.1:9"
EOF
"$MAILGATE" --config mg.toml dkim keygen --domain "$DOMAIN" > keygen.out
KEYDIR=$WORK/data/dkim/$DOMAIN
ED_SEL=$(python3 -c 'import json,sys; print([k["selector"] for k in json.load(open(sys.argv[1]))["keys"] if k["algorithm"]=="ed25519"][0])' "$KEYDIR/keys.json")
RSA_SEL=$(python3 -c 'import json,sys; print([k["selector"] for k in json.load(open(sys.argv[1]))["keys"] if k["algorithm"]=="rsa2048"][0])' "$KEYDIR/keys.json")
"$MAILGATE" --config mg.toml records > records.zone
python3 - records.zone > testkeys <<'EOF'
import re, sys
for line in open(sys.argv[1]):
    m = re.match(r'^(\S+)\s+\d+\s+IN\s+TXT\s+(.*)$', line)
    if m and "._domainkey." in m.group(1):
        print(m.group(1).rstrip("."), "".join(re.findall(r'"([^"]*)"', m.group(2))))
EOF
[ "$(wc -l < testkeys)" = 2 ] || die "expected 2 DKIM records in mailgate records: $(cat records.zone)"
}

# The message: 5120 bytes, CRLF, the headers a real one has; written to
# msg.eml.
write_message() {
python3 - "$DOMAIN" <<'EOF'
import sys
d = sys.argv[1]
head = (f"From: Alice Example <alice@{d}>\r\nTo: Bob <bob@far.test>\r\nCc: carol@far.test\r\n"
        f"Reply-To: replies@{d}\r\nSubject: Quarterly report for the signing benchmark\r\n"
        f"Date: Mon, 23 Nov 2026 12:00:00 +0000\r\nMessage-ID: <bench-1@{d}>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n")
body, i = [], 0
while len(head) + sum(len(l) + 2 for l in body) < 5120 - 80:
    body.append(f"line {i:04d} the quick brown fox jumps over the lazy dog, again and again.")
    i += 1
msg = (head + "\r\n".join(body) + "\r\n").encode()
msg += b"x" * (5120 - len(msg) - 2) + b"\r\n"
assert len(msg) == 5120
open("msg.eml", "wb").write(msg)
EOF
}

# Waits (before each run) until the machine is quiet; sets QUIET.
wait_quiet() {
    local start ok=0 a b t0 t1 pct
    start=$(date +%s)
    while pgrep -f bench/relay.sh >/dev/null; do
        [ $(( $(date +%s) - start )) -lt "$QUIET_MAX" ] || { QUIET="no(relay.sh)"; return; }
        sleep 5
    done
    read -r a t0 < <(awk '/^cpu /{print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8}' /proc/stat)
    while :; do
        sleep 1
        read -r b t1 < <(awk '/^cpu /{print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8}' /proc/stat)
        pct=$(( t1 > t0 ? 100 * (b - a) / (t1 - t0) : 0 ))
        a=$b; t0=$t1
        if [ "$pct" -lt "$QUIET_PCT" ]; then ok=$((ok + 1)); else ok=0; fi
        if [ "$ok" -ge "$QUIET_SECS" ]; then QUIET="yes/$(( $(date +%s) - start ))s"; return; fi
        if [ $(( $(date +%s) - start )) -ge "$QUIET_MAX" ]; then QUIET="no/${QUIET_MAX}s"; return; fi
    done
}

now() { date +%s.%N; }
rate() { awk -v n="$1" -v s="$2" 'BEGIN{printf "%.1f", n / s}'; }
