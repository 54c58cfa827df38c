"""A message bounced by its next hop: its timeline on the dashboard shows
the attempt with the full 550 reply and the delivery status notification
sent to its sender, with the notice's own queue id."""

from __future__ import annotations

import json
import smtplib
import time

from dashboard_env import Greylist
from helpers import queue_id

REJECT = "550 5.1.1 <nobody@hard.test>: Recipient address rejected: no such user"


def test_bounced_message_timeline_shows_the_dsn(mailgate_factory):
    hop = Greylist(REJECT)  # an SMTP next hop that answers every RCPT with a 550
    try:
        srv = mailgate_factory("dsn", relay={"trusted_networks": ["127.0.0.1/32"]},
                               extra_toml='[[domain]]\nname = "hard.test"\ndkim = false\n'
                                          f'deliver = "smtp://127.0.0.1:{hop.port}"\n').start()
        with smtplib.SMTP("127.0.0.1", srv.mx_port, timeout=30) as s:
            s.ehlo("client.test")
            s.mail("alice@example.test")
            s.rcpt("nobody@hard.test")
            code, reply = s.data(b"From: alice@example.test\r\nTo: nobody@hard.test\r\n"
                                 b"Subject: bounce me\r\nMessage-ID: <bounce-me@example.test>\r\n\r\nhi\r\n")
            assert code == 250, reply
        qid = queue_id(reply.decode())
        deadline = time.monotonic() + 30
        while True:
            status, body = srv.http_get(f"/messages/{qid}?format=json")
            # The store's writer batches: the timeline may not be there yet,
            # and once bounced the message is no longer queued (404).
            assert status in (200, 404), body
            events = (json.loads(body)["timeline"] or {}).get("events", []) if status == 200 else []
            dsns = [e for e in events if e.get("kind") == "dsn"]
            if dsns or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert dsns, f"no DSN on the timeline: {events}"
        assert dsns[0]["notice"] == "failure" and dsns[0]["recipients"] == ["nobody@hard.test"], dsns
        attempts = [e for e in events if e.get("kind") == "attempt"]
        assert attempts and attempts[0]["recipients"][0]["reply"].startswith("550 5.1.1"), attempts
        notice = dsns[0]["dsn_id"]
        # The notice is a message of its own, queued to the sender.
        status, page = srv.http_get(f"/messages/{qid}")
        assert status == 200 and notice in page and "failure" in page, page[-2000:]
    finally:
        hop.shutdown()
        hop.server_close()
