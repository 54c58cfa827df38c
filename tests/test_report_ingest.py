"""Ingesting the DMARC aggregate and TLS-RPT reports other receivers send
us: every conformance sample through `mailgate reports import`, compared
with what an independent reading of the same file (Python's XML, gzip,
zip, email and JSON modules, or mail-auth's expected JSON) says; broken
ones set aside with a reason; duplicates stored once; a zip slip, a
1 GB-expanding gzip and a billion-laughs document refused quickly with the
server's memory bounded; a report mailed to an `[reports] ingest` address
stored, not delivered. Real binary, real TCP on loopback."""

from __future__ import annotations

import base64
import functools
import email
import email.policy
import gzip
import io
import json
import re
import smtplib
import time
import xml.etree.ElementTree as ET
import zipfile
import zlib
from datetime import datetime
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
SAMPLES = ROOT / "conformance" / "reports"
BROKEN = {"invalid_utf_8.xml", "invalid_xml.xml"}
INGEST = '[reports]\ningest = ["dmarc@example.test", "TLSRPT@example.test"]\n'


def sample_files() -> list[Path]:
    out = []
    for p in sorted(SAMPLES.rglob("*")):
        if p.suffix in (".xml", ".gz", ".zip", ".eml"):
            out.append(p)
        elif p.suffix == ".json" and p.parent.name != "mail-auth-dmarc":
            out.append(p)  # mail-auth-dmarc/*.json are expectations
    return out


# -- an independent reading of a sample ----------------------------------


def documents(data: bytes) -> list[bytes]:
    """The XML/JSON documents in a file, opened with the standard library."""
    if data[:2] == b"\x1f\x8b":
        # One gzip member; what trails it is ignored.
        return documents(zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data))
    if data[:4] == b"PK\x03\x04":
        z = zipfile.ZipFile(io.BytesIO(data))
        return [d for n in z.namelist() for d in documents(z.read(n))]
    if data.lstrip()[:1] in (b"<", b"{") or data.startswith(b"\xef\xbb\xbf"):
        return [data]
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    out = []
    for part in msg.walk():
        if part.is_multipart() or part.get_content_type() == "text/html":
            continue
        body = part.get_payload(decode=True) or b""
        if body[:2] == b"\x1f\x8b" or body[:4] == b"PK\x03\x04" or body.lstrip()[:1] in (b"<", b"{"):
            out += documents(body)
    return out


def text(el, path):
    x = el.find(path)
    return (x.text or "").strip() if x is not None else ""


def expect_dmarc(doc: bytes) -> dict:
    start = doc.find(b"<feedback")  # ikea.com wraps it in a stray element
    root = ET.fromstring(doc[start:])
    for el in root.iter():  # the RFC 9990 namespace, when there is one
        el.tag = el.tag.split("}")[-1]
    records = root.findall("record")
    return {
        "kind": "dmarc",
        "org_name": text(root, "report_metadata/org_name"),
        "report_id": text(root, "report_metadata/report_id"),
        "begin": int(text(root, "report_metadata/date_range/begin")),
        "end": int(text(root, "report_metadata/date_range/end")),
        "policy_domain": text(root, "policy_published/domain").lower(),
        "rows": len(records),
        "messages": sum(int(text(r, "row/count")) for r in records),
    }


def rfc3339(s: str) -> int:
    return int(datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp())


def expect_tls(doc: bytes) -> dict:
    j = json.loads(doc)
    pols = j.get("policies", [])
    return {
        "kind": "tlsrpt",
        "org_name": j["organization-name"],
        "report_id": j["report-id"],
        "begin": rfc3339(j["date-range"]["start-datetime"]),
        "end": rfc3339(j["date-range"]["end-datetime"]),
        "rows": len(pols),
        "messages": sum(
            p["summary"].get("total-successful-session-count", 0)
            + p["summary"].get("total-failure-session-count", 0)
            for p in pols
        ),
    }


def expectation(path: Path) -> dict:
    docs = documents(path.read_bytes())
    assert len(docs) == 1, path
    return expect_tls(docs[0]) if docs[0].lstrip()[:1] == b"{" else expect_dmarc(docs[0])


# -- helpers ---------------------------------------------------------------


IMPORT_LINE = re.compile(r"^(stored|duplicate|rejected)\s+(.+?): (.*)$")


def import_files(srv, files, check=False):
    p = srv.cli("reports", "import", *map(str, files), check=check)
    results = {}
    for line in p.stdout.splitlines():
        m = IMPORT_LINE.match(line)
        if m:
            results[Path(m.group(2)).name] = (m.group(1), m.group(3))
    return p, results


