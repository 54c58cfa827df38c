"""Each SMTP command and advertised extension (RFC 5321, RFC 2034 and the
ESMTP extensions mailgate advertises)."""

import smtplib

import pytest

from helpers import ENHANCED, queue_id

EXPECTED_EXTENSIONS = [
    "PIPELINING",
    "8BITMIME",
    "SMTPUTF8",
    "ENHANCEDSTATUSCODES",
    "CHUNKING",
    "DSN",
]


def test_greeting_is_220_with_hostname_and_no_enhanced_code(server):
    with server.smtp() as d:
        g = d.greeting
        assert g.code == 220, g
        assert g.lines[0].startswith(server.hostname), g
        # RFC 2034: the greeting carries no enhanced status code.
        assert g.enhanced is None, g


@pytest.mark.mailgate(limits={"max_message_size": 123456})
def test_ehlo_advertises_all_extensions_and_configured_size(server):
    with server.smtp() as d:
        r = d.cmd("EHLO client.test")
        assert r.code == 250, r
        assert len(r.lines) > 1, r
        keywords = [l.split(" ")[0].upper() for l in r.lines[1:]]
        for ext in EXPECTED_EXTENSIONS:
            assert ext in keywords, f"{ext} not advertised: {r}"
        sizes = [l for l in r.lines[1:] if l.upper().startswith("SIZE")]
        assert sizes == ["SIZE 123456"], r
        # RFC 2034: the EHLO reply lines carry no enhanced status codes.
        assert not any(ENHANCED.match(l) for l in r.lines), r


def test_ehlo_extensions_seen_by_smtplib(server):
    with smtplib.SMTP("127.0.0.1", server.mx_port, timeout=10) as s:
        code, _ = s.ehlo("client.test")
        assert code == 250
        for ext in EXPECTED_EXTENSIONS + ["SIZE"]:
            assert s.has_extn(ext), f"smtplib does not see {ext}: {s.esmtp_features}"
        assert int(s.esmtp_features["size"]) == 25 * 1024 * 1024


def test_helo_reply_is_single_250_line_without_extensions(server):
    with server.smtp() as d:
        r = d.cmd("HELO client.test")
        assert r.code == 250, r
        assert len(r.lines) == 1, r
        assert r.enhanced is None, r
        assert server.hostname in r.lines[0], r


def test_helo_then_plain_transaction_is_queued(server):
    with server.smtp() as d:
        assert d.cmd("HELO client.test").code == 250
        r = d.transaction()
        assert r.is_(250, "2.0.0"), r
        qid = queue_id(r)
    assert qid in server.queue_ids()


def test_mail_parameters_after_helo_refused_555(server):
    with server.smtp() as d:
        assert d.cmd("HELO client.test").code == 250
        r = d.cmd("MAIL FROM:<a@sender.test> SIZE=100")
        assert r.is_(555, "5.5.4"), r


def test_ehlo_without_hostname_is_501(server):
    with server.smtp() as d:
        r = d.cmd("EHLO")
        assert r.code == 501 and r.enhanced == "5.5.4", r


def test_mail_rcpt_data_transaction_with_smtplib(server):
    with smtplib.SMTP("127.0.0.1", server.mx_port, timeout=10) as s:
        s.ehlo("client.test")
        code, msg = s.mail("alice@sender.test")
        assert code == 250 and msg.startswith(b"2.1.0"), (code, msg)
        code, msg = s.rcpt("bob@example.test")
        assert code == 250 and msg.startswith(b"2.1.5"), (code, msg)
        code, msg = s.data(b"Subject: hi\r\n\r\nhello bob\r\n")
        assert code == 250 and msg.startswith(b"2.0.0"), (code, msg)
        qid = queue_id(msg.decode())
    msgs = {m["id"]: m for m in server.queue_list()}
    assert qid in msgs
    assert msgs[qid]["sender"] == "alice@sender.test"
    assert [r["address"] for r in msgs[qid]["recipients"]] == ["bob@example.test"]


def test_mail_before_ehlo_is_503_5_5_1(server):
    with server.smtp() as d:
        r = d.cmd("MAIL FROM:<a@sender.test>")
        assert r.is_(503, "5.5.1"), r


def test_rcpt_before_mail_is_503_5_5_1(server):
    with server.smtp() as d:
        d.ehlo()
        r = d.cmd("RCPT TO:<b@example.test>")
        assert r.is_(503, "5.5.1"), r


def test_data_before_mail_is_503_5_5_1(server):
    with server.smtp() as d:
        d.ehlo()
        r = d.cmd("DATA")
        assert r.is_(503, "5.5.1"), r


