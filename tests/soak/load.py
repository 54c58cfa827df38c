"""The soak test's clients: inbound senders on the `mx` listener and
authenticated users on `submission` (STARTTLS + AUTH PLAIN), each in its own
thread, reconnecting whenever the server dies under them.

Every message carries a unique `X-Soak-Id`. A client remembers which ids got
`250` at the end of DATA and to which recipients: those are the messages
mailgate owes the sink. A connection lost after the final dot but before the
reply leaves the message "unanswered": it may or may not be delivered, and
either is right.
"""

from __future__ import annotations

import collections
import random
import smtplib
import ssl
import threading
import time

INBOUND_DOMAIN = "soak.test"  # a [[domain]] of the server, delivered to the sink
REMOTE_DOMAIN = "remote.test"  # not ours: submission relays it via the smart host
USER = "soak"
PASSWORD = "soak-password"
SENDER = f"{USER}@{INBOUND_DOMAIN}"
# Over 128 KiB a message lives in a file of its own in spool/msg/ (another
# code path through the crash): a few messages take it.
LARGE = 160 * 1024


class Load:
    def __init__(self, mx_port: int, submission_port: int, inbound: int, submission: int,
                 seed: int, messages_per_connection: int = 5):
        self.mx_port = mx_port
        self.submission_port = submission_port
        self.per_conn = messages_per_connection
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.acked: dict[str, list[str]] = {}  # id -> recipients owed
        self.attempted = 0
        self.unanswered = 0
        self.refused: collections.Counter = collections.Counter()
        self.errors: collections.Counter = collections.Counter()
        self.run = f"{seed:x}"
        self.threads = [threading.Thread(target=self._inbound, args=(i, random.Random(seed + i)),
                                         daemon=True) for i in range(inbound)]
        self.threads += [threading.Thread(target=self._submission,
                                          args=(i, random.Random(seed + 1000 + i)), daemon=True)
                         for i in range(submission)]

    def start(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(30)
        alive = [t.name for t in self.threads if t.is_alive()]
        assert not alive, f"client threads did not stop: {alive}"

    # -- one message ---------------------------------------------------------

    def _body(self, sid: str, sender: str, rcpts: list[str], rng: random.Random) -> bytes:
        lines = 20 if rng.random() > 0.03 else LARGE // 60
        head = (f"From: <{sender}>\r\nTo: {', '.join(f'<{r}>' for r in rcpts)}\r\n"
                f"Subject: soak {sid}\r\nMessage-ID: <{sid}@soak.test>\r\n"
                f"X-Soak-Id: {sid}\r\n\r\n")
        return (head + f"soak message {sid} line of filler text .......\r\n" * lines).encode()

    def _send(self, s: smtplib.SMTP, sid: str, sender: str, rcpts: list[str],
              rng: random.Random) -> None:
        code, _ = s.mail(sender)
        if code != 250:
            self.refused[f"MAIL {code}"] += 1
            s.rset()
            return
        for r in rcpts:
            code, _ = s.rcpt(r)
            if code != 250:
                self.refused[f"RCPT {code}"] += 1
                s.rset()
                return
        body = self._body(sid, sender, rcpts, rng)
        with self.lock:
            self.attempted += 1
        try:
            code, _ = s.data(body)
        except smtplib.SMTPServerDisconnected:
            with self.lock:
                self.unanswered += 1
            raise
        if code == 250:
            with self.lock:
                self.acked[sid] = [r.lower() for r in rcpts]
        else:
            self.refused[f"DATA {code}"] += 1

    def _loop(self, kind: str, idx: int, connect, message) -> None:
        n = 0
        while not self.stop_event.is_set():
            try:
                with connect() as s:
                    for _ in range(self.per_conn):
                        if self.stop_event.is_set():
                            break
                        sid = f"{self.run}-{kind}{idx}-{n}"
                        n += 1
                        message(s, sid)
            except (OSError, smtplib.SMTPException) as e:
                # The server died, said 421, or is not up yet: try again.
                self.errors[type(e).__name__] += 1
                time.sleep(0.05)

    # -- the two kinds of client ---------------------------------------------

    def _inbound(self, idx: int, rng: random.Random) -> None:
        def connect():
            s = smtplib.SMTP("127.0.0.1", self.mx_port, local_hostname=f"client{idx}.src.test",
                             timeout=15)
            s.ehlo()
            return s

        def message(s, sid):
            rcpt = f"user{rng.randrange(20)}@{INBOUND_DOMAIN}"
            self._send(s, sid, f"sender{idx}@src{idx}.test", [rcpt], rng)

        self._loop("in", idx, connect, message)

    def _submission(self, idx: int, rng: random.Random) -> None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the server's self-signed certificate

        def connect():
            s = smtplib.SMTP("127.0.0.1", self.submission_port, local_hostname="laptop.soak.test",
                             timeout=15)
            s.ehlo()
            s.starttls(context=ctx)
            s.ehlo()
            s.login(USER, PASSWORD)
            return s

        def message(s, sid):
            rcpts = [f"friend{rng.randrange(20)}@{REMOTE_DOMAIN}"]
            if rng.random() < 0.3:  # one local and one relayed recipient: two routes
                rcpts.append(f"colleague{rng.randrange(5)}@{INBOUND_DOMAIN}")
            self._send(s, sid, SENDER, rcpts, rng)

        self._loop("sub", idx, connect, message)
