"""Open-relay battery, as a mail admin's relay test would run it.

From an untrusted client on the mx listener, no recipient outside our
[[domain]]s may be accepted, and no sender-specified routing either
(`%`, `!`, a quoted `@`, a source route), as Postfix does with
allow_untrusted_routing = no.
"""

import re
import smtplib

import pytest

from helpers import queue_id

RELAY = (554, "5.7.1")  # Relay access denied
ROUTING = (550, "5.7.1")  # sender-specified routing refused
SYNTAX = (501, "5.1.3")  # bad destination mailbox syntax

# (id, RCPT command line, allowed refusals)
BATTERY = [
    ("foreign-domain", "RCPT TO:<b@other.test>", {RELAY}),
    ("percent-hack", "RCPT TO:<b%other.test@example.test>", {ROUTING}),
    ("percent-hack-chain", "RCPT TO:<b%other.test%third.test@example.test>", {ROUTING}),
    ("bang-path", "RCPT TO:<other.test!b@example.test>", {ROUTING}),
    ("bang-path-upper-domain", "RCPT TO:<other.test!b@EXAMPLE.TEST>", {ROUTING}),
    ("quoted-at", 'RCPT TO:<"b@other.test"@example.test>', {ROUTING}),
    ("quoted-escaped-at", 'RCPT TO:<"b\\@other.test"@example.test>', {ROUTING}),
    ("quoted-percent", 'RCPT TO:<"b%other.test"@example.test>', {ROUTING}),
    ("quoted-bang", 'RCPT TO:<"other.test!b"@example.test>', {ROUTING}),
    ("source-route-via-us", "RCPT TO:<@example.test:b@other.test>", {ROUTING}),
    ("source-route-to-local", "RCPT TO:<@other.test:b@example.test>", {ROUTING}),
    ("source-route-two-hops", "RCPT TO:<@example.test,@other.test:b@third.test>", {ROUTING}),
    ("ipv4-literal", "RCPT TO:<b@[127.0.0.1]>", {RELAY}),
    ("ipv4-literal-public", "RCPT TO:<b@[192.0.2.1]>", {RELAY}),
    ("ipv6-literal", "RCPT TO:<b@[IPv6:::1]>", {RELAY}),
    ("trailing-dot", "RCPT TO:<b@example.test.>", {SYNTAX, RELAY}),
    ("double-at", "RCPT TO:<b@other.test@example.test>", {SYNTAX, ROUTING}),
    ("double-at-reversed", "RCPT TO:<b@example.test@other.test>", {SYNTAX, ROUTING, RELAY}),
    ("subdomain", "RCPT TO:<b@sub.example.test>", {RELAY}),
    ("local-domain-as-prefix", "RCPT TO:<b@EXAMPLE.TEST.other.test>", {RELAY}),
    ("local-domain-as-label-suffix", "RCPT TO:<b@notexample.test>", {RELAY}),
    ("uppercase-foreign", "RCPT TO:<B@OTHER.TEST>", {RELAY}),
    ("mixed-case-verb", "rCpT tO:<b@Other.Test>", {RELAY}),
    ("space-after-colon", "RCPT TO: <b@other.test>", {RELAY, SYNTAX}),
    ("space-inside-brackets", "RCPT TO:< b@other.test >", {RELAY, SYNTAX}),
    ("no-brackets", "RCPT TO:b@other.test", {SYNTAX, RELAY}),
    ("double-brackets", "RCPT TO:<<b@other.test>>", {SYNTAX}),
    ("quoted-local-foreign", 'RCPT TO:<"b"@other.test>', {RELAY}),
    ("quoted-whole-address", 'RCPT TO:<"b@other.test">', {SYNTAX}),
    ("postmaster-foreign", "RCPT TO:<postmaster@other.test>", {RELAY}),
    ("localhost", "RCPT TO:<b@localhost>", {RELAY}),
    ("percent-in-domain", "RCPT TO:<b@other.test%example.test>", {SYNTAX}),
    ("comment-in-address", "RCPT TO:<b@other.test(example.test)>", {SYNTAX}),
    ("second-path-as-param", "RCPT TO:<b@other.test> <b@example.test>", {RELAY, (555, "5.5.4")}),
]


