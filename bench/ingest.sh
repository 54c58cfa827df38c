#!/usr/bin/env bash
# Report ingestion benchmark: `mailgate reports import` against parsedmarc
# (PyPI) on the same files, same machine, same run.
#
# Files: the readable samples of tests/conformance/reports/ (DMARC XML,
# .xml.gz, .zip, .eml; TLS-RPT JSON and .eml) repeated to FILES files, each
# copy with its own report id (so none is a duplicate), in the sample's own
# container (a gzip stays a gzip, a message stays a message). The 900 KB
# `_large-example.com` sample is left out unless LARGE=1: repeated, it would
# make the set a quarter of a gigabyte.
#
# mailgate: one `mailgate reports import` over all files into a fresh
# data_dir (no server; the SQLite store in WAL mode). Every report must be
# stored, none rejected.
# parsedmarc: one `parsedmarc --offline -s` over the same files: offline, so
# nothing is looked up on the network; its JSON output goes to /dev/null.
# Both times are wall clock; the ratio is parsedmarc / mailgate.
#
# Usage: bench/ingest.sh
# Environment:
#   FILES=10000   files to generate
#   LARGE=0       1 includes the large sample
#   BENCH_TMP=DIR parent of the scratch dir (default /var/tmp)
#   KEEP=1        keep the scratch dir
set -euo pipefail

FILES=${FILES:-10000}
LARGE=${LARGE:-0}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MAILGATE=$ROOT/target/release/mailgate
SAMPLES=$ROOT/tests/conformance/reports

log() { printf '[ingest] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ -x "$MAILGATE" ] || die "build first: cargo build --release"
command -v parsedmarc >/dev/null || die "parsedmarc is not installed: pip install -r tests/requirements.txt"

SCRATCH=$(mktemp -d "${BENCH_TMP:-/var/tmp}/mailgate-ingest.XXXXXX")
cleanup() { [ "${KEEP:-0}" = 1 ] && log "kept $SCRATCH" || rm -rf "$SCRATCH"; }
trap cleanup EXIT

log "generating $FILES files in $SCRATCH/files"
python3 - "$SAMPLES" "$SCRATCH/files" "$FILES" "$LARGE" <<'EOF'
import base64, email, email.policy, gzip, io, re, sys, zipfile, zlib
from pathlib import Path

samples, out, count, large = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
out.mkdir(parents=True)
BROKEN = {"invalid_utf_8.xml", "invalid_xml.xml"}

def retag(doc: bytes, n: int) -> bytes:
    """The same report with report id suffixed -n (XML or JSON)."""
    if doc.lstrip()[:1] == b"{":
        return re.sub(rb'("report-id"\s*:\s*")', rb"\g<1>" + b"b%d-" % n, doc, count=1)
    return re.sub(rb"<report_id>", b"<report_id>b%d-" % n, doc, count=1)

def gz(data: bytes) -> bytes:
    return gzip.compress(data, 6)

def build(path: Path, n: int) -> bytes:
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        return gz(retag(zlib.decompressobj(31).decompress(data), n))
    if data[:4] == b"PK\x03\x04":
        z = zipfile.ZipFile(io.BytesIO(data))
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as w:
            for name in z.namelist():
                w.writestr(name, retag(z.read(name), n))
        return buf.getvalue()
    if data.lstrip()[:1] in (b"<", b"{"):
        return retag(data, n)
    # A message: the same headers, its report re-attached gzipped.
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    doc = None
    for part in msg.walk():
        body = None if part.is_multipart() else part.get_payload(decode=True)
        if not body or part.get_content_type() == "text/html":
            continue
        if body[:2] == b"\x1f\x8b":
            body = zlib.decompressobj(31).decompress(body)
        elif body[:4] == b"PK\x03\x04":
            z = zipfile.ZipFile(io.BytesIO(body))
            body = z.read(z.namelist()[0])
        if body.lstrip()[:1] in (b"<", b"{"):
            doc = body
            break
    assert doc is not None, path
    tls = doc.lstrip()[:1] == b"{"
    ctype, name = ("application/tlsrpt+gzip", "report.json.gz") if tls else ("application/gzip", "report.xml.gz")
    head = "".join(f"{k}: {v}\r\n" for k, v in msg.items() if k.lower() in ("from", "to", "subject", "date", "message-id"))
    b64 = base64.encodebytes(gz(retag(doc, n))).replace(b"\n", b"\r\n")
    return (
        head + 'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="bb"\r\n\r\n'
        "--bb\r\nContent-Type: text/plain\r\n\r\nReport.\r\n"
        f"--bb\r\nContent-Type: {ctype}\r\nContent-Transfer-Encoding: base64\r\n"
        f'Content-Disposition: attachment; filename="{name}"\r\n\r\n'
    ).encode() + b64 + b"\r\n--bb--\r\n"

paths = []
for p in sorted(samples.rglob("*")):
    if p.name in BROKEN or (not large and p.name.startswith("_large")):
        continue
    if p.suffix in (".xml", ".gz", ".zip", ".eml") or (p.suffix == ".json" and p.parent.name != "mail-auth-dmarc"):
        paths.append(p)
suffix = {".xml": ".xml", ".gz": ".xml.gz", ".zip": ".zip", ".eml": ".eml", ".json": ".json"}
for i in range(count):
    p = paths[i % len(paths)]
    (out / f"r{i:06d}{suffix[p.suffix]}").write_bytes(build(p, i))
print(f"{count} files from {len(paths)} samples", file=sys.stderr)
EOF
du -sh "$SCRATCH/files" | sed 's/^/[ingest] /' >&2

mkdir -p "$SCRATCH/data"
printf '[server]\nhostname = "mx.bench.test"\ndata_dir = "%s"\n' "$SCRATCH/data" > "$SCRATCH/mailgate.toml"

cd "$SCRATCH/files"
sync
log "mailgate reports import"
start=$(date +%s.%N)
"$MAILGATE" --config "$SCRATCH/mailgate.toml" reports import ./* > "$SCRATCH/mailgate.out" || die "import failed: $(tail -3 "$SCRATCH/mailgate.out")"
end=$(date +%s.%N)
MG=$(echo "$end - $start" | bc)
summary=$(tail -1 "$SCRATCH/mailgate.out")
log "mailgate: $summary"
case "$summary" in "$FILES stored, 0 duplicate, 0 rejected") ;; *) die "expected $FILES stored: $summary" ;; esac

log "parsedmarc --offline"
start=$(date +%s.%N)
parsedmarc --offline -s ./* > /dev/null 2> "$SCRATCH/parsedmarc.err" || die "parsedmarc failed: $(tail -3 "$SCRATCH/parsedmarc.err")"
end=$(date +%s.%N)
PD=$(echo "$end - $start" | bc)
errors=$(grep -c -i "error" "$SCRATCH/parsedmarc.err" || true)

printf '\nfiles: %s (%s)\n' "$FILES" "$(du -sh . | cut -f1)"
printf 'mailgate reports import: %8.2f s  (%6.0f files/s)\n' "$MG" "$(echo "$FILES / $MG" | bc -l)"
printf 'parsedmarc --offline:    %8.2f s  (%6.0f files/s, %s error lines)\n' "$PD" "$(echo "$FILES / $PD" | bc -l)" "$errors"
printf 'ratio (parsedmarc / mailgate): %.1fx\n' "$(echo "$PD / $MG" | bc -l)"
