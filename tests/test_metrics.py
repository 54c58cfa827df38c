"""Prometheus metrics end to end: known traffic goes to the real binary over
SMTP, then `/metrics` is parsed with `prometheus_client`'s text parser and
every counter must equal what the test sent.

The loopback DNS (dnslib) serves good.test (SPF pass, a DKIM key, DMARC
p=none), evil.test (SPF that does not list us, DMARC p=quarantine); the
look-alike exmaple.test publishes nothing. Delivery goes to a Python sink
(accepts everything), to a sink that refuses every recipient with 550
(bounces), and to a closed port (defers).
"""

from __future__ import annotations

import base64
import re
import smtplib
import socket
import socketserver
import threading
import time
from pathlib import Path

import pytest

dkim = pytest.importorskip("dkim", reason="pip install dkimpy")
nacl_signing = pytest.importorskip("nacl.signing", reason="pip install pynacl")
pytest.importorskip("dnslib", reason="pip install dnslib")
parser = pytest.importorskip("prometheus_client.parser", reason="pip install prometheus_client")

from conftest import ROOT, free_port  # noqa: E402
from helpers import RefusingSmtp as _Refuser  # noqa: E402
from helpers import Dialogue  # noqa: E402
from loopdns import LoopbackDns  # noqa: E402
from postfix import PySink  # noqa: E402

HELO = "client.outside.test"
MAX_SIZE = 20000
WAIT = 20.0

# Families the README documents, with their type. The test also checks the
# README's table lists exactly these.
DOCUMENTED = {
    "mailgate_connections": "counter",
    "mailgate_connections_refused": "counter",
    "mailgate_open_connections": "gauge",
    "mailgate_messages_received": "counter",
    "mailgate_messages_accepted": "counter",
    "mailgate_messages_refused": "counter",
    "mailgate_accepted_bytes": "counter",
    "mailgate_spool_errors": "counter",
    "mailgate_delivered": "counter",
    "mailgate_deferred": "counter",
    "mailgate_bounced": "counter",
    "mailgate_delivery_failures": "counter",
    "mailgate_async_bounces": "counter",
    "mailgate_suppression": "counter",
    "mailgate_auth_results": "counter",
    "mailgate_dmarc_dispositions": "counter",
    "mailgate_lookalike_hits": "counter",
    "mailgate_outbound_tls_results": "counter",
    "mailgate_reports_sent": "counter",
    "mailgate_reports_ingested": "counter",
    "mailgate_queue_messages": "gauge",
    "mailgate_queue_recipients": "gauge",
    "mailgate_queue_state_messages": "gauge",
    "mailgate_webhook_events": "counter",
    "mailgate_webhook_outbox_events": "gauge",
    "mailgate_spool_fsyncs": "counter",
    "mailgate_spool_records": "counter",
    "mailgate_delivery_latency_seconds": "histogram",
    "mailgate_check_duration_seconds": "histogram",
    "mailgate_rate_limited": "counter",
}

# Labelled series that must exist at start (at 0), one per known value.
REASONS = ["relay", "policy", "auth", "size", "content", "syntax", "recipients",
           "spool", "resources", "other"]
AUTH = {
    "spf": ["pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"],
    "dkim": ["pass", "fail", "neutral", "policy", "none", "temperror", "permerror"],
    "arc": ["pass", "fail", "none", "temperror"],
    "dmarc": ["pass", "fail", "none", "temperror", "permerror"],
}
TLS_RESULTS = ["success", "starttls-not-supported", "certificate-host-mismatch",
               "certificate-expired", "certificate-not-trusted", "validation-failure",
               "sts-policy-fetch-error", "sts-policy-invalid"]
TLS_POLICIES = ["sts", "no-policy-found", "require-tls"]
ROLES = ["mx", "submission", "submissions"]


class _Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True


def dkim_keys():
    seed = nacl_signing.SigningKey.generate()
    private = base64.b64encode(bytes(seed)).decode().encode()
    record = "v=DKIM1; k=ed25519; p=" + base64.b64encode(bytes(seed.verify_key)).decode()
    return private, record


def message(author: str, marker: str, body: str = "") -> bytes:
    return (f"From: {author}\r\nTo: bob@example.test\r\nSubject: {marker}\r\n"
            f"Date: Mon, 23 Nov 2026 12:00:00 +0000\r\n"
            f"Message-ID: <{marker}@outside.test>\r\n\r\n"
            f"Hello, this is {marker}.\r\n{body}").encode()


