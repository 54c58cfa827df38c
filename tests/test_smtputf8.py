"""SMTPUTF8 (RFC 6531): non-ASCII addresses only with the SMTPUTF8 parameter."""

import smtplib

from helpers import queue_id

UTF8_SENDER = "δοκιμή@παράδειγμα.test"
UTF8_RCPT = "用户@example.test"


def test_utf8_addresses_accepted_with_smtputf8_param(server):
    with server.smtp() as d:
        d.ehlo()
        r = d.cmd(f"MAIL FROM:<{UTF8_SENDER}> SMTPUTF8")
        assert r.is_(250, "2.1.0"), r
        r = d.cmd(f"RCPT TO:<{UTF8_RCPT}>")
        assert r.is_(250, "2.1.5"), r
        assert d.cmd("DATA").code == 354
        d.send("Subject: ünïcödé\r\n\r\nγειά\r\n.\r\n".encode())
        r = d.read_reply()
        assert r.is_(250, "2.0.0"), r
        qid = queue_id(r)
    m = {m["id"]: m for m in server.queue_list()}[qid]
    assert m["sender"] == UTF8_SENDER
    assert [r["address"] for r in m["recipients"]] == [UTF8_RCPT]
    shown = server.queue_show(qid)
    assert "UTF8SMTP" in shown["headers"], shown["headers"]


def test_utf8_sender_without_smtputf8_refused_553_5_6_7(server):
    with server.smtp() as d:
        d.ehlo()
        r = d.cmd(f"MAIL FROM:<{UTF8_SENDER}>")
        assert r.is_(553, "5.6.7"), r
        # The session is still usable.
        assert d.transaction().code == 250


def test_utf8_recipient_without_smtputf8_refused_553_5_6_7(server):
    with server.smtp() as d:
        d.ehlo()
        assert d.cmd("MAIL FROM:<a@sender.test>").code == 250
        r = d.cmd(f"RCPT TO:<{UTF8_RCPT}>")
        assert r.is_(553, "5.6.7"), r
        r = d.cmd("DATA")
        assert r.code >= 500, r
    assert server.queue_list() == []


def test_utf8_via_smtplib_send_message_with_smtputf8_option(server):
    with smtplib.SMTP("127.0.0.1", server.mx_port, timeout=10) as s:
        s.ehlo("client.test")
        assert s.has_extn("smtputf8")
        refused = s.sendmail(
            UTF8_SENDER,
            [UTF8_RCPT],
            "Subject: x\r\n\r\ny\r\n".encode(),
            mail_options=["SMTPUTF8"],
        )
        assert refused == {}
    (m,) = server.queue_list()
    assert m["sender"] == UTF8_SENDER


def test_invalid_utf8_in_command_is_refused(server):
    with server.smtp() as d:
        d.ehlo()
        r = d.cmd(b"MAIL FROM:<\xff\xfe@sender.test> SMTPUTF8")
        assert 500 <= r.code < 600 and r.enhanced and r.enhanced.startswith("5."), r
        assert d.cmd("NOOP").code == 250
