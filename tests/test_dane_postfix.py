"""DANE cross-checked with Postfix: the cases of `test_dane.py` (the same
signed test zone, the same sinks and certificates) delivered by Postfix
(`smtp_tls_security_level = dane`, `smtp_dns_support_level = dnssec`,
resolving through a validating `unbound`) and by mailgate, in both
`[dns] dnssec` modes: `validate` (its own validator, asking the
authoritative server) and `trust-ad` (asking the same unbound as Postfix).

Postfix resolves only through /etc/resolv.conf and port 53, and looks up
`_25._tcp` and connects to port 25, so the whole set-up runs in a private
network, mount and PID namespace (`unshare`), driven by
`dane_postfix_driver.py`, which writes every verdict as JSON. The test
skips, saying why, when it cannot run: not root, `unshare` refused, or
`unbound` missing (.ci/run installs it; Postfix is installed like the other
interop tests do).

Every case must end the same way for all three clients (delivered over
TLS, or deferred without a message reaching the sink). Where they report
differently, the difference is asserted and explained below and in the
README ("Cross-checked with Postfix").
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from postfix import require_postfix

HERE = Path(__file__).resolve().parent
UNSHARE = ["unshare", "--mount", "--net", "--pid", "--fork", "--mount-proc"]
MAILGATES = ("mailgate validate", "mailgate trust-ad")


def _skip_unless_possible() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: unshare of a network namespace, unbound and Postfix on port 53/25")
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    probe = subprocess.run([*UNSHARE, "true"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"unshare --mount --net --pid is not permitted here: {probe.stderr.strip()}")
    if not (shutil.which("unbound") or os.path.exists("/usr/sbin/unbound")):
        pytest.skip("unbound is not installed (apt-get install unbound; .ci/run installs it)")
    require_postfix()


@pytest.fixture(scope="module")
def verdicts(mailgate_bin, tmp_path_factory) -> dict:
    """The driver's result: case -> {"postfix": ..., "mailgate validate":
    ..., "mailgate trust-ad": ..., "sink_connections": n}."""
    _skip_unless_possible()
    out = tmp_path_factory.mktemp("danepf") / "verdicts.json"
    p = subprocess.run([*UNSHARE, sys.executable, "-W", "ignore", str(HERE / "dane_postfix_driver.py"), str(out)],
                       capture_output=True, text=True, timeout=120, cwd=HERE.parent)
    assert out.exists(), f"driver wrote nothing (exit {p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}"
    result = json.loads(out.read_text())
    if result.get("error"):
        logs = "\n".join(f"--- {k} ---\n{v[-4000:]}" for k, v in result.get("logs", {}).items())
        pytest.fail(f"driver failed:\n{result['error']}\n{logs}")
    result["_logs"] = "\n".join(f"--- {k} ---\n{v[-4000:]}" for k, v in result.get("logs", {}).items())
    return result


def case(verdicts, name) -> dict:
    c = verdicts["cases"].get(name)
    assert c, f"no verdict for {name}: {sorted(verdicts['cases'])}"
    return c


def assert_delivered_over_tls(c, logs) -> None:
    """All three delivered once, over TLS, to the sink."""
    for who in ("postfix", *MAILGATES):
        assert c[who]["outcome"] == "delivered", (who, c, logs)
        assert c[who]["sink_tls"] == [True], (who, c)


def assert_deferred_undelivered(c, logs) -> None:
    for who in ("postfix", *MAILGATES):
        assert c[who]["outcome"] == "deferred", (who, c, logs)
        assert c[who]["sink_tls"] == [], (who, c)


def tlsa(c, who) -> dict:
    return c[who]["tlsrpt"].get("tlsa") or {"success": 0, "failures": []}


def test_matching_dane_ee_3_1_1_is_verified_by_both(verdicts):
    c = case(verdicts, "good.test")
    assert_delivered_over_tls(c, verdicts["_logs"])
    assert c["postfix"]["tls"] == ["Verified"], c["postfix"]
    for who in MAILGATES:
        assert tlsa(c, who)["success"] >= 1 and not tlsa(c, who)["failures"], (who, c[who])


def test_mismatching_tlsa_is_refused_by_both(verdicts):
    c = case(verdicts, "bad.test")
    assert_deferred_undelivered(c, verdicts["_logs"])
    assert c["postfix"]["reason"] == "Server certificate not verified", c["postfix"]
    assert any("no matching DANE TLSA records" in l for l in c["postfix"]["lines"]), c["postfix"]
    for who in MAILGATES:
        assert "tlsa-invalid" in tlsa(c, who)["failures"], (who, c[who])
    # Both connected and stopped at the certificate: 3 connections.
    assert c["sink_connections"] == 3, c


def test_bogus_signature_never_connects(verdicts):
    c = case(verdicts, "bogus.test")
    assert_deferred_undelivered(c, verdicts["_logs"])
    assert c["sink_connections"] == 0, c
    # unbound answers SERVFAIL for a bogus MX set: Postfix, like any stub
    # behind a validating resolver, sees only a temporary DNS failure.
    assert "type=MX" in c["postfix"]["reason"] and "try again" in c["postfix"]["reason"], c["postfix"]
    # mailgate's own validator tells bogus from broken: dnssec-invalid.
    assert "DNSSEC" in c["mailgate validate"]["reason"], c["mailgate validate"]
    assert tlsa(c, "mailgate validate")["failures"] == ["dnssec-invalid"], c["mailgate validate"]
    # Under trust-ad mailgate is in Postfix's position: a DNS failure
    # (4.4.3), and no TLS-RPT record, since nothing says it was DNSSEC.
    assert "4.4.3" in c["mailgate trust-ad"]["reason"], c["mailgate trust-ad"]
    assert not tlsa(c, "mailgate trust-ad")["failures"], c["mailgate trust-ad"]


def test_unsigned_zone_falls_back_to_opportunistic_tls_for_both(verdicts):
    c = case(verdicts, "plain.test")
    # Its TLSA record does not match, but it is insecure, so nobody uses it.
    assert_delivered_over_tls(c, verdicts["_logs"])
    assert "Verified" not in c["postfix"]["tls"], c["postfix"]
    for who in MAILGATES:
        assert "tlsa" not in c[who]["tlsrpt"], (who, c[who])
        assert c[who]["tlsrpt"].get("no-policy-found", {}).get("success", 0) >= 1, (who, c[who])


def test_dane_ta_2_0_1_chain_is_verified_by_both(verdicts):
    c = case(verdicts, "chain.test")
    assert_delivered_over_tls(c, verdicts["_logs"])
    assert c["postfix"]["tls"] == ["Verified"], c["postfix"]
    for who in MAILGATES:
        assert tlsa(c, who)["success"] >= 1, (who, c[who])


def test_dane_ta_leaf_for_another_name_is_refused_by_both(verdicts):
    c = case(verdicts, "chain2.test")
    assert_deferred_undelivered(c, verdicts["_logs"])
    assert any("hostname mismatch" in l for l in c["postfix"]["lines"]), c["postfix"]
    for who in MAILGATES:
        assert "tlsa-invalid" in tlsa(c, who)["failures"], (who, c[who])


def test_no_starttls_with_tlsa_defers_for_both(verdicts):
    c = case(verdicts, "nostls.test")
    assert_deferred_undelivered(c, verdicts["_logs"])
    assert "TLS is required, but was not offered" in c["postfix"]["reason"], c["postfix"]
    for who in MAILGATES:
        assert "starttls-not-supported" in tlsa(c, who)["failures"], (who, c[who])


def test_only_pkix_records_mean_encrypted_but_unauthenticated_for_both(verdicts):
    c = case(verdicts, "pkix.test")
    # The 1 1 1 record does not match, and need not: PKIX-EE is unusable
    # for SMTP (RFC 7672 §3.1.3), but TLS stays mandatory.
    assert_delivered_over_tls(c, verdicts["_logs"])
    assert c["postfix"]["tls"] == ["Untrusted"], c["postfix"]
    # mailgate counts the session as a `tlsa` success in TLS-RPT (its
    # policy held: TLS was used); Postfix only says "Untrusted".
    for who in MAILGATES:
        assert tlsa(c, who)["success"] >= 1, (who, c[who])


def test_the_cross_check_stays_well_within_its_time(verdicts):
    assert verdicts["seconds"] < 45, verdicts["seconds"]
