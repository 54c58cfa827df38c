"""Spoofing classes of issue 13, each over every spelling we could think of,
against the real binary: `mailgate verify --json` on the message, and the
same message over SMTP to the `mx` listener. A loopback DNS zone publishes
`bank.example` (DMARC p=reject), its IDN cousin `bänk.example` (p=reject),
the attacker's `evil.example` and the look-alike `b4nk.example`, both with
SPF passing for 127.0.0.1, so that only DMARC and the look-alike rules
stand between the spoof and the inbox. A spoof of a p=reject domain must be
refused (550) or quarantined, never delivered clean.

The README's "Attack classes" table names the test here (or elsewhere) that
covers each class.
"""

from __future__ import annotations

import json
import smtplib
import subprocess
import time

import pytest

pytest.importorskip("dkim", reason="pip install dkimpy")
pytest.importorskip("nacl.signing", reason="pip install pynacl")
pytest.importorskip("dnslib", reason="pip install dnslib")

from conftest import BIN, _RUNNING, MailgateServer, free_port  # noqa: E402
from loopdns import LoopbackDns  # noqa: E402
from postfix import PySink  # noqa: E402
from test_inbound_auth import Keys, auth_results, sign  # noqa: E402

HOST = "mx.example.test"
HELO = "client.outside.test"
BANK = "bank.example"                       # protected, p=reject
IDN = "b\u00e4nk.example"                   # bänk.example, p=reject
IDN_A = IDN.encode("idna").decode()         # xn--bnk-qla.example
EVIL = "evil.example"                       # the attacker's own domain
B4NK = "b4nk.example"                       # a look-alike with SPF and DMARC passing
PROTECTED = [BANK, "mybank.example", "warehouse.example", "lloyds.example"]
WAIT = 20.0


def message(from_value: str, marker: str, extra: str = "") -> bytes:
    return (f"From: {from_value}\r\n{extra}To: bob@example.test\r\n"
            f"Subject: {marker}\r\nDate: Mon, 23 Nov 2026 12:00:00 +0000\r\n"
            f"Message-ID: <{marker}@outside.test>\r\n\r\n"
            f"Hello, this is {marker}.\r\n").encode()


