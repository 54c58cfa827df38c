"""Inbound authentication end to end: SPF, DKIM, DMARC, look-alike domains,
Authentication-Results and policy, over real SMTP to the real binary, with
a loopback DNS server (dnslib) serving domains that publish p=reject,
p=quarantine and p=none. Messages are signed by an independent signer,
dkimpy, with Ed25519 and RSA-2048 keys made here. Every case is also run
through `mailgate verify --json`, which must reach the same verdict.
"""

from __future__ import annotations

import base64
import json
import re
import sqlite3
import smtplib
import subprocess
import time

import pytest

dkim = pytest.importorskip("dkim", reason="pip install dkimpy")
nacl_signing = pytest.importorskip("nacl.signing", reason="pip install pynacl")
pytest.importorskip("dnslib", reason="pip install dnslib")

from conftest import BIN, _RUNNING, MailgateServer, free_port  # noqa: E402
from loopdns import LoopbackDns  # noqa: E402
from postfix import PySink  # noqa: E402

HOST = "mx.example.test"
HELO = "client.outside.test"
REJECT, QUARANTINE, NONE = "reject.test", "quarantine.test", "none.test"
CYRILLIC = "ex\u0430mple.test"          # Cyrillic а (U+0430)
CYRILLIC_A = CYRILLIC.encode("idna").decode()  # xn--exmple-4nf.test
TYPO = "exmaple.test"            # two letters swapped
LIST = "lists.test"              # a forwarder that ARC-seals
BROKEN = "broken.test"           # its DMARC lookup fails
WAIT = 20.0


class Keys:
    """One Ed25519 and one RSA-2048 key, with their DKIM records."""

    def __init__(self, tmp):
        seed = nacl_signing.SigningKey.generate()
        self.ed_private = base64.b64encode(bytes(seed)).decode().encode()
        self.ed_record = "v=DKIM1; k=ed25519; p=" + base64.b64encode(bytes(seed.verify_key)).decode()
        pem = tmp / "rsa.pem"
        subprocess.run(["openssl", "genrsa", "-traditional", "-out", str(pem), "2048"],
                       check=True, capture_output=True)
        self.rsa_private = pem.read_bytes()
        der = subprocess.run(["openssl", "rsa", "-in", str(pem), "-pubout", "-outform", "DER"],
                             check=True, capture_output=True).stdout
        self.rsa_record = "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()


def sign(message: bytes, domain: str, keys: Keys, *, rsa: bool = True) -> bytes:
    headers = [b"from", b"to", b"subject", b"date", b"message-id"]
    sig = dkim.sign(message, b"ed", domain.encode(), keys.ed_private,
                    signature_algorithm=b"ed25519-sha256", include_headers=headers)
    if rsa:
        sig += dkim.sign(message, b"rs", domain.encode(), keys.rsa_private,
                         signature_algorithm=b"rsa-sha256", include_headers=headers)
    return sig + message


def message(sender_header: str, marker: str, extra: str = "") -> bytes:
    return (f"{extra}From: {sender_header}\r\nTo: bob@example.test\r\n"
            f"Subject: {marker}\r\nDate: Mon, 23 Nov 2026 12:00:00 +0000\r\n"
            f"Message-ID: <{marker}@outside.test>\r\n\r\n"
            f"Hello, this is {marker}.\r\n").encode()