def refuse_check(reply, allowed):
    assert not (200 <= reply.code < 400), f"ACCEPTED (open relay): {reply}"
    assert (reply.code, reply.enhanced) in allowed, (
        f"refused, but with {reply.code} {reply.enhanced}; expected one of {allowed}: {reply}"
    )


@pytest.mark.parametrize("line,allowed", [c[1:] for c in BATTERY], ids=[c[0] for c in BATTERY])
def test_untrusted_client_cannot_relay(server, line, allowed):
    with server.smtp() as d:
        d.ehlo("relaytest.other.test")
        assert d.cmd("MAIL FROM:<relaytest@other.test>").code == 250
        r = d.cmd(line)
        refuse_check(r, allowed)
        # With no recipient accepted, DATA must not start.
        r = d.cmd("DATA")
        assert r.code >= 500, r
        assert d.cmd("RSET").code == 250
    assert server.queue_list() == []


def test_untrusted_relay_attempt_mixed_with_local_recipient_only_queues_local(server):
    with server.smtp() as d:
        d.ehlo()
        assert d.cmd("MAIL FROM:<a@sender.test>").code == 250
        assert d.cmd("RCPT TO:<b@other.test>").code == 554
        assert d.cmd("RCPT TO:<b%other.test@example.test>").code == 550
        assert d.cmd("RCPT TO:<b@example.test>").code == 250
        assert d.cmd("DATA").code == 354
        d.send(b"Subject: x\r\n\r\nx\r\n.\r\n")
        assert d.read_reply().code == 250
    (m,) = server.queue_list()
    assert [r["address"] for r in m["recipients"]] == ["b@example.test"]


@pytest.mark.parametrize("rcpt", ["<postmaster>", "<Postmaster>", "<POSTMASTER>"])
def test_postmaster_without_domain_is_accepted(server, rcpt):
    with server.smtp() as d:
        d.ehlo()
        assert d.cmd("MAIL FROM:<a@sender.test>").code == 250
        r = d.cmd(f"RCPT TO:{rcpt}")
        assert r.is_(250, "2.1.5"), r
        assert d.cmd("DATA").code == 354
        d.send(b"Subject: to postmaster\r\n\r\nx\r\n.\r\n")
        qid = queue_id(d.read_reply())
    (m,) = server.queue_list()
    assert m["id"] == qid
    (r,) = m["recipients"]
    assert r["address"].lower() == "postmaster@example.test", m


def test_local_domain_recipient_is_accepted_in_any_case(server):
    with server.smtp() as d:
        d.ehlo()
        assert d.cmd("MAIL FROM:<a@sender.test>").code == 250
        r = d.cmd("RCPT TO:<Bob@Example.TEST>")
        assert r.is_(250, "2.1.5"), r
        r = d.cmd("RCPT TO:<postmaster@example.test>")
        assert r.is_(250, "2.1.5"), r


@pytest.mark.mailgate(relay={"trusted_networks": ["127.0.0.0/8"]})
def test_trusted_network_client_may_relay_to_other_domain(server):
    with server.smtp() as d:
        d.ehlo()
        assert d.cmd("MAIL FROM:<app@example.test>").code == 250
        r = d.cmd("RCPT TO:<b@other.test>")
        assert r.is_(250, "2.1.5"), r
        assert d.cmd("DATA").code == 354
        d.send(b"Subject: out\r\n\r\nx\r\n.\r\n")
        qid = queue_id(d.read_reply())
    (m,) = server.queue_list()
    assert m["id"] == qid
    assert [r["address"] for r in m["recipients"]] == ["b@other.test"]


@pytest.mark.mailgate(relay={"trusted_networks": ["127.0.0.1/32"]})
def test_trusted_single_address_network_may_relay(server):
    with smtplib.SMTP("127.0.0.1", server.mx_port, timeout=10) as s:
        s.ehlo("app.example.test")
        assert s.sendmail("app@example.test", ["x@other.test"], b"Subject: x\r\n\r\nx\r\n") == {}
    assert len(server.queue_list()) == 1


@pytest.mark.mailgate(relay={"trusted_networks": ["10.0.0.0/8", "::1/128", "127.0.0.2/32"]})
def test_client_outside_trusted_networks_cannot_relay(server):
    with server.smtp() as d:
        d.ehlo()
        assert d.cmd("MAIL FROM:<a@example.test>").code == 250
        r = d.cmd("RCPT TO:<b@other.test>")
        refuse_check(r, {RELAY})
    assert server.queue_list() == []