def signed(data: bytes, private: bytes) -> bytes:
    sig = dkim.sign(data, b"ed", b"good.test", private, signature_algorithm=b"ed25519-sha256",
                    include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    return sig + data


def scrape(srv) -> tuple[str, dict]:
    """The raw text and {family name: family} as prometheus_client parses it."""
    status, text = srv.http_get("/metrics", token="")
    assert status == 200, text
    return text, {f.name: f for f in parser.text_string_to_metric_families(text)}


def value(families: dict, family: str, sample: str | None = None, **labels) -> float:
    """The value of one sample; the sample name defaults to the family's
    (with `_total` for counters)."""
    f = families[family]
    name = sample or (family + "_total" if f.type == "counter" else family)
    got = [s.value for s in f.samples if s.name == name and s.labels == labels]
    assert len(got) == 1, f"{name}{labels}: {len(got)} samples in {f.samples}"
    return got[0]


def readme_families() -> set[str]:
    """Family names in the README's metrics table (first column; a
    counter's family is its name without `_total`)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    table = section.split("| metric |", 1)[1].split("\n\n", 1)[0]
    names = set()
    for row in table.splitlines()[2:]:
        m = re.match(r"\|\s*`(mailgate_[a-z_]+)`", row)
        if m:
            names.add(re.sub(r"_total$", "", m.group(1)))
    return names


@pytest.fixture
def world(mailgate_factory, tmp_path):
    private, record = dkim_keys()
    dns = LoopbackDns(free_port())
    dns.resolver.load([
        ("good.test.", "TXT", ["v=spf1 ip4:127.0.0.1 -all"]),
        ("_dmarc.good.test.", "TXT", ["v=DMARC1; p=none"]),
        ("ed._domainkey.good.test.", "TXT", [record]),
        ("evil.test.", "TXT", ["v=spf1 ip4:192.0.2.1 -all"]),
        ("_dmarc.evil.test.", "TXT", ["v=DMARC1; p=quarantine"]),
    ])
    sink = PySink().start()
    refuser = _Server(("127.0.0.1", 0), _Refuser)
    threading.Thread(target=refuser.serve_forever, daemon=True).start()
    closed = free_port()  # nothing listens: delivery there defers
    srv = mailgate_factory(
        "metrics", dns_port=dns.port, limits={"max_message_size": MAX_SIZE},
        policy={"spf_fail": "tag", "dmarc_quarantine": "quarantine", "lookalike": "tag",
                "invalid_from": "tag", "temperror": "accept"},
        extra_toml=(f'[[domain]]\nname = "bounce.test"\ndkim = false\ndeliver = "smtp://127.0.0.1:{refuser.server_address[1]}"\n'
                    f'[[domain]]\nname = "defer.test"\ndkim = false\ndeliver = "smtp://127.0.0.1:{closed}"\n'),
    )
    text = srv.config_path.read_text().replace('deliver = "smtp://127.0.0.1:9"', f'deliver = "{sink.url()}"')
    srv.config_path.write_text(text)
    srv.start()
    yield srv, sink, private
    refuser.shutdown()
    refuser.server_close()
    sink.stop()
    dns.stop()


def wait_until(what: str, check, srv, timeout: float = WAIT):
    deadline = time.monotonic() + timeout
    while True:
        _, fams = scrape(srv)
        ok, got = check(fams)
        if ok:
            return fams
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: {got}")
        time.sleep(0.1)


def test_every_documented_family_is_exported_at_zero_from_start(world):
    srv, _, _ = world
    text, fams = scrape(srv)
    assert set(DOCUMENTED) == readme_families(), "the README's metrics table and the test disagree"
    for name, kind in DOCUMENTED.items():
        assert name in fams, f"{name} missing"
        assert fams[name].type == kind, (name, fams[name].type)
        assert fams[name].documentation, f"{name} has no HELP"
        sample = name + "_total" if kind == "counter" else name
        assert f"# HELP {sample} " in text and f"# TYPE {sample} {kind}\n" in text, sample
        values = [s.value for s in fams[name].samples
                  if not s.name.endswith(("_bucket", "_sum", "_count")) or s.name.endswith("_count")]
        assert values and all(v == 0 for v in values), (name, fams[name].samples)
    # The old name that broke the conventions is gone.
    assert "mailgate_bytes_accepted_total" not in text
    for reason in REASONS:
        assert value(fams, "mailgate_messages_refused", reason=reason) == 0
    for method, results in AUTH.items():
        for result in results:
            assert value(fams, "mailgate_auth_results", method=method, result=result) == 0
    for d in ["none", "quarantine", "reject"]:
        assert value(fams, "mailgate_dmarc_dispositions", disposition=d) == 0
    for rule in ["confusable", "substitution", "edit-distance", "embedded", "display-name", "local-part"]:
        assert value(fams, "mailgate_lookalike_hits", rule=rule) == 0
    for result in TLS_RESULTS:
        for policy in TLS_POLICIES:
            assert value(fams, "mailgate_outbound_tls_results", result=result, policy=policy) == 0
    for kind in ["dmarc", "tlsrpt"]:
        assert value(fams, "mailgate_reports_sent", kind=kind) == 0
        assert value(fams, "mailgate_reports_ingested", kind=kind) == 0
    for role in ROLES:
        assert value(fams, "mailgate_connections", listener=role) == 0
        assert value(fams, "mailgate_open_connections", listener=role) == 0
    for state in ["waiting", "in_flight", "settling"]:
        assert value(fams, "mailgate_queue_state_messages", state=state) == 0
    # /metrics needs no token, like /healthz.
    assert srv.http_get("/metrics", token="")[0] == 200


def test_counters_equal_the_traffic_sent(world):
    srv, sink, private = world
    sent_octets = 0

    def send(s, mail_from, rcpts, data):
        nonlocal sent_octets
        s.sendmail(mail_from, rcpts, data)
        sent_octets += len(data)

    # Connection 1: two messages from good.test, DKIM-signed, SPF pass,
    # DMARC pass with p=none.
    with smtplib.SMTP("127.0.0.1", srv.mx_port, local_hostname=HELO, timeout=30) as s:
        for i in range(2):
            send(s, "news@good.test", ["bob@example.test"], signed(message("news@good.test", f"good-{i}"), private))
    # Connection 2: a spoof of evil.test (SPF fail, no DKIM, DMARC fail,
    # p=quarantine): quarantined, delivered with a tag.
    with smtplib.SMTP("127.0.0.1", srv.mx_port, local_hostname=HELO, timeout=30) as s:
        send(s, "attacker@evil.test", ["bob@example.test"], message("ceo@evil.test", "spoof"))
    # Connection 3: a look-alike of our example.test (edit distance).
    with smtplib.SMTP("127.0.0.1", srv.mx_port, local_hostname=HELO, timeout=30) as s:
        send(s, "x@exmaple.test", ["bob@example.test"], message("x@exmaple.test", "lookalike"))
    # Connection 4: a relay attempt, then an oversize message.
    with Dialogue(srv.mx_port) as d:
        d.ehlo(HELO)
        assert d.cmd("MAIL FROM:<a@good.test>").code == 250
        r = d.cmd("RCPT TO:<victim@elsewhere.test>")
        assert r.code == 554 and r.enhanced == "5.7.1", r
        assert d.cmd("RCPT TO:<bob@example.test>").code == 250
        assert d.cmd("DATA").code == 354
        d.send(message("a@good.test", "big", "x" * 70 + "\r\n") * (MAX_SIZE // 100) + b".\r\n")
        r = d.read_reply()
        assert r.code == 552 and r.enhanced == "5.3.4", r
        d.cmd("QUIT")
    # Connection 5: a bounce (null sender: no notice) and a message to two
    # recipients that defer.
    with smtplib.SMTP("127.0.0.1", srv.mx_port, local_hostname=HELO, timeout=30) as s:
        send(s, "", ["user@bounce.test"], message("daemon@example.test", "bounce"))
        send(s, "", ["a@defer.test", "b@defer.test"], message("daemon@example.test", "defer"))

    fams = wait_until(
        "deliveries",
        lambda f: (value(f, "mailgate_delivered") == 4 and value(f, "mailgate_bounced") == 1
                   and value(f, "mailgate_deferred") == 2
                   and value(f, "mailgate_queue_state_messages", state="waiting") == 1
                   and value(f, "mailgate_queue_state_messages", state="in_flight") == 0
                   and value(f, "mailgate_queue_state_messages", state="settling") == 0
                   and value(f, "mailgate_open_connections", listener="mx") == 0,
                   {n: [(s.labels, s.value) for s in f[n].samples]
                    for n in ("mailgate_delivered", "mailgate_bounced", "mailgate_deferred",
                              "mailgate_queue_state_messages", "mailgate_open_connections")}),
        srv,
    )
    assert len(sink.messages) == 4

    # Connections and messages.
    assert value(fams, "mailgate_connections", listener="mx") == 5
    assert value(fams, "mailgate_connections", listener="submission") == 0
    assert value(fams, "mailgate_messages_received") == 6
    assert value(fams, "mailgate_messages_accepted") == 6
    refused = {s.labels["reason"]: s.value for s in fams["mailgate_messages_refused"].samples}
    assert refused == {r: (1 if r in ("relay", "size") else 0) for r in REASONS}, refused
    # Stored with our Received:, Authentication-Results: and tags: more than sent.
    assert sent_octets < value(fams, "mailgate_accepted_bytes") < sent_octets + 6 * 2000
    assert value(fams, "mailgate_spool_errors") == 0

    # Delivery: 4 delivered, 1 bounced, 2 recipients deferred (one message).
    assert value(fams, "mailgate_delivery_latency_seconds", "mailgate_delivery_latency_seconds_count") == 5
    assert value(fams, "mailgate_queue_messages") == 1, srv.queue_list()
    assert value(fams, "mailgate_queue_recipients") == 2
    assert value(fams, "mailgate_queue_state_messages", state="in_flight") == 0
    assert value(fams, "mailgate_queue_state_messages", state="settling") == 0

    # The checks: six inbound messages.
    assert value(fams, "mailgate_check_duration_seconds", "mailgate_check_duration_seconds_count") == 6
    expected = {
        ("spf", "pass"): 2, ("spf", "fail"): 1, ("spf", "none"): 3,
        ("dkim", "pass"): 2, ("dkim", "none"): 4,
        ("arc", "none"): 6,
        ("dmarc", "pass"): 2, ("dmarc", "fail"): 1, ("dmarc", "none"): 3,
    }
    got = {(s.labels["method"], s.labels["result"]): s.value for s in fams["mailgate_auth_results"].samples}
    assert got == {k: expected.get(k, 0) for k in got}, got
    disp = {s.labels["disposition"]: s.value for s in fams["mailgate_dmarc_dispositions"].samples}
    assert disp == {"none": 2, "quarantine": 1, "reject": 0}, disp
    hits = {s.labels["rule"]: s.value for s in fams["mailgate_lookalike_hits"].samples}
    assert hits == {"confusable": 0, "substitution": 0, "edit-distance": 1, "embedded": 0,
                    "display-name": 0, "local-part": 0}, hits

    # Delivery over smtp:// routes has no TLS policy to report, and no
    # reports are sent or ingested yet.
    assert all(s.value == 0 for s in fams["mailgate_outbound_tls_results"].samples)
    assert all(s.value == 0 for s in fams["mailgate_reports_sent"].samples)

    # The spool's counters come through.
    assert value(fams, "mailgate_spool_records") >= 6
    assert value(fams, "mailgate_spool_fsyncs") >= 1


def test_no_label_value_is_an_address_a_domain_or_an_ip(world):
    srv, _, private = world
    with smtplib.SMTP("127.0.0.1", srv.mx_port, local_hostname=HELO, timeout=30) as s:
        s.sendmail("news@good.test", ["bob@example.test"], signed(message("news@good.test", "one"), private))
        s.sendmail("x@exmaple.test", ["bob@example.test"], message("x@exmaple.test", "two"))
    with Dialogue(srv.mx_port) as d:
        d.ehlo(HELO)
        d.cmd("MAIL FROM:<a@good.test>")
        d.cmd("RCPT TO:<victim@elsewhere.test>")
        d.cmd("QUIT")
    fams = wait_until("deliveries", lambda f: (value(f, "mailgate_delivered") == 2, value(f, "mailgate_delivered")), srv)
    ip = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")
    seen = set()
    for f in fams.values():
        for s in f.samples:
            for key, v in s.labels.items():
                if key == "le":
                    continue  # histogram bucket bounds are numbers
                seen.add((key, v))
                assert "@" not in v and ":" not in v and not ip.match(v), (s.name, key, v)
                assert "." not in v, f"{s.name}: {key}={v!r} looks like a domain"
                assert re.fullmatch(r"[a-z_-]+", v), (s.name, key, v)
    assert ("listener", "mx") in seen and ("reason", "relay") in seen