class Env:
    def __init__(self, srv, sink, keys, quarantine, tmp):
        self.srv, self.sink, self.keys, self.quarantine, self.tmp = srv, sink, keys, quarantine, tmp

    def send(self, mail_from: str, data: bytes, helo: str = HELO):
        """(code, text) of the reply to the end of DATA."""
        opts = [] if data.isascii() and mail_from.isascii() else ["SMTPUTF8", "BODY=8BITMIME"]
        with smtplib.SMTP("127.0.0.1", self.srv.mx_port, local_hostname=helo, timeout=30) as s:
            try:
                s.sendmail(mail_from, ["bob@example.test"], data, mail_options=opts)
                return 250, ""
            except smtplib.SMTPDataError as e:
                return e.smtp_code, e.smtp_error.decode(errors="replace")

    def verify(self, mail_from: str, data: bytes, helo: str = HELO) -> dict:
        path = self.tmp / f"msg-{time.monotonic_ns()}.eml"
        path.write_bytes(data)
        p = subprocess.run([str(BIN), "--config", str(self.srv.config_path), "verify", "--ip", "127.0.0.1",
                            "--helo", helo, "--mail-from", mail_from, "--json", str(path)],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    def quarantined(self, marker: str) -> str:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            for f in self.quarantine.glob("*/new/*"):
                data = f.read_bytes()
                if marker.encode() in data:
                    return data.decode(errors="replace")
            time.sleep(0.05)
        raise AssertionError(f"{marker} not in the quarantine Maildir")

    def delivered(self, marker: str) -> str:
        got = self.sink.wait_for(lambda m: marker.encode() in m["content"], WAIT)
        assert len(got) == 1, f"{marker}: {len(got)} deliveries"
        return got[0]["content"].decode(errors="replace")

    def never_delivered(self, marker: str) -> None:
        assert not self.sink.wait_for(lambda m: marker.encode() in m["content"], 0.3), f"{marker} was delivered"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("spoofing")
    keys = Keys(tmp)
    sink = PySink().start()
    dns = LoopbackDns(free_port())
    records = []
    for domain, dmarc in [(BANK, "reject"), (IDN_A, "reject"), (B4NK, "none"), (EVIL, None)]:
        records += [
            (f"{domain}.", "TXT", ["v=spf1 ip4:127.0.0.1 -all"]),
            (f"ed._domainkey.{domain}.", "TXT", [keys.ed_record]),
        ]
        if dmarc:
            records.append((f"_dmarc.{domain}.", "TXT", [f"v=DMARC1; p={dmarc}"]))
    dns.resolver.load(records)
    quarantine = tmp / "quarantine"
    protect = ", ".join(f'"{d}"' for d in PROTECTED)
    srv = MailgateServer(BIN, tmp / "server", hostname=HOST, dns_port=dns.port,
                         policy={"quarantine": f"maildir:{quarantine}"},
                         extra_toml=f"[lookalike]\nprotect = [{protect}]\n")
    text = srv.config_path.read_text().replace('deliver = "smtp://127.0.0.1:9"', f'deliver = "{sink.url()}"')
    srv.config_path.write_text(text)
    srv.start()
    yield Env(srv, sink, keys, quarantine, tmp)
    srv.stop()
    while srv in _RUNNING:
        _RUNNING.remove(srv)
    dns.stop()
    sink.stop()


def ed_sign(data: bytes, domain: str, keys: Keys) -> bytes:
    return sign(data, domain, keys, rsa=False)


# -- 1. Non-canonical From: domains meet the policy of the domain they denote


NON_CANONICAL = [
    ("trailing-dot", f"ceo@{BANK}.", BANK),
    ("trailing-dot-angle", f"CEO <ceo@{BANK}.>", BANK),
    ("upper", f"ceo@{BANK.upper()}", BANK),
    ("mixed-dot", "ceo@Bank.EXample.", BANK),
    ("fullwidth", "ceo@\uff42\uff41\uff4e\uff4b.example", BANK),
    ("fullwidth-dot", "ceo@bank\uff0eexample", BANK),
    ("ideographic-dot", "ceo@bank\u3002example", BANK),
    ("soft-hyphen", "ceo@ba\u00adnk.example", BANK),
    ("u-label", f"ceo@{IDN}", IDN_A),
    ("u-label-upper-dot", f"ceo@{IDN.upper()}.", IDN_A),
    ("a-label", f"ceo@{IDN_A}", IDN_A),
    ("a-label-upper-dot", f"ceo@{IDN_A.upper()}.", IDN_A),
]


@pytest.mark.parametrize("case,sender,domain", NON_CANONICAL, ids=[c[0] for c in NON_CANONICAL])
def test_non_canonical_from_domain_meets_its_p_reject(env, case, sender, domain):
    marker = f"noncanon-{case}"
    data = message(sender, marker)
    v = env.verify(f"attacker@{EVIL}", data)
    assert v["spf"]["result"] == "pass", v["spf"]
    assert (v["dmarc"]["result"], v["dmarc"]["from_domain"], v["dmarc"]["policy"]) == ("fail", domain, "reject"), v["dmarc"]
    assert v["action"] == "reject", v
    assert f"header.from={domain}" in v["authentication_results"], v["authentication_results"]
    code, text = env.send(f"attacker@{EVIL}", data)
    assert code == 550 and text.startswith("5.7.1") and "DMARC" in text and domain in text, (code, text)
    env.never_delivered(marker)


@pytest.mark.parametrize("sender", [f"news@{BANK}.", f"news@{BANK.upper()}", f"news@{IDN}", f"news@{IDN_A.upper()}."])
def test_non_canonical_spelling_of_a_signed_message_still_passes(env, sender):
    """The canonical domain is judged both ways: the real sender's aligned
    DKIM signature passes DMARC whatever the spelling of its From:."""
    domain = IDN_A if "bnk" in sender.lower() or IDN in sender else BANK
    marker = f"canon-pass-{abs(hash(sender))}"
    data = ed_sign(message(sender, marker), domain, env.keys)
    v = env.verify(f"bounce@{domain}", data)
    assert v["dmarc"]["result"] == "pass" and v["dmarc"]["from_domain"] == domain, v["dmarc"]


@pytest.mark.parametrize("sender", [f"ceo@{BANK}..", f"ceo@.{BANK}", "ceo@xn--zz.example", f"ceo@{BANK}\u0000.evil.example"])
def test_domains_that_denote_no_domain_are_refused_as_invalid(env, sender):
    marker = f"invalid-{abs(hash(sender))}"
    data = message(sender, marker)
    v = env.verify(f"attacker@{EVIL}", data)
    assert v["action"] == "reject" and v["dmarc"]["result"] == "fail", v
    code, text = env.send(f"attacker@{EVIL}", data)
    # A NUL never reaches the checks: the session refuses it (5.6.0).
    assert code == 550 and (text.startswith("5.7.1") and "From" in text or "NUL" in text), (code, text)
    env.never_delivered(marker)


# -- 2. Local parts that move where the domain starts


@pytest.mark.parametrize("sender", [
    f'"ceo@{BANK}"@{EVIL}',
    f'CEO <"ceo@{BANK}"@{EVIL}>',
    f'"ceo\\"@{BANK}"@{EVIL}',
    f"ceo@{BANK}(x)@{EVIL}",
    f"ceo@{BANK}@{EVIL}",
])
def test_at_sign_in_the_local_part_is_refused(env, sender):
    """Parsers disagree on where the domain of these starts: no author."""
    marker = f"at-local-{abs(hash(sender))}"
    data = message(sender, marker)
    v = env.verify(f"attacker@{EVIL}", data)
    assert v["action"] == "reject" and v["dmarc"]["result"] == "fail", v
    code, text = env.send(f"attacker@{EVIL}", data)
    assert code == 550 and text.startswith("5.7.1"), (code, text)
    env.never_delivered(marker)


@pytest.mark.parametrize("sender", [
    f"ceo%{BANK}@{EVIL}",
    f"{BANK}!ceo@{EVIL}",
    f"x!{BANK}!ceo@{EVIL}",
    f"ceo%{BANK.upper()}@{EVIL}",
    f"ceo%mail.{BANK}@{EVIL}",
    f"{BANK}@{EVIL}",
    f"Bank <ceo%b4nk.example@{EVIL}>",
])
def test_protected_domain_in_the_local_part_is_a_lookalike(env, sender):
    """`%` and `!` are local-part characters: DMARC judges the real domain
    (evil.example, no policy), and the `local-part` rule quarantines."""
    marker = f"pct-local-{abs(hash(sender))}"
    data = message(sender, marker)
    v = env.verify(f"attacker@{EVIL}", data)
    assert v["dmarc"]["from_domain"] == EVIL, v["dmarc"]
    found = [(f["rule"], f["resembles"], f["identity"]) for f in v["lookalike"]]
    assert ("local-part", BANK, "from") in found, found
    assert v["action"] == "quarantine", v
    assert env.send(f"attacker@{EVIL}", data) == (250, "")
    got = env.quarantined(marker)
    assert f"X-Mailgate-Lookalike: rule=local-part; domain={EVIL}; resembles={BANK}; identity=from" in got, got[:1500]
    env.never_delivered(marker)


def test_quoted_local_part_is_also_reported_as_lookalike(env):
    v = env.verify(f"attacker@{EVIL}", message(f'"ceo@{BANK}"@{EVIL}', "quoted-report"))
    assert v["action"] == "reject"
    assert ("local-part", BANK, "from") in [(f["rule"], f["resembles"], f["identity"]) for f in v["lookalike"]], v["lookalike"]


# -- 3. Digit and symbol substitutions, names of any length


SUBSTITUTED = [
    ("b4nk.example", BANK), ("8ank.example", BANK), ("B4NK.EXAMPLE.", BANK), ("b4nk.com", BANK),
    ("rnybank.example", "mybank.example"), ("myb4nk.example", "mybank.example"),
    ("vvarehouse.example", "warehouse.example"), ("w4reh0u5e.example", "warehouse.example"),
    ("warehous3.example", "warehouse.example"), ("1loyds.example", "lloyds.example"),
    ("ll0yds.example", "lloyds.example"), ("iioyds.example", "lloyds.example"),
]


@pytest.mark.parametrize("domain,resembles", SUBSTITUTED)
def test_substitutions_are_lookalikes(env, domain, resembles):
    v = env.verify(f"attacker@{EVIL}", message(f"Support <help@{domain}>", f"subst-{domain}"))
    found = [(f["rule"], f["resembles"], f["identity"]) for f in v["lookalike"]]
    assert any(r in ("substitution", "confusable") and res == resembles and i == "from" for r, res, i in found), found
    assert v["action"] == "quarantine", v


def test_substituted_lookalike_with_spf_and_dmarc_passing_is_quarantined_over_smtp(env):
    marker = "b4nk-smtp"
    data = ed_sign(message(f"CEO <ceo@{B4NK}>", marker), B4NK, env.keys)
    assert env.send(f"ceo@{B4NK}", data) == (250, "")
    got = env.quarantined(marker)
    [ar] = auth_results(got)
    assert "spf=pass" in ar and "dkim=pass" in ar and "dmarc=pass" in ar, ar
    assert f"x-lookalike=fail (substitution resembles {BANK}) header.from={B4NK}" in ar, ar
    assert f"x-lookalike=fail (substitution resembles {BANK}) smtp.mailfrom={B4NK}" in ar, ar
    assert f"rule=substitution; domain={B4NK}; resembles={BANK}; identity=from" in got
    env.never_delivered(marker)


@pytest.mark.parametrize("domain", ["bonk.example", "sank.example", "bankers.org", "evil.org", f"mail.{BANK}"])
def test_near_names_that_are_not_substitutions_stay_clean(env, domain):
    v = env.verify(f"attacker@{EVIL}", message(f"x@{domain}", f"clean-{domain}"))
    assert v["lookalike"] == [], v["lookalike"]


# -- 4. Every identity: MAIL FROM, HELO, Reply-To, Sender as well as From:


IDENTITIES = [
    # (case, MAIL FROM, HELO, extra header, identity, AR property)
    ("mail_from", f"bounce@{B4NK}", HELO, "", "mail_from", "smtp.mailfrom"),
    ("mail_from_pct", f"bounce%{BANK}@{EVIL}", HELO, "", "mail_from", "smtp.mailfrom"),
    ("helo", f"x@{EVIL}", f"mail.{B4NK}", "", "helo", "smtp.helo"),
    ("reply_to", f"x@{EVIL}", HELO, f"Reply-To: Payments <pay@{B4NK}>\r\n", "reply_to", "header.reply-to"),
    ("reply_to_group", f"x@{EVIL}", HELO, f"Reply-to : team: pay@{B4NK};\r\n", "reply_to", "header.reply-to"),
    ("reply_to_local", f"x@{EVIL}", HELO, f"Reply-To: pay%{BANK}@{EVIL}\r\n", "reply_to", "header.reply-to"),
    ("sender", f"x@{EVIL}", HELO, f"Sender: ops@{B4NK}\r\n", "sender", "header.sender"),
    ("sender_display", f"x@{EVIL}", HELO, f"Sender: \"{BANK} security\" <ops@{EVIL}>\r\n", "sender", "header.sender"),
]


@pytest.mark.parametrize("case,mail_from,helo,extra,identity,prop", IDENTITIES, ids=[c[0] for c in IDENTITIES])
def test_lookalike_in_every_identity(env, case, mail_from, helo, extra, identity, prop):
    marker = f"identity-{case}"
    data = message(f"someone@{EVIL}", marker, extra)
    v = env.verify(mail_from, data, helo=helo)
    found = [f for f in v["lookalike"] if f["identity"] == identity]
    assert found, v["lookalike"]
    assert {f["identity"] for f in v["lookalike"]} == {identity}, v["lookalike"]
    assert v["action"] == "quarantine", v
    assert f"{prop}=" in v["authentication_results"], v["authentication_results"]
    assert env.send(mail_from, data, helo=helo) == (250, "")
    got = env.quarantined(marker)
    assert f"identity={identity}" in got and "x-lookalike=fail" in got, got[:1500]
    env.never_delivered(marker)


def test_clean_message_has_no_lookalike_and_is_delivered(env):
    marker = "clean-control"
    data = ed_sign(message(f"News <news@{BANK}>", marker, f"Reply-To: help@{BANK}\r\nSender: ops@mail.{BANK}\r\n"),
                   BANK, env.keys)
    v = env.verify(f"bounce@{BANK}", data, helo=f"mx1.{BANK}")
    assert v["lookalike"] == [] and v["action"] == "accept" and v["dmarc"]["result"] == "pass", v
    assert env.send(f"bounce@{BANK}", data, helo=f"mx1.{BANK}") == (250, "")
    [ar] = auth_results(env.delivered(marker))
    assert "x-lookalike=none" in ar and "dmarc=pass" in ar, ar


# -- 5. Composition Kills classes not covered elsewhere


COMPOSITION = [
    # (case, From value, expected action, what)
    ("display-domain", f"\"{BANK}\" <x@{EVIL}>", "quarantine", "display-name"),
    ("display-address", f"\"ceo@{BANK}\" <x@{EVIL}>", "quarantine", "display-name"),
    ("display-unquoted-at", f"ceo@{EVIL} <ceo@{BANK}>", "reject", "dmarc"),
    ("encoded-display", f"=?utf-8?b?Y2VvQGJhbmsuZXhhbXBsZQ==?= <x@{EVIL}>", "quarantine", "display-name"),
    ("encoded-address", "=?utf-8?B?Y2VvQGJhbmsuZXhhbXBsZQ==?=", "reject", "invalid"),
    ("comment-address", f"<ceo@{BANK}> (ceo@{EVIL})", "reject", "dmarc"),
    ("comment-in-domain", f"ceo@(x){BANK}", "reject", "invalid"),
    ("source-route", f"<@{EVIL}:ceo@{BANK}>", "reject", "invalid"),
    ("two-mailboxes", f"x@{EVIL}, ceo@{BANK}", "reject", "invalid"),
    ("empty", "", "reject", "invalid"),
    ("null-path", "<>", "reject", "invalid"),
]


@pytest.mark.parametrize("case,sender,action,what", COMPOSITION, ids=[c[0] for c in COMPOSITION])
def test_composition_kills_from_spellings(env, case, sender, action, what):
    marker = f"ck-{case}"
    data = message(sender, marker)
    v = env.verify(f"attacker@{EVIL}", data)
    assert v["action"] == action, (case, v)
    if what == "display-name":
        assert ("display-name", BANK) in [(f["rule"], f["resembles"]) for f in v["lookalike"]], v["lookalike"]
    if what == "dmarc":
        assert v["dmarc"]["from_domain"] == BANK and v["dmarc"]["result"] == "fail", v["dmarc"]
    code, _ = env.send(f"attacker@{EVIL}", data)
    if action == "reject":
        assert code == 550, (case, code)
    else:
        assert code == 250
        env.quarantined(marker)
    env.never_delivered(marker)


def test_whitespace_and_nul_before_the_colon_count_as_from(env):
    """`From :`, `FROM:` and a folded name are each a From: field; a NUL in
    the name does not make it a different field to us but may to others:
    two authors either way, refused."""
    for i, second in enumerate([f"From : ceo@{BANK}\r\n", f"FROM:ceo@{BANK}\r\n", f"From\r\n :ceo@{BANK}\r\n",
                                f"From\t: ceo@{BANK}\r\n"]):
        data = second.encode() + message(f"x@{EVIL}", f"ws-from-{i}")
        v = env.verify(f"attacker@{EVIL}", data)
        assert v["action"] == "reject" and v["dmarc"]["result"] == "fail", (second, v)


def test_dkim_signature_of_another_domain_does_not_align(env):
    """DKIM `d=` abuse: a valid signature by the attacker's own domain does
    not vouch for a From: of bank.example."""
    marker = "dkim-other-d"
    data = ed_sign(message(f"ceo@{BANK}", marker), EVIL, env.keys)
    v = env.verify(f"attacker@{EVIL}", data)
    assert [d["result"] for d in v["dkim"]] == ["pass"] and v["dkim"][0]["domain"] == EVIL, v["dkim"]
    assert v["dmarc"]["result"] == "fail" and not v["dmarc"]["dkim_aligned"] and v["action"] == "reject", v
    code, _ = env.send(f"attacker@{EVIL}", data)
    assert code == 550
    env.never_delivered(marker)


# -- 6. send_as on submission: the same local-part and From: spellings


from test_tls_auth import ALLOWED, hashes, login, send as submit, submission_tls, tls_server  # noqa: E402,F401
from test_tls_auth import message as submission_message  # noqa: E402


@pytest.mark.parametrize("headers", [
    f'From: "ceo@{BANK}"@example.test\r\n',
    f'From: <"ceo@{BANK}"@example.test>\r\n',
    f"From: ceo@{BANK}@example.test\r\n",
    f"From: <{ALLOWED}>\r\nFROM : <ceo@{BANK}>\r\n",
    f"From: <{ALLOWED}>\r\nFrom\r\n : <ceo@{BANK}>\r\n",
    f"From: <{ALLOWED}.>\r\n",
])
def test_send_as_refuses_from_spellings_that_hide_another_author(tls_server, headers):
    d = submission_tls(tls_server)
    login(d)
    r = submit(d, ALLOWED, "bob@elsewhere.test", submission_message(extra_headers=headers))
    assert r.is_(550, "5.7.1"), f"{headers!r}: {r}"
    d.close()
    assert tls_server.queue_list() == []


def test_send_as_refuses_an_at_in_the_mail_from_local_part(tls_server):
    d = submission_tls(tls_server)
    login(d)
    r = d.cmd(f'MAIL FROM:<"ceo@{BANK}"@example.test>')
    assert r.is_(553, "5.7.1"), r
    r = d.cmd("MAIL FROM:<App@EXAMPLE.TEST>")
    assert r.code == 250, "case is not a different address"
    d.close()


# -- 7. The envelope: non-canonical MAIL FROM spellings


def test_envelope_sender_spellings(env):
    """A trailing dot or an empty label in MAIL FROM is a syntax error at
    MAIL (the SPF and alignment identity is never non-canonical); case is
    not a different domain, so an upper-case look-alike is still one."""
    with smtplib.SMTP("127.0.0.1", env.srv.mx_port, local_hostname=HELO, timeout=30) as s:
        s.ehlo()
        for bad in [f"<a@{BANK}.>", f"<a@{BANK}..>", f"<a@.{BANK}>"]:
            code, _ = s.docmd(f"MAIL FROM:{bad}")
            assert code == 501, (bad, code)
    v = env.verify(f"BOUNCE@{B4NK.upper()}", message(f"x@{EVIL}", "env-upper"))
    assert [(f["rule"], f["identity"]) for f in v["lookalike"]] == [("substitution", "mail_from")], v["lookalike"]
