"""The `complained` and `suppressed` webhook events against the real binary.

An ARF complaint (RFC 5965) arriving at `[suppression] complaints` about a
message that left with a VERP sender becomes a `complained` event naming
that message's queue id, its Message-ID (from the report's copy of the
original) and the recipient; the next submission to that recipient is
refused at RCPT and becomes a `suppressed` event (`action: refused`). With
`action = "drop"`, the dropped recipient's `suppressed` event comes before
its `bounced` one, with the queue id. Every POST is checked for its
`Mailgate-Signature` by the loopback receiver of `test_webhooks`.
"""

from __future__ import annotations

import re
import smtplib
import time

from test_verp_suppression import Peer, send_raw, start, wait_for
from test_webhooks import SECRET, Receiver, hook_toml, verify

COMMON = {"event", "queue_id", "message_id", "sender", "recipient", "time", "mx", "reply", "classification", "attempt"}


def arf(mail_from: str, rcpt: str, message_id: str, feedback_type: str = "abuse") -> bytes:
    return (
        "From: <fbl@isp.example>\r\nTo: <fbl@example.test>\r\nSubject: FW: hi\r\nMIME-Version: 1.0\r\n"
        "Content-Type: multipart/report; report-type=feedback-report; boundary=\"P\"\r\n\r\n"
        "--P\r\nContent-Type: text/plain\r\n\r\nThis is an email abuse report.\r\n"
        f"--P\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: {feedback_type}\r\n"
        "User-Agent: ISP-FBL/1.0\r\nVersion: 1\r\n"
        f"Original-Mail-From: <{mail_from}>\r\nOriginal-Rcpt-To: <{rcpt}>\r\n\r\n"
        f"--P\r\nContent-Type: message/rfc822\r\n\r\nFrom: Alice <alice@example.test>\r\nTo: <{rcpt}>\r\n"
        f"Subject: hi\r\nMessage-ID: {message_id}\r\n\r\nhello\r\n--P--\r\n"
    ).encode()


def submit(srv, rcpt: str, marker: str) -> tuple[int, str]:
    """One message from alice@example.test (a trusted client: submitted
    mail); (RCPT code, queue id or reply text)."""
    with smtplib.SMTP("127.0.0.1", srv.mx_port, timeout=30) as s:
        s.ehlo("app.example.test")
        s.mail("alice@example.test")
        code, text = s.rcpt(rcpt)
        if code >= 400:
            return code, text.decode()
        code, reply = s.data(f"From: alice@example.test\r\nTo: {rcpt}\r\nSubject: {marker}\r\n"
                             f"Message-ID: <{marker}@example.test>\r\n\r\nhello\r\n".encode())
        assert code == 250, reply
        return code, re.search(r"queued as (\S+)", reply.decode()).group(1)


def signed(receiver: Receiver) -> None:
    for p in receiver.posts:
        assert verify(SECRET, p["sig"], p["body"]), p
        assert not verify("wrong-secret", p["sig"], p["body"])


