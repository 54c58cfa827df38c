"""DMARC aggregate reports end to end: legitimate (DKIM-signed by dkimpy,
SPF-listed) and spoofed mail from several loopback source addresses
(127.0.0.2, .3, ... : the whole 127/8 is loopback) goes through the real
binary against a loopback DNS zone whose domains publish `rua`;
`mailgate reports send --now` runs; the report messages are captured at the
SMTP sink the rua domains' MX records point to. Then the XML is validated
against the RFC 9990 schema with xmllint, parsed with parsedmarc (offline),
and its counts per source address and result are compared with the traffic
sent. The external-destination rule (RFC 7489 §7.1) is tested both ways,
a `!size` limit too, and a second run sends nothing new. Mail to our own
report addresses is never counted.
"""

from __future__ import annotations

import email
import gzip
import json
import shutil
import smtplib
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

dkim = pytest.importorskip("dkim", reason="pip install dkimpy")
pytest.importorskip("nacl.signing", reason="pip install pynacl")
pytest.importorskip("dnslib", reason="pip install dnslib")
parsedmarc = pytest.importorskip("parsedmarc", reason="pip install parsedmarc")

from dnslib import A, MX, TXT  # noqa: E402
from dnslib.server import DNSLogger, DNSServer  # noqa: E402

from conftest import BIN, _RUNNING, MailgateServer, free_port  # noqa: E402
from loopdns import Zone  # noqa: E402
from postfix import PySink  # noqa: E402
from test_inbound_auth import Keys, message, sign  # noqa: E402

XSD = Path(__file__).parent / "conformance" / "reports" / "rfc9990" / "dmarc-2.0.xsd"
HELO = "client.outside.test"
ALPHA, BETA, GAMMA, DELTA = "alpha.test", "beta.test", "gamma.test", "delta.test"
PARTNER = "reports.partner.test"     # authorised for beta.test's reports
STRANGER = "unauth.other.test"       # authorised for nobody
OURS = "inbox.test"                  # our report domain: reports are DKIM-signed for it
REPORTS_FROM = f"dmarc-reports@{OURS}"
INGEST = "dmarc@example.test"
WAIT = 30.0


class Env:
    def __init__(self, srv, sink):
        self.srv, self.sink = srv, sink

    def send(self, source: str, mail_from: str, data: bytes, rcpt: str = "bob@example.test") -> int:
        with smtplib.SMTP("127.0.0.1", self.srv.mx_port, local_hostname=HELO, timeout=30,
                          source_address=(source, 0)) as s:
            try:
                s.sendmail(mail_from, [rcpt], data)
                return 250
            except smtplib.SMTPDataError as e:
                return e.smtp_code

    def send_reports(self) -> list[dict]:
        out = self.srv.cli("reports", "send", "--now", "--json").stdout
        return json.loads(out)["sent"]

    def reports_to(self, address: str) -> list[dict]:
        with self.sink.lock:
            return [m for m in self.sink.messages if f"<{address}>" in m["rcpts"]]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dmarc-reports")
    keys = Keys(tmp)
    sink = PySink().start()
    zone = Zone()
    dns = DNSServer(zone, port=free_port(), address="127.0.0.1", logger=DNSLogger(prefix=False, logf=lambda s: None))
    dns.start_thread()
    dns_port = dns.server.server_address[1]
    rsa = [keys.rsa_record[i:i + 255] for i in range(0, len(keys.rsa_record), 255)]
    policies = {
        ALPHA: f"v=DMARC1; p=none; rua=mailto:dmarc@{ALPHA}",
        BETA: f"v=DMARC1; p=reject; rua=mailto:agg@{PARTNER},mailto:agg@{STRANGER}",
        GAMMA: f"v=DMARC1; p=quarantine; rua=mailto:agg@{STRANGER}",
        DELTA: f"v=DMARC1; p=none; rua=mailto:tiny@{DELTA}!100",
    }
    for domain, record in policies.items():
        zone.add(f"{domain}.", "TXT", TXT(["v=spf1 ip4:127.0.0.2 ip4:127.0.0.3 -all"]))
        zone.add(f"_dmarc.{domain}.", "TXT", TXT([record]))
        zone.add(f"ed._domainkey.{domain}.", "TXT", TXT([keys.ed_record]))
        zone.add(f"rs._domainkey.{domain}.", "TXT", TXT(rsa))
    zone.add("evil.test.", "TXT", TXT(["v=spf1 ip4:192.0.2.1 -all"]))
    # beta.test's reports may go to the partner, to nobody else outside.
    zone.add(f"{BETA}._report._dmarc.{PARTNER}.", "TXT", TXT(["v=DMARC1"]))
    # Every report destination's MX is the sink.
    for domain in (ALPHA, DELTA, PARTNER, STRANGER):
        zone.add(f"{domain}.", "MX", MX("mx.sink.test."))
    zone.add("mx.sink.test.", "A", A("127.0.0.1"))
    srv = MailgateServer(BIN, tmp / "server", dns_port=dns_port,
                         extra_toml=f'[[domain]]\nname = "{OURS}"\ndeliver = "smtp://127.0.0.1:9"\n'
                                    f'[reports]\norg_name = "Mailgate Test"\nfrom = "{REPORTS_FROM}"\n'
                                    f'ingest = ["{INGEST}"]\n')
    text = srv.config_path.read_text().replace(f"mx_port = {srv.mx_delivery_port}", f"mx_port = {sink.port}")
    srv.config_path.write_text(text)
    srv.start()
    from test_dkim import parse_records
    e = Env(srv, sink)
    e.records = {name.rstrip(".").lower(): "".join(strings)
                 for name, rtype, strings in parse_records(srv.cli("records").stdout) if rtype == "TXT"}
    e.keys = keys
    e.traffic = send_traffic(e, keys)
    e.first = e.send_reports()
    yield e
    srv.stop()
    while srv in _RUNNING:
        _RUNNING.remove(srv)
    dns.stop()
    sink.stop()


