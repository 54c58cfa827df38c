"""`[delivery] dane_required` end to end (Postfix's `dane-only`): for a
listed destination only MX hosts with DNSSEC-validated, usable TLSA
records are used; without one the mail is deferred, recorded as RFC 8460
`dane-required` under policy type `tlsa` (TLS-RPT and the metrics count
it), and the sink is never connected to. An unlisted unsigned domain
still gets opportunistic TLS. The world (signed loopback root, sinks,
real binary) is the one of `test_dane.py`.
"""

from __future__ import annotations

import re

import pytest

from dnssec_dns import wait_for
from test_dane import _world, failures, make_cert, policies, spki_sha256, zone_for


def require(w, *patterns: str) -> None:
    """Adds `dane_required = [...]` to the server's [delivery] table."""
    listed = ", ".join(f'"{p}"' for p in patterns)
    text = w.srv.config_path.read_text()
    w.srv.config_path.write_text(text.replace("[delivery]\n", f"[delivery]\ndane_required = [{listed}]\n", 1))


def metric(srv, result: str) -> float:
    status, text = srv.http_get("/metrics", token="")
    assert status == 200, text
    for line in text.splitlines():
        if line.startswith("mailgate_outbound_tls_results_total{") and 'policy="tlsa"' in line and f'result="{result}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_listed_domain_with_matching_signed_tlsa_delivers(mailgate_factory, tmp_path):
    cert, key = make_cert("mx.a.req.test")
    w = _world(mailgate_factory, tmp_path, lambda port: zone_for("a.req.test", "127.0.3.1", port, [f"3 1 1 {spki_sha256(cert)}"]))
    require(w, "*.req.test")
    try:
        sink = w.sink("127.0.3.1", chain=[cert], key=key)
        w.srv.start()
        w.send("bob@a.req.test")
        assert wait_for(lambda: sink.messages, 20), w.srv.log_text()[-3000:]
        assert sink.messages[0]["tls"] is True
        report = w.tlsrpt("a.req.test", lambda r: policies(r, "tlsa"))
        assert report, w.srv.log_text()[-3000:]
        (p,) = policies(report, "tlsa")
        assert p["summary"]["total-successful-session-count"] >= 1 and not failures(report, "tlsa"), p
    finally:
        w.stop()


def test_listed_domains_without_usable_signed_tlsa_defer_with_dane_required(mailgate_factory, tmp_path):
    cert, key = make_cert("mx.any.test")
    # plain.test and open.test are unsigned children of the signed root
    # (a matching TLSA in an unsigned zone counts for nothing); notlsa.test
    # is signed without TLSA; pkix.test is signed with only a PKIX-EE record.
    good = f"3 1 1 {spki_sha256(cert)}"
    w = _world(
        mailgate_factory, tmp_path,
        lambda port: zone_for("notlsa.test", "127.0.3.3", port, []) + zone_for("pkix.test", "127.0.3.4", port, [f"1 1 1 {spki_sha256(cert)}"]),
        children=lambda port: {"plain.test.": zone_for("plain.test", "127.0.3.2", port, [good]),
                               "open.test.": zone_for("open.test", "127.0.3.5", port, [good])})
    require(w, "plain.test", "notlsa.test", "pkix.test")
    try:
        sinks = {d: w.sink(ip, chain=[cert], key=key) for d, ip in
                 [("plain.test", "127.0.3.2"), ("notlsa.test", "127.0.3.3"), ("pkix.test", "127.0.3.4"), ("open.test", "127.0.3.5")]}
        w.srv.start()
        qids = {d: w.send(f"bob@{d}") for d in sinks}
        # Unlisted and unsigned: opportunistic TLS as before.
        assert wait_for(lambda: sinks["open.test"].messages, 20), w.srv.log_text()[-3000:]
        assert sinks["open.test"].messages[0]["tls"] is True
        for d in ("plain.test", "notlsa.test", "pkix.test"):
            r = w.deferred(qids[d])
            assert r, (d, w.srv.log_text()[-3000:])
            reply = str(r.get("last_reply"))
            assert reply.startswith("451") and "4.7.5" in reply and "dane_required" in reply, (d, r)
            assert sinks[d].connections == 0, d
            report = w.tlsrpt(d, lambda rep: "dane-required" in failures(rep, "tlsa"))
            assert report, (d, w.srv.log_text()[-3000:])
        assert metric(w.srv, "dane-required") >= 3, w.srv.log_text()[-2000:]
        assert re.search(r"WARN.*dane_required.*MX host not used", w.srv.log_text())
    finally:
        w.stop()


@pytest.mark.parametrize("listed, dnssec_line, expect", [
    ('"example.net"', "", 'needs [dns] dnssec = "validate" or "trust-ad"'),
    ('"a.*.test"', 'dnssec = "validate"\n', 'not "a.*.test"'),
])
def test_dane_required_is_refused_without_dnssec_or_with_a_bad_pattern(mailgate_factory, listed, dnssec_line, expect):
    srv = mailgate_factory("cfg")
    text = srv.config_path.read_text()
    text = text.replace("[delivery]\n", f"[delivery]\ndane_required = [{listed}]\n", 1)
    text = text.replace("[dns]\n", "[dns]\n" + dnssec_line, 1)
    srv.config_path.write_text(text)
    with pytest.raises(RuntimeError) as e:
        srv.start()
    assert "delivery.dane_required" in str(e.value) and expect in str(e.value), str(e.value)[-2000:]
    p = srv.cli("config", "check", check=False)
    assert p.returncode != 0 and expect in p.stdout + p.stderr, p