def test_complained_and_suppressed(mailgate_factory):
    p = Peer()
    receiver = Receiver()
    try:
        srv = start(mailgate_factory, "hooks-arf", p.port, suppression={"complaints": ["fbl@example.test"]},
                    extra_toml=hook_toml(receiver.url(), ["complained", "suppressed"]))
        code, qid = submit(srv, "carol@peer.test", "c1")
        assert code == 250
        got = p.wait(1)
        verp = got[0][0]
        assert verp.startswith("bounces+"), got

        # Gone from the queue, the message is found by its timeline in the
        # report store. Right after delivery its record may still wait in
        # the recorder's batch (0.5 s): the complaint flushes it and looks
        # again, so it is sent at once here (real ones come much later).
        wait_for(lambda: srv.queue_list() == [], what="c1 delivered and gone")
        # The report names the original by its VERP envelope sender.
        assert send_raw(srv, "fbl-sender@isp.example", "fbl@example.test",
                        arf(verp, "carol@peer.test", "<c1@example.test>")) == (250, 250)
        [e] = receiver.wait_for(1)
        assert set(e) == COMMON | {"feedback_type", "reporter", "suppressed"}, e
        assert e["event"] == "complained"
        assert e["queue_id"] == qid and e["message_id"] == "<c1@example.test>", e
        assert e["sender"] == "alice@example.test" and e["recipient"] == "carol@peer.test", e
        assert e["classification"] == {"kind": "hard", "category": "policy_or_spam"}, e
        assert (e["feedback_type"], e["reporter"], e["suppressed"]) == ("abuse", "ISP-FBL/1.0", True), e
        assert e["mx"] is None and e["reply"] is None and e["attempt"] == 0, e
        assert e["time"].endswith("Z")

        # A not-spam report is an event too, suppressing nobody.
        assert send_raw(srv, "fbl-sender@isp.example", "fbl@example.test",
                        arf("alice@example.test", "dave@peer.test", "<d1@example.test>", "not-spam")) == (250, 250)
        e = receiver.wait_for(2)[1]
        assert (e["event"], e["recipient"], e["queue_id"]) == ("complained", "dave@peer.test", None), e
        assert (e["feedback_type"], e["suppressed"], e["classification"]) == ("not-spam", False, None), e

        # Carol is on example.test's list now: refused at RCPT, one event.
        code, text = wait_for(lambda: (r := submit(srv, "carol@peer.test", "c2"))[0] == 550 and r,
                              what="carol refused")
        assert "suppression list of example.test: complaint (abuse)" in text, text
        e = receiver.wait_for(3)[2]
        assert set(e) == COMMON | {"action", "suppression"}, e
        assert e["event"] == "suppressed" and e["action"] == "refused", e
        assert (e["sender"], e["recipient"], e["queue_id"]) == ("alice@example.test", "carol@peer.test", None), e
        assert e["reply"].startswith("550 5.1.1 <carol@peer.test> is on the suppression list"), e
        s = e["suppression"]
        assert (s["domain"], s["source"], s["category"], s["reason"]) == (
            "example.test", "complaint", "complaint", "feedback type abuse"), s
        assert s["since"].endswith("Z") and (s["expires"] is None or s["expires"].endswith("Z")), s
        # Dave was not suppressed.
        assert submit(srv, "dave@peer.test", "d2")[0] == 250
        time.sleep(0.5)
        assert len(receiver.accepted()) == 3, receiver.accepted()
        signed(receiver)
    finally:
        receiver.stop()
        p.shutdown()
        p.server_close()


def test_dropped_recipient_is_suppressed_then_bounced(mailgate_factory):
    p = Peer()
    receiver = Receiver()
    try:
        srv = start(mailgate_factory, "hooks-drop", p.port, suppression={"action": "drop"}, verp=False,
                    deliver_ours_to_peer=True, extra_toml=hook_toml(receiver.url(), ["suppressed", "bounced"]))
        srv.cli("suppression", "add", "q@peer.test", "--domain", "example.test", "--reason", "asked us to stop")
        code, qid = submit(srv, "q@peer.test", "q1")
        assert code == 250
        got = receiver.wait_for(2)
        assert [e["event"] for e in got] == ["suppressed", "bounced"], got
        sup, bounced = got
        assert sup["action"] == "dropped" and sup["queue_id"] == qid == bounced["queue_id"], got
        assert sup["message_id"] == "<q1@example.test>" == bounced["message_id"], got
        assert (sup["sender"], sup["recipient"]) == ("alice@example.test", "q@peer.test"), sup
        assert sup["suppression"]["source"] == "manual" and sup["suppression"]["reason"] == "asked us to stop", sup
        assert sup["reply"].startswith("550 5.1.1"), sup
        signed(receiver)
    finally:
        receiver.stop()
        p.shutdown()
        p.server_close()