def send_traffic(e: Env, keys) -> Counter:
    """Sends the test's mail; answers the expected counts per
    (header_from, source_ip, disposition, dkim, spf)."""
    want: Counter = Counter()
    n = 0

    def legit(domain: str, source: str, times: int):
        nonlocal n
        for _ in range(times):
            n += 1
            data = sign(message(f"News <news@{domain}>", f"legit-{n}"), domain, keys, rsa=False)
            assert e.send(source, f"news@{domain}", data) == 250
            want[(domain, source, "none", "pass", "pass")] += 1

    def spoof(domain: str, source: str, times: int, refused: bool):
        nonlocal n
        for _ in range(times):
            n += 1
            code = e.send(source, "attacker@evil.test", message(f"CEO <ceo@{domain}>", f"spoof-{n}"))
            assert code == (550 if refused else 250), code
            want[(domain, source, "reject" if refused else "none", "fail", "fail")] += 1

    legit(ALPHA, "127.0.0.2", 3)
    legit(ALPHA, "127.0.0.3", 2)
    spoof(ALPHA, "127.0.0.4", 2, refused=False)
    legit(BETA, "127.0.0.2", 2)
    spoof(BETA, "127.0.0.5", 3, refused=True)
    legit(GAMMA, "127.0.0.3", 1)
    legit(DELTA, "127.0.0.2", 1)
    # Mail to our report addresses (a report, say) is never counted.
    for rcpt in (REPORTS_FROM, INGEST):
        data = sign(message(f"Reports <r@{ALPHA}>", f"to-{rcpt}"), ALPHA, keys, rsa=False)
        assert e.send("127.0.0.6", f"r@{ALPHA}", data, rcpt=rcpt) == 250
    return want


def attachment(msg: bytes) -> tuple[str, str, bytes]:
    """(subject, file name, XML) of a report message."""
    m = email.message_from_bytes(msg)
    for part in m.walk():
        if part.get_content_type() == "application/gzip":
            return " ".join(str(m["Subject"]).split()), part.get_filename(), gzip.decompress(part.get_payload(decode=True))
    raise AssertionError("no application/gzip part in the report message")


def wait_reports(e: Env, address: str, n: int) -> list[dict]:
    deadline = time.monotonic() + WAIT
    while len(got := e.reports_to(address)) < n and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(got) == n, f"{address}: {len(got)} report(s), want {n}"
    return got