def test_data_without_accepted_recipient_is_refused(server):
    with server.smtp() as d:
        d.ehlo()
        assert d.cmd("MAIL FROM:<a@sender.test>").code == 250
        r = d.cmd("DATA")
        assert r.code in (503, 554) and r.enhanced and r.enhanced.startswith("5."), r
        # Not in DATA mode: a command works next.
        assert d.cmd("NOOP").is_(250, "2.0.0")
    assert server.queue_list() == []


def test_nested_mail_is_503(server):
    with server.smtp() as d:
        d.ehlo()
        assert d.cmd("MAIL FROM:<a@sender.test>").code == 250
        r = d.cmd("MAIL FROM:<c@sender.test>")
        assert r.is_(503, "5.5.1"), r


def test_rset_clears_the_transaction(server):
    with server.smtp() as d:
        d.ehlo()
        assert d.cmd("MAIL FROM:<a@sender.test>").code == 250
        assert d.cmd("RCPT TO:<b@example.test>").code == 250
        r = d.cmd("RSET")
        assert r.is_(250, "2.0.0"), r
        r = d.cmd("RCPT TO:<b@example.test>")
        assert r.is_(503, "5.5.1"), r
        r = d.cmd("DATA")
        assert r.code == 503, r
        # A new transaction after RSET works.
        assert d.transaction(sender="new@sender.test").code == 250
    senders = [m["sender"] for m in server.queue_list()]
    assert senders == ["new@sender.test"]


def test_rset_with_argument_is_501(server):
    with server.smtp() as d:
        d.ehlo()
        r = d.cmd("RSET now")
        assert r.code == 501 and r.enhanced and r.enhanced.startswith("5.5."), r


def test_noop_returns_250_2_0_0(server):
    with server.smtp() as d:
        r = d.cmd("NOOP")
        assert r.is_(250, "2.0.0"), r
        r = d.cmd("NOOP with an argument")
        assert r.is_(250, "2.0.0"), r


def test_quit_returns_221_and_closes(server):
    with server.smtp() as d:
        d.ehlo()
        r = d.cmd("QUIT")
        assert r.code == 221, r
        assert r.enhanced == "2.0.0", r
        d.expect_closed()


def test_quit_via_smtplib(server):
    s = smtplib.SMTP("127.0.0.1", server.mx_port, timeout=10)
    s.ehlo("client.test")
    code, _ = s.quit()
    assert code == 221


def test_vrfy_returns_252(server):
    with server.smtp() as d:
        d.ehlo()
        r = d.cmd("VRFY b@example.test")
        assert r.code == 252 and r.enhanced == "2.5.2", r


def test_expn_returns_502(server):
    with server.smtp() as d:
        d.ehlo()
        r = d.cmd("EXPN staff")
        assert r.code == 502 and r.enhanced == "5.5.1", r


def test_help_returns_214(server):
    with server.smtp() as d:
        r = d.cmd("HELP")
        assert r.code == 214 and r.enhanced == "2.0.0", r


@pytest.mark.parametrize("line", ["FOO", "XYZZY bar", "MAILFROM:<a@b.test>", "EHLOX x"])
def test_unknown_command_returns_500_5_5_1(server, line):
    with server.smtp() as d:
        r = d.cmd(line)
        assert r.is_(500, "5.5.1"), r
        # The session goes on.
        assert d.cmd("NOOP").is_(250, "2.0.0")


def test_commands_are_case_insensitive(server):
    with server.smtp() as d:
        assert d.cmd("ehlo client.test").code == 250
        assert d.cmd("mail from:<a@sender.test>").code == 250
        assert d.cmd("rcpt to:<b@example.test>").code == 250
        assert d.cmd("data").code == 354
        d.send(b"Subject: x\r\n\r\nx\r\n.\r\n")
        assert d.read_reply().code == 250
        assert d.cmd("quit").code == 221


def test_starttls_and_auth_are_not_offered_on_mx(server):
    with server.smtp() as d:
        r = d.ehlo()
        kws = [l.split(" ")[0].upper() for l in r.lines[1:]]
        assert "AUTH" not in kws, r
        r = d.cmd("AUTH PLAIN AGIxMjM=")
        assert r.code in (502, 503, 504) and r.enhanced and r.enhanced.startswith("5."), r