def test_submission_listener_without_auth_refuses_mail_530_5_7_0(server):
    with server.smtp(server.submission_port) as d:
        assert d.greeting.code == 220
        d.ehlo()
        r = d.cmd("MAIL FROM:<app@example.test>")
        assert r.is_(530, "5.7.0"), r
        r = d.cmd("RCPT TO:<b@example.test>")
        assert r.code == 503, r
    assert server.queue_list() == []


def test_submission_listener_without_auth_refuses_smtplib_sendmail(server):
    with smtplib.SMTP("127.0.0.1", server.submission_port, timeout=10) as s:
        s.ehlo("client.test")
        with pytest.raises(smtplib.SMTPSenderRefused) as e:
            s.sendmail("app@example.test", ["b@other.test"], b"Subject: x\r\n\r\nx\r\n")
        assert e.value.smtp_code == 530
        assert e.value.smtp_error.startswith(b"5.7.0")
    assert server.queue_list() == []


# -- the same checks through swaks, an independent client -------------------


@pytest.mark.parametrize(
    "rcpt,expected",
    [
        ("b@other.test", "554 5.7.1"),
        ("b%other.test@example.test", "550 5.7.1"),
        ("other.test!b@example.test", "550 5.7.1"),
        ('"b@other.test"@example.test', "550 5.7.1"),
        ("@example.test:b@other.test", "550 5.7.1"),
        ("b@[127.0.0.1]", "554 5.7.1"),
        ("b@sub.example.test", "554 5.7.1"),
    ],
    ids=["foreign", "percent", "bang", "quoted-at", "source-route", "literal", "subdomain"],
)
def test_swaks_relay_attempt_is_refused(server, swaks, rcpt, expected):
    p = swaks("--server", f"127.0.0.1:{server.mx_port}", "--from", "relaytest@other.test", "--to", rcpt)
    out = p.stdout + p.stderr
    # 24: no RCPTs accepted.
    assert p.returncode == 24, out
    assert re.search(rf"^<\*\*\s+{re.escape(expected)} ", out, re.M), out
    assert server.queue_list() == []


def test_swaks_to_local_domain_is_queued(server, swaks):
    p = swaks(
        "--server", f"127.0.0.1:{server.mx_port}",
        "--from", "alice@sender.test",
        "--to", "bob@example.test",
        "--header", "Subject: via swaks",
    )
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    m = re.search(r"^<-\s+250 2\.0\.0 .*queued as (\S+)", out, re.M)
    assert m, out
    msgs = {x["id"]: x for x in server.queue_list()}
    assert set(msgs) == {m.group(1)}
    assert msgs[m.group(1)]["sender"] == "alice@sender.test"
    assert "Subject: via swaks" in server.queue_show(m.group(1))["headers"]


def test_swaks_pipelined_transaction_is_queued(server, swaks):
    p = swaks(
        "--server", f"127.0.0.1:{server.mx_port}",
        "--from", "alice@sender.test",
        "--to", "bob@example.test,carol@example.test",
        "--pipeline",
    )
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    (m,) = server.queue_list()
    assert [r["address"] for r in m["recipients"]] == ["bob@example.test", "carol@example.test"]


def test_swaks_postmaster_without_domain_is_accepted(server, swaks):
    p = swaks("--server", f"127.0.0.1:{server.mx_port}", "--from", "a@sender.test", "--to", "postmaster")
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    assert len(server.queue_list()) == 1


@pytest.mark.mailgate(relay={"trusted_networks": ["127.0.0.0/8"]})
def test_swaks_from_trusted_network_may_relay(server, swaks):
    p = swaks("--server", f"127.0.0.1:{server.mx_port}", "--from", "app@example.test", "--to", "b@other.test")
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    (m,) = server.queue_list()
    assert m["recipients"][0]["address"] == "b@other.test"


def test_swaks_submission_without_auth_is_refused_530(server, swaks):
    p = swaks("--server", f"127.0.0.1:{server.submission_port}", "--from", "app@example.test", "--to", "b@other.test")
    out = p.stdout + p.stderr
    # 23: error in MAIL transaction.
    assert p.returncode == 23, out
    assert re.search(r"^<\*\*\s+530 5\.7\.0 ", out, re.M), out
    assert server.queue_list() == []