def test_reports_validate_and_count_the_traffic(env, tmp_path):
    assert shutil.which("xmllint"), "xmllint (Debian libxml2-utils) is needed"
    [alpha] = wait_reports(env, f"dmarc@{ALPHA}", 1)
    [beta] = wait_reports(env, f"agg@{PARTNER}", 1)
    assert alpha["sender"].split()[0] == f"<{REPORTS_FROM}>"
    seen: Counter = Counter()
    for domain, got in ((ALPHA, alpha), (BETA, beta)):
        subject, name, xml = attachment(got["content"])
        # RFC 9990: receiver!policy-domain!begin!end!unique-id.xml.gz, and
        # the unique id is the report id of the subject and the XML.
        receiver, policy_domain, begin, end, rest = name.split("!")
        unique = rest.removesuffix(".xml.gz")
        assert (receiver, policy_domain) == (OURS, domain), name
        assert subject == f"Report Domain: {domain} Submitter: {OURS} Report-ID: <{unique}>", subject
        # Signed for our report domain, and the signature verifies.
        def dnsfunc(name, timeout=5):
            name = (name.decode() if isinstance(name, bytes) else name).rstrip(".").lower()
            return env.records.get(name, "").encode() or None
        assert f"d={OURS}".encode() in got["content"].split(b"\r\n\r\n", 1)[0]
        assert dkim.verify(got["content"], dnsfunc=dnsfunc), "the report's DKIM signature does not verify"
        assert b'xmlns="urn:ietf:params:xml:ns:dmarc-2.0"' in xml
        path = tmp_path / name.replace("!", "_").removesuffix(".gz")
        path.write_bytes(xml)
        v = subprocess.run(["xmllint", "--noout", "--nonet", "--schema", str(XSD), str(path)],
                           capture_output=True, text=True, timeout=60)
        assert v.returncode == 0, v.stderr
        report = parsedmarc.parse_aggregate_report_xml(xml.decode(), offline=True, always_use_local_files=True,
                                                       nameservers=["127.0.0.1"], timeout=0.5)
        meta = report["report_metadata"]
        assert meta["org_name"] == "Mailgate Test" and meta["org_email"] == REPORTS_FROM, meta
        assert meta["report_id"] == unique
        assert int(begin) <= int(end)
        assert report["policy_published"]["domain"] == domain
        for r in report["records"]:
            pe = r["policy_evaluated"]
            assert r["identifiers"]["header_from"] == domain
            seen[(domain, r["source"]["ip_address"], pe["disposition"], pe["dkim"], pe["spf"])] += r["count"]
            if pe["dkim"] == "pass":
                assert [(d["domain"], d["selector"], d["result"]) for d in r["auth_results"]["dkim"]] == \
                    [(domain, "ed", "pass")], r
                assert r["auth_results"]["spf"][0]["result"] == "pass", r
    want = Counter({k: v for k, v in env.traffic.items() if k[0] in (ALPHA, BETA)})
    assert seen == want
    # Mail to the report addresses (from 127.0.0.6) was not counted.
    assert not any(k[1] == "127.0.0.6" for k in seen)


def test_answer_lists_what_was_sent(env):
    by = {(s["kind"], s["domain"]): s for s in env.first}
    alpha = by[("dmarc", ALPHA)]
    assert alpha["destinations"] == [f"dmarc@{ALPHA}"] and alpha["messages"] == 7, alpha
    assert by[("dmarc", BETA)]["destinations"] == [f"agg@{PARTNER}"]
    assert by[("dmarc", BETA)]["messages"] == 5
    assert alpha["report_id"] and alpha["queue_id"]


def test_unauthorised_external_destination_gets_nothing(env):
    wait_reports(env, f"agg@{PARTNER}", 1)
    assert env.reports_to(f"agg@{STRANGER}") == []
    by = {(s["kind"], s["domain"]): s for s in env.first}
    # gamma.test's only destination is not authorised: no report at all,
    # but its traffic counts as handled.
    assert by[("dmarc", GAMMA)]["destinations"] == []
    assert "has not authorised reports" in env.srv.log_text()


def test_size_limit_drops_the_destination(env):
    by = {(s["kind"], s["domain"]): s for s in env.first}
    assert by[("dmarc", DELTA)]["destinations"] == []
    assert env.reports_to(f"tiny@{DELTA}") == []
    assert "!size limit" in env.srv.log_text()


def test_second_run_sends_nothing_new(env):
    wait_reports(env, f"dmarc@{ALPHA}", 1)
    again = env.send_reports()
    assert [s for s in again if s["kind"] == "dmarc"] == [], again
    before = len(env.sink.messages)
    env.sink.wait_for(lambda m: False, 2.0)
    assert len(env.sink.messages) == before


def test_preview_prints_the_xml_without_marking(env):
    data = sign(message(f"News <news@{ALPHA}>", "after-report"), ALPHA, env.keys, rsa=False)
    assert env.send("127.0.0.3", f"news@{ALPHA}", data) == 250
    out = env.srv.cli("reports", "preview", ALPHA).stdout
    assert out.startswith("<?xml") and "<source_ip>127.0.0.3</source_ip>" in out, out
    assert "<count>1</count>" in out and "127.0.0.2" not in out, out
    # Still unreported: send --now --domain picks it up once.
    sent = env.srv.cli("reports", "send", "--now", "--domain", ALPHA, "--json").stdout
    [one] = [s for s in json.loads(sent)["sent"] if s["kind"] == "dmarc"]
    assert one["domain"] == ALPHA and one["messages"] == 1
    wait_reports(env, f"dmarc@{ALPHA}", 2)


def test_report_endpoints_need_the_token(env):
    status, _ = env.srv.http_get(f"/api/v1/reports/preview/{ALPHA}", token="")
    assert status == 401
    status, _ = env.srv.http_get("/api/v1/reports/preview/nothing.test")
    assert status == 404