# Every reply other than the greeting, EHLO/HELO 250 and the 354
# intermediate reply carries an enhanced status code (RFC 2034 §3).
DIALOGUE = [
    ("EHLO client.test", 250, False),
    ("NOOP", 250, True),
    ("HELP", 214, True),
    ("VRFY someone", 252, True),
    ("EXPN list", 502, True),
    ("RCPT TO:<b@example.test>", 503, True),
    ("DATA", 503, True),
    ("BOGUS", 500, True),
    ("MAIL FROM:<a@sender.test> FOO=BAR", 555, True),
    ("MAIL FROM:a@sender.test", 501, True),
    ("MAIL FROM:<a@sender.test>", 250, True),
    ("MAIL FROM:<a@sender.test>", 503, True),
    ("RCPT TO:<b@other.test>", 554, True),
    ("RCPT TO:<b@example.test>", 250, True),
    ("RCPT TO:<b@example.test> NOTIFY=BOGUS", 501, True),
    ("RSET", 250, True),
    ("HELO client.test", 250, False),
    ("RSET", 250, True),
    ("QUIT", 221, True),
]


def test_every_reply_except_greeting_and_ehlo_carries_enhanced_status_code(server):
    with server.smtp() as d:
        assert d.greeting.enhanced is None
        for line, code, enhanced in DIALOGUE:
            r = d.cmd(line)
            assert r.code == code, (line, r)
            if enhanced:
                assert r.all_lines_have_enhanced(), (line, r)
                # The class of the enhanced code matches the reply's class.
                assert r.enhanced[0] == str(code)[0], (line, r)
            else:
                assert r.enhanced is None, (line, r)


def test_enhanced_codes_on_data_and_reply_after_dot(server):
    with server.smtp() as d:
        d.ehlo()
        assert d.cmd("MAIL FROM:<a@sender.test>").is_(250, "2.1.0")
        assert d.cmd("RCPT TO:<b@example.test>").is_(250, "2.1.5")
        r = d.cmd("DATA")
        assert r.code == 354, r
        d.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
        r = d.read_reply()
        assert r.code == 250 and r.all_lines_have_enhanced(), r


def test_ehlo_in_the_middle_of_a_transaction_resets_it(server):
    # RFC 5321 4.1.4: EHLO mid-transaction clears it like RSET.
    with server.smtp() as d:
        d.ehlo()
        assert d.cmd("MAIL FROM:<a@sender.test>").code == 250
        assert d.cmd("RCPT TO:<b@example.test>").code == 250
        d.ehlo("again.test")
        r = d.cmd("DATA")
        assert r.is_(503, "5.5.1"), r
        assert d.cmd("MAIL FROM:<c@sender.test>").is_(250, "2.1.0")


def test_body_8bitmime_with_8bit_content_is_accepted(server):
    with server.smtp() as d:
        d.ehlo()
        body = "Subject: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nGrüße, ça va\r\n".encode()
        r = d.transaction(body=body, mail_params="BODY=8BITMIME")
        assert r.is_(250, "2.0.0"), r
    assert len(server.queue_list()) == 1


def test_body_binarymime_is_not_offered_and_refused_555(server):
    with server.smtp() as d:
        r = d.ehlo()
        assert "BINARYMIME" not in r.text
        r = d.cmd("MAIL FROM:<a@sender.test> BODY=BINARYMIME")
        assert r.is_(555, "5.5.4"), r


def test_unknown_mail_parameter_is_555_5_5_4(server):
    with server.smtp() as d:
        d.ehlo()
        r = d.cmd("MAIL FROM:<a@sender.test> XFORWARD=1")
        assert r.is_(555, "5.5.4"), r
        r = d.cmd("MAIL FROM:<a@sender.test>")
        assert r.code == 250, r
        r = d.cmd("RCPT TO:<b@example.test> FOO=BAR")
        assert r.is_(555, "5.5.4"), r


def test_bad_dsn_parameters_are_501(server):
    with server.smtp() as d:
        d.ehlo()
        r = d.cmd("MAIL FROM:<a@sender.test> ENVID=" + "x" * 101)
        assert r.code == 501 and r.enhanced.startswith("5.5."), r
        r = d.cmd("MAIL FROM:<a@sender.test> RET=SOME")
        assert r.code == 501, r
        assert d.cmd("MAIL FROM:<a@sender.test> RET=FULL").code == 250
        r = d.cmd("RCPT TO:<b@example.test> ORCPT=rfc822;bad+ZZ")
        assert r.code == 501, r
        r = d.cmd("RCPT TO:<b@example.test> NOTIFY=NEVER,SUCCESS")
        assert r.code == 501, r


def test_empty_message_is_accepted(server):
    with server.smtp() as d:
        d.ehlo()
        r = d.transaction(body=b"")
        assert r.is_(250, "2.0.0"), r