def list_reports(srv, *args) -> list[dict]:
    return json.loads(srv.cli("reports", "list", "--json", "--limit", "1000", *args).stdout)["reports"]


def show(srv, rid: int) -> dict:
    return json.loads(srv.cli("reports", "show", str(rid), "--json").stdout)


def find(reports, org, rid):
    hits = [r for r in reports if r["org_name"] == org and r["report_id"] == rid]
    assert len(hits) == 1, (org, rid, reports)
    return hits[0]


def vm(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(key)


# -- tests -----------------------------------------------------------------


@pytest.mark.mailgate(extra_toml=INGEST)
def test_every_sample_imports_with_the_expected_values(server):
    files = sample_files()
    assert len(files) >= 35
    p, results = import_files(server, files)
    assert p.returncode != 0, "two broken samples: the import must say so"
    assert "2 rejected" in p.stdout, p.stdout
    stored = list_reports(server)
    for f in files:
        state, detail = results[f.name]
        if f.name in BROKEN:
            assert state == "rejected", (f, detail)
            continue
        assert state in ("stored", "duplicate"), (f, detail)
        exp = expectation(f)
        got = find(stored, exp["org_name"], exp["report_id"])
        if state == "duplicate":
            # Some samples share org and report id (mail-auth's 001 and 004
            # and RFC 9990's sample; RFC 8460's example and mail-auth's
            # rpt01): the first one imported is the one kept.
            continue
        for k in ("kind", "begin", "end", "messages"):
            assert got[k] == exp[k], (f.name, k, got, exp)
        if exp["kind"] == "dmarc":
            assert got["policy_domain"] == exp["policy_domain"], f
        full = show(server, got["id"])
        assert len(full["rows"] if exp["kind"] == "dmarc" else full["policies"]) == exp["rows"], f


@pytest.mark.mailgate(extra_toml=INGEST)
def test_mail_auth_expectations(server):
    """mail-auth's expected JSON beside each of its samples: every field
    that maps onto the store equals what mailgate stored."""
    exp_files = sorted((SAMPLES / "mail-auth-dmarc").glob("*.json"))
    inputs = [next(p.with_suffix(s) for s in (".xml", ".eml") if p.with_suffix(s).exists()) for p in exp_files]
    _, results = import_files(server, inputs, check=True)
    stored = list_reports(server, "--kind", "dmarc")
    for exp_file, inp in zip(exp_files, inputs):
        if results[inp.name][0] == "duplicate":  # 004 repeats 001's org and id
            continue
        e = json.loads(exp_file.read_text())
        md, pp = e["report_metadata"], e["policy_published"]
        got = show(server, find(stored, md["org_name"], md["report_id"])["id"])
        assert (got["email"], got["begin"], got["end"]) == (md["email"], md["date_range"]["begin"], md["date_range"]["end"])
        assert got["policy"]["domain"] == pp["domain"].lower()
        for key in ("p", "sp"):
            assert got["policy"][key] == ("" if pp[key] == "Unspecified" else pp[key].lower()), (exp_file, key)
        assert len(got["rows"]) == len(e["record"]), exp_file
        for row, rec in zip(got["rows"], e["record"]):
            r = rec["row"]
            assert row["source_ip"] == (r["source_ip"] or ""), exp_file
            assert row["count"] == r["count"]
            assert row["disposition"] == r["policy_evaluated"]["disposition"].lower().replace("unspecified", "")
            assert row["dkim_evaluated"] == r["policy_evaluated"]["dkim"].lower().replace("unspecified", "")
            assert row["spf_evaluated"] == r["policy_evaluated"]["spf"].lower().replace("unspecified", "")
            assert row["header_from"] == rec["identifiers"]["header_from"].lower()
            assert [(d["domain"], d["selector"], d["result"]) for d in row["dkim"]] == [
                (d["domain"].lower(), d["selector"], d["result"].lower()) for d in rec["auth_results"]["dkim"]
            ]
            assert [(s["domain"], s["result"]) for s in row["spf"]] == [
                (s["domain"].lower(), s["result"].lower()) for s in rec["auth_results"]["spf"]
            ]


@pytest.mark.mailgate(extra_toml=INGEST)
def test_broken_samples_are_set_aside_with_a_reason(server):
    broken = [SAMPLES / "dmarc-aggregate" / n for n in sorted(BROKEN)]
    p, results = import_files(server, broken)
    assert p.returncode != 0
    rejected = server.data_dir / "reports" / "rejected"
    for f in broken:
        state, detail = results[f.name]
        assert state == "rejected" and "kept as" in detail, detail
        kept = Path(detail.rsplit("kept as ", 1)[1].rstrip(")"))
        assert kept.parent == rejected and kept.read_bytes() == f.read_bytes()
        reason = Path(str(kept) + ".reason").read_text()
        assert "reason: invalid DMARC report" in reason and f.name in reason, reason
    assert list_reports(server) == []


@pytest.mark.mailgate(extra_toml=INGEST)
def test_the_same_report_twice_is_stored_once(server, tmp_path):
    f = SAMPLES / "dmarc-aggregate" / "example.net_example.com_1529366400_1529452799.xml"
    gz = tmp_path / "again.xml.gz"
    gz.write_bytes(gzip.compress(f.read_bytes()))
    _, first = import_files(server, [f], check=True)
    _, second = import_files(server, [f, gz], check=True)
    assert first[f.name][0] == "stored"
    assert second[f.name][0] == "duplicate" and second[gz.name][0] == "duplicate"
    assert len(list_reports(server)) == 1


@pytest.mark.mailgate(extra_toml=INGEST)
def test_zip_with_a_climbing_member_is_refused(server, tmp_path):
    good = (SAMPLES / "dmarc-aggregate" / "example.net_example.com_1529366400_1529452799.xml").read_bytes()
    z = tmp_path / "slip.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as w:
        w.writestr("report.xml", good)
        w.writestr("../evil.xml", good)
    p, results = import_files(server, [z])
    assert p.returncode != 0
    state, detail = results["slip.zip"]
    assert state == "rejected" and "unsafe archive" in detail and "../evil.xml" in detail, detail
    assert list_reports(server) == [], "nothing of a refused archive is stored"
    assert not (server.data_dir / "reports" / "evil.xml").exists()
    assert not list((server.data_dir / "reports" / "rejected").glob("*evil*"))


@functools.lru_cache(maxsize=1)
def gzip_bomb() -> bytes:
    """1 GB of zeros, gzipped as a stream (about 1 MB)."""
    c = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"\0" * (1 << 20)
    return b"".join(c.compress(block) for _ in range(1024)) + c.flush()


def billion_laughs() -> bytes:
    ents = ['<!ENTITY lol "lol">'] + [
        f'<!ENTITY lol{i} "{("&lol%s;" % (i - 1 if i > 1 else "")) * 10}">' for i in range(1, 10)
    ]
    return (
        '<?xml version="1.0"?>\n<!DOCTYPE feedback [\n' + "\n".join(ents) + "\n]>\n"
        "<feedback><report_metadata><org_name>&lol9;</org_name><report_id>laughs</report_id>"
        "<date_range><begin>1</begin><end>2</end></date_range></report_metadata>"
        "<policy_published><domain>example.test</domain></policy_published></feedback>\n"
    ).encode()


def report_message(rcpt: str, attachment: bytes, ctype: str, name: str) -> bytes:
    b64 = base64.encodebytes(attachment).replace(b"\n", b"\r\n")
    return (
        f"From: noreply-dmarc@reporter.test\r\nTo: {rcpt}\r\nSubject: Report Domain: example.test\r\n"
        "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b0\"\r\n\r\n"
        "--b0\r\nContent-Type: text/plain\r\n\r\nThis is an aggregate report.\r\n"
        f"--b0\r\nContent-Type: {ctype}\r\nContent-Transfer-Encoding: base64\r\n"
        f"Content-Disposition: attachment; filename=\"{name}\"\r\n\r\n"
    ).encode() + b64 + b"\r\n--b0--\r\n"


def send(srv, rcpt: str, body: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", srv.mx_port, timeout=60) as s:
        s.ehlo("reporter.test")
        s.sendmail("noreply-dmarc@reporter.test", [rcpt], body)


def wait_empty_queue(srv, timeout: float) -> float:
    start = time.monotonic()
    while srv.queue_list():
        assert time.monotonic() - start < timeout, srv.queue_list()
        time.sleep(0.05)
    return time.monotonic() - start


@pytest.mark.mailgate(extra_toml=INGEST, limits={"max_message_size": 10 << 20})
def test_bomb_and_billion_laughs_by_mail_are_refused_quickly_with_bounded_memory(server, tmp_path):
    pid = server.proc.pid
    before = vm(pid, "VmHWM")
    rejected = server.data_dir / "reports" / "rejected"
    for attachment, ctype, name in [
        (gzip_bomb(), "application/gzip", "bomb.xml.gz"),
        (billion_laughs(), "text/xml", "laughs.xml"),
    ]:
        send(server, "dmarc@example.test", report_message("dmarc@example.test", attachment, ctype, name))
        took = wait_empty_queue(server, 10)
        assert took < 3, f"{name} took {took:.1f}s"
    reasons = sorted(p.read_text() for p in rejected.glob("*.reason"))
    assert len(reasons) == 2, reasons
    assert any("decompression bomb" in r for r in reasons), reasons
    assert any("declares entities" in r for r in reasons), reasons
    grew = vm(pid, "VmHWM") - before
    # 64 MiB is the most one input may expand to; a 1 GB expansion would
    # show as ~1 GB here.
    assert grew < 200 << 20, f"peak RSS grew by {grew >> 20} MiB"
    assert list_reports(server) == []
    # The same files through the CLI: refused in well under two seconds.
    bomb = tmp_path / "bomb.xml.gz"
    bomb.write_bytes(gzip_bomb())
    laughs = tmp_path / "laughs.xml"
    laughs.write_bytes(billion_laughs())
    start = time.monotonic()
    p, results = import_files(server, [bomb, laughs])
    assert time.monotonic() - start < 2
    assert p.returncode != 0 and results["bomb.xml.gz"][0] == "rejected" and results["laughs.xml"][0] == "rejected"


@pytest.mark.mailgate(extra_toml=INGEST)
def test_report_mailed_to_an_ingest_address_is_stored_not_delivered(server):
    zipped = (SAMPLES / "dmarc-aggregate" / "estadocuenta1.infonacot.gob.mx_example.com_1536853302_1536939702_2940.xml.zip").read_bytes()
    send(server, "dmarc@example.test", report_message("dmarc@example.test", zipped, "application/zip", "r.zip"))
    tls = (SAMPLES / "tls-rpt" / "mail.ru.json").read_bytes()
    # Local parts match without regard to case.
    send(server, "tlsrpt@example.test", report_message("tlsrpt@example.test", gzip.compress(tls), "application/tlsrpt+gzip", "r.json.gz"))
    # example.test's next hop (127.0.0.1:9) refuses connections: a message
    # that went there would stay queued, deferred.
    wait_empty_queue(server, 10)
    cli = {(r["kind"], r["org_name"], r["report_id"]) for r in list_reports(server)}
    assert cli == {("dmarc", "XYZ Corporation", "2940"), ("tlsrpt", "Mail.ru", "b28254de-7b2e-be36-bb5c-4c3b92da8b25@mail.ru")}
    status, body = server.http_get("/api/v1/reports?kind=dmarc")
    assert status == 200, body
    listed = json.loads(body)["reports"]
    assert [r["report_id"] for r in listed] == ["2940"]
    status, body = server.http_get(f"/api/v1/reports/{listed[0]['id']}")
    assert status == 200, body
    full = json.loads(body)
    assert full["policy_domain"] == "example.com" and full["begin"] == 1536853302 and full["end"] == 1536939702
    row = full["rows"][0]
    assert (row["source_ip"], row["count"]) == ("148.243.137.254", 1), row
    assert set(row) >= {"disposition", "dkim", "spf", "dkim_evaluated", "spf_evaluated"}
    status, body = server.http_get("/api/v1/reports?domain=example.com&kind=tlsrpt")
    assert json.loads(body)["reports"][0]["org_name"] == "Mail.ru"
    status, body = server.http_get("/api/v1/reports?kind=tlsrpt")
    tid = json.loads(body)["reports"][0]["id"]
    pol = json.loads(server.http_get(f"/api/v1/reports/{tid}")[1])["policies"][0]
    assert pol["policy_type"] == "sts" and pol["details"][0]["result_type"] == "sts-policy-fetch-error"
    assert server.http_get("/api/v1/reports/999999")[0] == 404
    assert server.http_get("/api/v1/reports?kind=bogus")[0] == 400
    assert server.http_get("/api/v1/reports", token="wrong")[0] == 401
    assert "127.0.0.1:9" not in server.log_text()


@pytest.mark.mailgate(extra_toml=INGEST)
def test_import_works_with_the_server_stopped(server):
    f = SAMPLES / "dmarc-aggregate" / "fastmail.com_example.com_1516060800_1516147199_102675056.xml.gz"
    assert server.stop() == 0
    _, results = import_files(server, [f], check=True)
    assert results[f.name][0] == "stored"
    server.start()
    status, body = server.http_get("/api/v1/reports")
    assert status == 200 and json.loads(body)["reports"][0]["org_name"] == "FastMail Pty Ltd"