class Env:
    def __init__(self, srv, sink, dns, keys, quarantine):
        self.srv, self.sink, self.dns, self.keys = srv, sink, dns, keys
        self.quarantine = quarantine

    def quarantined(self, marker: str) -> str:
        """The message delivered to the quarantine Maildir."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            # maildir: delivery files by local part: QUARANTINE/bob/new/...
            for f in self.quarantine.glob("*/new/*"):
                data = f.read_bytes()
                if marker.encode() in data:
                    return data.decode(errors="replace")
            time.sleep(0.05)
        raise AssertionError(f"{marker} not in the quarantine Maildir")

    def send(self, mail_from: str, data: bytes):
        """(code, text) of the reply to the end of DATA."""
        with smtplib.SMTP("127.0.0.1", self.srv.mx_port, local_hostname=HELO, timeout=30) as s:
            try:
                s.sendmail(mail_from, ["bob@example.test"], data)
                return 250, ""
            except smtplib.SMTPDataError as e:
                return e.smtp_code, e.smtp_error.decode(errors="replace")

    def delivered(self, marker: str) -> str:
        got = self.sink.wait_for(lambda m: marker.encode() in m["content"], WAIT)
        assert len(got) == 1, f"{marker}: {len(got)} deliveries"
        return got[0]["content"].decode(errors="replace")

    def verify(self, mail_from: str, data: bytes | None, tmp) -> dict:
        args = [str(BIN), "--config", str(self.srv.config_path), "verify", "--ip", "127.0.0.1",
                "--helo", HELO, "--mail-from", mail_from, "--json"]
        if data is not None:
            path = tmp / f"msg-{time.monotonic_ns()}.eml"
            path.write_bytes(data)
            args.append(str(path))
        p = subprocess.run(args, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inbound-auth")
    keys = Keys(tmp)
    sink = PySink().start()
    dns_port = free_port()
    dns = LoopbackDns(dns_port)
    records = []
    for domain, policy in [(REJECT, "reject"), (QUARANTINE, "quarantine"), (NONE, "none"),
                           (CYRILLIC_A, "reject"), (TYPO, "reject")]:
        records += [
            (f"{domain}.", "TXT", ["v=spf1 ip4:127.0.0.1 -all"]),
            (f"_dmarc.{domain}.", "TXT", [f"v=DMARC1; p={policy}"]),
            (f"ed._domainkey.{domain}.", "TXT", [keys.ed_record]),
            (f"rs._domainkey.{domain}.", "TXT", [keys.rsa_record[i:i + 255] for i in range(0, len(keys.rsa_record), 255)]),
        ]
    # A domain whose SPF does not list us: spoofing from another address.
    records.append(("evil.test.", "TXT", ["v=spf1 ip4:192.0.2.1 -all"]))
    # A forwarder (mailing list) that ARC-seals with its RSA key.
    records.append((f"rs._domainkey.{LIST}.", "TXT", [keys.rsa_record[i:i + 255] for i in range(0, len(keys.rsa_record), 255)]))
    dns.resolver.load(records)
    # broken.test's DMARC lookup fails (SERVFAIL) while its SPF answers.
    records.append((f"{BROKEN}.", "TXT", ["v=spf1 ip4:127.0.0.1 -all"]))
    dns.resolver.load(records[-1:])
    dns.resolver.failing.add(f"_dmarc.{BROKEN}.")
    quarantine = tmp / "quarantine"
    srv = MailgateServer(BIN, tmp / "server", hostname=HOST, dns_port=dns_port,
                         policy={"quarantine": f"maildir:{quarantine}"},
                         extra_toml=f'[[domain]]\nname = "inbox.test"\ndeliver = "{sink.url()}"\n'
                                    '[arc]\nseal = "inbox.test"\n')
    # example.test (the base config's domain) must reach the sink too.
    text = srv.config_path.read_text().replace('deliver = "smtp://127.0.0.1:9"', f'deliver = "{sink.url()}"')
    srv.config_path.write_text(text)
    srv.start()
    # Our own records (inbox.test's DKIM keys, which also seal ARC).
    from test_dkim import parse_records
    dns.resolver.load([r for r in parse_records(srv.cli("records").stdout) if r[1] == "TXT"])
    yield Env(srv, sink, dns, keys, quarantine)
    srv.stop()
    while srv in _RUNNING:
        _RUNNING.remove(srv)
    dns.stop()
    sink.stop()


def auth_results(data: str) -> list[str]:
    """The unfolded Authentication-Results fields of a message."""
    head = data.split("\r\n\r\n", 1)[0].replace("\r\n\t", " ").replace("\r\n ", " ")
    return [line.split(":", 1)[1].strip() for line in head.split("\r\n")
            if line.lower().startswith("authentication-results:")]


def test_spoofed_from_of_p_reject_domain_is_refused(env, tmp_path):
    data = message(f"CEO <ceo@{REJECT}>", "spoof-reject")
    code, text = env.send("attacker@evil.test", data)
    assert code == 550 and text.startswith("5.7.1"), (code, text)
    assert "DMARC" in text and REJECT in text, text
    v = env.verify("attacker@evil.test", data, tmp_path)
    assert v["action"] == "reject"
    assert v["dmarc"] == {"result": "fail", "from_domain": REJECT, "policy": "reject",
                          "spf_aligned": False, "dkim_aligned": False}
    assert v["spf"]["result"] == "fail" and v["spf"]["domain"] == "evil.test"
    assert v["dkim"] == []


def test_signed_message_passes_with_right_authentication_results(env, tmp_path):
    data = sign(message(f"News <news@{REJECT}>", "signed-pass"), REJECT, env.keys)
    assert env.send(f"news@{REJECT}", data) == (250, "")
    got = env.delivered("signed-pass")
    [ar] = auth_results(got)
    assert ar.startswith(f"{HOST};"), ar
    assert f"spf=pass" in ar and f"smtp.mailfrom=news@{REJECT}" in ar, ar
    assert f"dkim=pass header.d={REJECT} header.s=ed header.a=ed25519-sha256" in ar, ar
    assert f"dkim=pass header.d={REJECT} header.s=rs header.a=rsa-sha256" in ar, ar
    assert f"dmarc=pass (p=reject) header.from={REJECT}" in ar, ar
    assert "arc=none" in ar and "x-lookalike=none" in ar, ar
    assert "X-Mailgate-Action" not in got
    v = env.verify(f"news@{REJECT}", data, tmp_path)
    assert v["action"] == "accept", v
    assert [(d["result"], d["domain"], d["selector"], d["algorithm"]) for d in v["dkim"]] == [
        ("pass", REJECT, "ed", "ed25519-sha256"), ("pass", REJECT, "rs", "rsa-sha256")]
    assert v["dmarc"]["result"] == "pass" and v["dmarc"]["spf_aligned"] and v["dmarc"]["dkim_aligned"]
    assert v["arc"]["result"] == "none"
    assert v["authentication_results"].replace("\r\n\t", " ") == ar


def test_dkim_alone_passes_dmarc_when_forwarded(env, tmp_path):
    """Forwarded: SPF of the forwarder's MAIL FROM fails, the aligned DKIM
    signature still carries DMARC."""
    data = sign(message(f"news@{REJECT}", "forwarded"), REJECT, env.keys, rsa=False)
    assert env.send("list@evil.test", data) == (250, "")
    [ar] = auth_results(env.delivered("forwarded"))
    assert "spf=fail" in ar and "dmarc=pass" in ar, ar


def test_tampered_body_fails_dkim_and_dmarc_rejects(env, tmp_path):
    data = sign(message(f"news@{REJECT}", "tampered"), REJECT, env.keys).replace(b"Hello", b"Jello")
    code, text = env.send("list@evil.test", data)
    assert code == 550 and text.startswith("5.7.1"), (code, text)
    v = env.verify("list@evil.test", data, tmp_path)
    assert [d["result"] for d in v["dkim"]] == ["fail", "fail"], v["dkim"]
    assert v["action"] == "reject"


@pytest.mark.parametrize("case,data,prepend", [
    # A second author prepended above a valid signature (Composition Kills).
    ("two-from", message(f"news@{REJECT}", "two-from"), f"From: ceo@{NONE}\r\n"),
    ("two-from-obs", message(f"news@{REJECT}", "two-from-obs"), f"FROM : ceo@{NONE}\r\n"),
    ("two-from-folded", message(f"news@{REJECT}", "two-from-folded"), f"From\r\n : ceo@{NONE}\r\n"),
    ("multi-mailbox", message(f"news@{NONE}, ceo@{REJECT}", "multi-mailbox"), ""),
    ("group", message(f"team: news@{NONE};", "group"), ""),
    ("no-from", b"Subject: no-from\r\nTo: bob@example.test\r\n\r\nHi\r\n", ""),
    ("unparsable", message("not an address", "unparsable"), ""),
])
def test_ambiguous_from_is_refused(env, tmp_path, case, data, prepend):
    # Signed and SPF-aligned for reject.test: still refused, because
    # DMARC cannot say which author it vouches for.
    signed = prepend.encode() + sign(data, REJECT, env.keys, rsa=False)
    code, text = env.send(f"news@{REJECT}", signed)
    assert code == 550 and text.startswith("5.7.1"), (case, code, text)
    assert "From" in text or "header" in text, text
    v = env.verify(f"news@{REJECT}", signed, tmp_path)
    assert v["action"] == "reject" and v["dmarc"]["result"] == "fail", (case, v)


def test_forged_authentication_results_is_removed(env, tmp_path):
    forged = (f"Authentication-Results: {HOST}; dkim=pass header.d={REJECT}; dmarc=pass\r\n"
              f"Authentication-Results: other.test; spf=pass smtp.mailfrom=x@other.test\r\n"
              f"X-Mailgate-Action: accept (forged)\r\n")
    data = message(f"ceo@{NONE}", "forged-ar", extra=forged)
    assert env.send("attacker@evil.test", data) == (250, "")
    got = env.delivered("forged-ar")
    ars = auth_results(got)
    ours = [a for a in ars if a.lower().startswith(HOST)]
    assert len(ours) == 1, ars
    assert "dmarc=fail (p=none dis=none)" in ours[0] and "dkim=none" in ours[0], ours[0]
    assert any(a.startswith("other.test;") for a in ars), "a foreign AR field must stay"
    assert "(forged)" not in got, "a forged X-Mailgate-Action must be removed"
    assert env.srv.log_text().count("claiming our authserv-id") >= 1
    # verify judges the message itself, never the forged claims.
    v = env.verify("attacker@evil.test", data, tmp_path)
    assert v["dkim"] == [] and v["dmarc"]["result"] == "fail" and v["action"] == "tag", v  # SPF -all: tagged
    assert "dkim=none" in v["authentication_results"] and "dmarc=fail" in v["authentication_results"]


def test_p_quarantine_spoof_is_accepted_and_tagged(env, tmp_path):
    data = message(f"billing@{QUARANTINE}", "quarantined")
    assert env.send("attacker@evil.test", data) == (250, "")
    got = env.quarantined("quarantined")
    assert "X-Mailgate-Action: quarantine (DMARC policy of quarantine.test is p=quarantine" in got, got[:800]
    v = env.verify("attacker@evil.test", data, tmp_path)
    assert v["action"] == "quarantine" and v["dmarc"]["policy"] == "quarantine"


@pytest.mark.parametrize("domain,rule", [(CYRILLIC_A, "confusable"), (TYPO, "edit-distance")])
def test_lookalike_is_flagged_although_spf_dkim_dmarc_pass(env, tmp_path, domain, rule):
    marker = f"lookalike-{rule}"
    data = sign(message(f"CEO <ceo@{domain}>", marker), domain, env.keys)
    assert env.send(f"ceo@{domain}", data) == (250, "")
    got = env.quarantined(marker)
    [ar] = auth_results(got)
    assert "spf=pass" in ar and "dkim=pass" in ar and "dmarc=pass" in ar, ar
    assert f"x-lookalike=fail ({rule} resembles example.test) header.from={domain}" in ar, ar
    assert f"X-Mailgate-Lookalike: rule={rule}; domain={domain}; resembles=example.test" in got
    assert "X-Mailgate-Action: quarantine (sender domain" in got
    v = env.verify(f"ceo@{domain}", data, tmp_path)
    assert v["dmarc"]["result"] == "pass" and v["spf"]["result"] == "pass"
    assert all(d["result"] == "pass" for d in v["dkim"])
    assert {"rule": rule, "resembles": "example.test"}.items() <= v["lookalike"][0].items(), v["lookalike"]
    assert v["action"] == "quarantine"


def test_verify_without_message_checks_spf_only(env):
    p = subprocess.run([str(BIN), "--config", str(env.srv.config_path), "verify", "--ip", "192.0.2.1",
                        "--helo", HELO, "--mail-from", f"x@{REJECT}", "--json"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    v = json.loads(p.stdout)
    assert v["spf"] == {"result": "fail", "domain": REJECT}
    assert v["spf_helo"]["result"] == "none"
    assert v["dkim"] == [] and v["dmarc"]["result"] == "none"
    assert set(v) >= {"spf", "spf_helo", "dkim", "arc", "dmarc", "lookalike", "action", "authentication_results"}
    text = subprocess.run([str(BIN), "--config", str(env.srv.config_path), "verify", "--ip", "127.0.0.1",
                           "--helo", HELO, "--mail-from", f"x@{REJECT}"],
                          capture_output=True, text=True, timeout=60).stdout
    assert "spf (mail from)  pass" in text and "Authentication-Results: mx.example.test;" in text, text


def test_quarantined_mail_never_reaches_the_recipient(env):
    assert not env.sink.wait_for(lambda m: b"quarantined" in m["content"], 0.5)


def test_dns_temporary_error_defers_with_451(env, tmp_path):
    data = message(f"ceo@{BROKEN}", "temperror")
    code, text = env.send(f"ceo@{BROKEN}", data)
    assert code == 451 and text.startswith("4.7.1"), (code, text)
    v = env.verify(f"ceo@{BROKEN}", data, tmp_path)
    assert v["dmarc"]["result"] == "temperror" and v["action"] == "reject" and v["temporary"], v


def test_dmarc_evaluations_are_recorded_for_reports(env):
    # A refused spoof is recorded too: it is what aggregate reports are for.
    assert env.send("attacker@evil.test", message(f"CEO <ceo@{REJECT}>", "spoof-recorded"))[0] == 550
    env.send(f"news@{REJECT}", sign(message(f"news@{REJECT}", "recorded"), REJECT, env.keys))
    env.delivered("recorded")
    # The report store is SQLite; its writer batches, so wait for the rows.
    db = env.srv.data_dir / "reports.db"
    deadline = time.monotonic() + 10
    while True:
        with sqlite3.connect(db) as c:
            c.row_factory = sqlite3.Row
            # The DKIM result set and the published policy are interned
            # in side tables (schema version 2).
            rows = [dict(r) for r in c.execute(
                "SELECT e.source_ip, e.envelope_from, e.spf_domain, e.spf_scope, e.spf_result, e.dmarc, "
                "e.disposition, d.json AS dkim, p.json AS policy FROM evaluations e "
                "JOIN dkim_sets d ON d.id = e.dkim LEFT JOIN policies p ON p.id = e.policy "
                "WHERE e.header_from = ?", (REJECT,))]
        spoof = [x for x in rows if x["disposition"] == "reject"]
        ok = [x for x in rows if x["dmarc"] == "pass"]
        if (spoof and ok) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert spoof, rows
    e = spoof[0]
    assert e["source_ip"] == "127.0.0.1" and e["envelope_from"] == "evil.test"
    assert json.loads(e["policy"])["p"] == "reject"
    assert (e["spf_domain"], e["spf_scope"], e["spf_result"]) == ("evil.test", "mfrom", "fail")
    assert ok and json.loads(ok[-1]["dkim"])[0] == {"domain": REJECT, "selector": "ed", "result": "pass"}, ok


def test_trusted_arc_sealer_overrides_dmarc_failure_from_forwarding(env, tmp_path):
    """A list adds a footer (breaking DKIM) and sends from its own MAIL
    FROM (no SPF alignment); its ARC seal, made by dkimpy, is valid."""
    original = sign(message(f"news@{REJECT}", "via-list"), REJECT, env.keys, rsa=False)
    forwarded = original.replace(b"Hello, this is via-list.\r\n", b"Hello, this is via-list.\r\n-- \r\nlist footer\r\n")
    forwarded = (f"Authentication-Results: {LIST}; dkim=pass header.d={REJECT}; dmarc=pass header.from={REJECT}\r\n").encode() + forwarded
    sealed = b"".join(dkim.arc_sign(forwarded, b"rs", LIST.encode(), env.keys.rsa_private, LIST.encode())) + forwarded
    # Not trusted: DMARC fails and p=reject applies.
    code, text = env.send(f"bounces@{LIST}", sealed)
    assert code == 550, (code, text)
    v = env.verify(f"bounces@{LIST}", sealed, tmp_path)
    assert v["arc"]["result"] == "pass" and v["dmarc"]["result"] == "fail" and v["action"] == "reject", v
    # Trusted: the same message is accepted, and the header says why.
    trusting = tmp_path / "trusting.toml"
    trusting.write_text(env.srv.config_path.read_text().replace("[policy]\n", f'[policy]\ntrusted_arc_sealers = ["{LIST}"]\n', 1))
    p = subprocess.run([str(BIN), "--config", str(trusting), "verify", "--ip", "127.0.0.1", "--helo", HELO,
                        "--mail-from", f"bounces@{LIST}", "--json", "-"], input=sealed, capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    v = json.loads(p.stdout)
    assert v["action"] == "accept" and v["arc"]["result"] == "pass", v
    assert "overridden by the valid ARC chain of trusted sealer lists.test" in v["authentication_results"], v


def test_forwarded_mail_is_arc_sealed_and_dkimpy_validates_the_seal(env, tmp_path):
    data = sign(message(f"news@{REJECT}", "sealed"), REJECT, env.keys, rsa=False)
    assert env.send(f"news@{REJECT}", data) == (250, "")
    got = env.delivered("sealed").encode()
    head = got.split(b"\r\n\r\n", 1)[0].decode()
    assert "ARC-Seal: i=1;" in head and "cv=none" in head and "d=inbox.test" in head, head
    # The AAR carries our Authentication-Results.
    assert "ARC-Authentication-Results: i=1; mx.example.test;" in head.replace("\r\n\t", " ").replace("\r\n ", " ")
    cv, _results, comment = dkim.arc_verify(got, dnsfunc=env.dns.dnsfunc)
    assert cv == b"pass", comment
    # mailgate's verifier agrees, and names the sealer.
    v = env.verify(f"news@{REJECT}", got, tmp_path)
    assert v["arc"]["result"] == "pass" and v["arc"]["sealers"] == ["inbox.test"], v["arc"]
    # A changed body breaks the seal's message signature.
    cv, _results, comment = dkim.arc_verify(got.replace(b"Hello", b"Jello"), dnsfunc=env.dns.dnsfunc)
    assert cv == b"fail", comment


def test_refused_mail_is_not_sealed_and_quarantine_is(env):
    got = env.quarantined("quarantined")
    assert "ARC-Seal: i=1;" in got


# Bodies × canonicalization, signed by dkimpy with and without l=. The first
# four end in lines of white space only, which mail-auth 0.13's relaxed
# hasher kept (RFC 6376 §3.4.4 makes them empty lines, which then go), so
# correctly signed mail failed DKIM here.
DKIM_BODIES = [b"Hello.\r\n \r\n\r\n", b"Hello.\r\n\t\r\n\r\n\r\n", b"\t\r\n\r\n\r\n", b" \r\n",
               b"Hello.\r\n", b"Hello. \t\r\n\r\n", b"", b"a  b \t\r\n \t\r\nc\r\n  \r\n"]


def signed_body(body: bytes, canon: bytes, marker: str, keys: Keys) -> bytes:
    """From news@reject.test, signed twice with the Ed25519 key: without
    l= on top, with l= (dkimpy's length=True: the canonical body length)
    below; mailgate reports signatures top first."""
    msg = (f"From: news@{REJECT}\r\nTo: bob@example.test\r\nSubject: {marker}\r\n"
           f"Date: Mon, 23 Nov 2026 12:00:00 +0000\r\nMessage-ID: <{marker}@outside.test>\r\n\r\n").encode() + body
    sigs = b""
    for length in (False, True):
        sigs += dkim.sign(msg, b"ed", REJECT.encode(), keys.ed_private, signature_algorithm=b"ed25519-sha256",
                          include_headers=[b"from", b"to", b"subject"], canonicalize=(canon, canon), length=length)
    return sigs + msg


@pytest.mark.parametrize("canon", [b"relaxed", b"simple"])
@pytest.mark.parametrize("body", DKIM_BODIES, ids=[repr(b)[2:-1] or "empty" for b in DKIM_BODIES])
def test_dkimpy_signed_bodies_pass_and_a_changed_body_fails(env, tmp_path, body, canon):
    marker = f"body-{canon.decode()}-{DKIM_BODIES.index(body)}"
    data = signed_body(body, canon, marker, env.keys)
    # dkimpy verifies both of its signatures.
    for idx in (0, 1):
        assert dkim.DKIM(data).verify(idx=idx, dnsfunc=env.dns.dnsfunc), (idx, data)
    # mailgate verify: the first passes, and DKIM alone carries DMARC (SPF
    # fails). The checker parses strictly, so an l= signature is `policy`
    # whatever the body (README: l= leaves room for appended content).
    # dkimpy writes l=0 for an empty canonical body, which mail-auth reads
    # as no l= at all: the whole body is hashed, so a changed body fails.
    l_zero = re.search(rb"[;\s]l=0;", data.split(b"DKIM-Signature:")[2]) is not None
    l_policy = ("policy", "l= (body length limit) is not accepted: signature not verified")
    v = env.verify("list@evil.test", data, tmp_path)
    got = [(d["result"], d.get("reason")) for d in v["dkim"]]
    assert got == [("pass", None), ("pass", None) if l_zero else l_policy], got
    assert v["dmarc"]["result"] == "pass" and v["action"] == "accept", v
    # Over SMTP the same: p=reject would refuse it if DKIM failed.
    assert env.send("list@evil.test", data) == (250, ""), marker
    # A body changed after signing fails (an octet added at the start).
    head, _, signed = data.partition(b"\r\n\r\n")
    changed = head + b"\r\n\r\nX" + signed
    v = env.verify("list@evil.test", changed, tmp_path)
    assert [d["result"] for d in v["dkim"]] == ["fail", "fail" if l_zero else "policy"], v["dkim"]
    assert v["action"] == "reject", v
    code, text = env.send("list@evil.test", changed)
    assert code == 550 and "DMARC" in text, (code, text)
