"""Delivery webhooks (`[[webhook]]`) against the real binary.

A Python HTTP receiver on 127.0.0.1 checks the `Mailgate-Signature` of
every POST (HMAC-SHA256 of "<t>.<body>" with the secret, and a timestamp
within five minutes) and keeps the events. Delivery goes to a Python SMTP
peer that answers each recipient by its local part: `ok*` 250, `soft*`
451 4.2.2 (mailbox full), `hard*` 550 5.1.1 (no such user).

`MAILGATE_WEBHOOK_RETRY_MS` shortens the first retry wait (10 s in
production) so the down-then-up test runs in seconds.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import smtplib
import socketserver
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import free_port

SECRET = "s3cret-for-tests"
WAIT = 20.0


def verify(secret: str, header: str, body: bytes, tolerance: float = 300.0) -> bool:
    """What a receiver does: parse `t=..,v1=..`, recompute, compare in
    constant time, and refuse an old timestamp."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        t = int(parts["t"])
    except (ValueError, KeyError):
        return False
    expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts.get("v1", "")) and abs(time.time() - t) < tolerance


class Receiver:
    """Keeps every POST; `fail` decides (by event) whether to answer 503."""

    def __init__(self, port: int = 0):
        self.posts: list[dict] = []
        self.lock = threading.Lock()
        self.fail = lambda event: False
        self.delay = lambda event: 0.0  # seconds before answering
        self.arrived: list[dict] = []  # events in the order their POSTs began
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(n)
                event = json.loads(body)
                with outer.lock:
                    outer.arrived.append(event)
                time.sleep(outer.delay(event))
                post = {"body": body, "sig": self.headers.get("Mailgate-Signature", ""),
                        "ctype": self.headers.get("Content-Type", ""), "event": event}
                failed = outer.fail(event)
                post["accepted"] = not failed
                with outer.lock:
                    outer.posts.append(post)
                self.send_response(503 if failed else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def accepted(self) -> list[dict]:
        with self.lock:
            return [p["event"] for p in self.posts if p["accepted"]]

    def wait_for(self, n: int, timeout: float = WAIT) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.accepted()
            if len(got) >= n:
                return got
            time.sleep(0.05)
        return self.accepted()


class _Peer(socketserver.StreamRequestHandler):
    """An SMTP next hop answering each recipient by its local part."""

    def handle(self):
        def reply(text):
            self.wfile.write(text.encode() + b"\r\n")
            self.wfile.flush()

        reply("220 peer.test ESMTP")
        accepted = 0
        while line := self.rfile.readline(4096):
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                reply("250 peer.test")
            elif verb == b"RCPT":
                local = line.split(b":", 1)[1].strip().strip(b"<>").split(b"@")[0].lower()
                if local.startswith(b"soft"):
                    reply("451 4.2.2 Mailbox full, try again later")
                elif local.startswith(b"hard"):
                    reply("550 5.1.1 No such user here")
                else:
                    accepted += 1
                    reply("250 2.1.5 Ok")
            elif verb == b"DATA":
                if not accepted:
                    reply("554 5.5.1 No valid recipients")
                    continue
                reply("354 go ahead")
                while (data := self.rfile.readline(65536)) not in (b".\r\n", b""):
                    pass
                reply("250 2.0.0 Ok: queued")
            elif verb == b"QUIT":
                reply("221 2.0.0 Bye")
                return
            elif verb in (b"MAIL", b"RSET", b"NOOP"):
                accepted = 0 if verb != b"NOOP" else accepted
                reply("250 2.0.0 Ok")
            else:
                reply("502 5.5.2 What")


class _Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture
def peer():
    srv = _Server(("127.0.0.1", 0), _Peer)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def hook_toml(url: str, events: list[str] | None = None, secret: str = SECRET) -> str:
    t = f'[[webhook]]\nurl = "{url}"\nsecret = "{secret}"\nmax_age = "1h"\n'
    if events is not None:
        t += "events = [" + ", ".join(f'"{e}"' for e in events) + "]\n"
    return t


def make(factory, peer_port: int, hooks: str, name: str = "srv", extra: str = ""):
    srv = factory(name, extra_toml=hooks + extra)
    text = srv.config_path.read_text()
    text = text.replace('deliver = "smtp://127.0.0.1:9"', f'deliver = "smtp://127.0.0.1:{peer_port}"')
    # One attempt only for deferred recipients within a test.
    text = text.replace("[delivery]\n", "[delivery]\nretry_initial = 3600\nretry_max = 7200\n")
    srv.config_path.write_text(text)
    return srv


def send(srv, rcpts: list[str], marker: str, sender: str = "app@outside.test") -> str:
    msg = (f"From: {sender}\r\nTo: x@example.test\r\nSubject: {marker}\r\n"
           f"Message-ID: <{marker}@outside.test>\r\n\r\nHello.\r\n")
    with smtplib.SMTP("127.0.0.1", srv.mx_port, timeout=10) as s:
        s.ehlo("client.test")
        s.mail(sender)
        for r in rcpts:
            # NOTIFY=NEVER: no delivery notice, whose own events would
            # join the ones under test.
            code, text = s.rcpt(r, ["NOTIFY=NEVER"])
            assert code == 250, (r, code, text)
        code, text = s.data(msg.encode())
        assert code == 250, (code, text)
    return text.decode().rsplit(" ", 1)[-1]


def metric(srv, name: str, **labels) -> float:
    status, text = srv.http_get("/metrics", token="")
    assert status == 200
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{want} not in /metrics")


def test_delivered_deferred_bounced_signed_and_filtered(mailgate_factory, peer):
    every = Receiver()
    only_bounces = Receiver()
    srv = make(mailgate_factory, peer, hook_toml(every.url()) + hook_toml(only_bounces.url(), ["bounced"], "other-secret"))
    srv.start()
    try:
        qid = send(srv, ["ok@example.test", "soft@example.test", "hard@example.test"], "m1")
        events = every.wait_for(3)
        assert len(events) == 3, events
        by = {e["event"]: e for e in events}
        assert set(by) == {"delivered", "deferred", "bounced"}, events
        for e in events:
            assert e["queue_id"] == qid
            assert e["message_id"] == "<m1@outside.test>"
            assert e["sender"] == "app@outside.test"
            assert e["attempt"] == 1
            assert e["mx"], e
            assert e["time"].endswith("Z") and e["time"].startswith(time.strftime("%Y-", time.gmtime()))
        assert by["delivered"]["recipient"] == "ok@example.test"
        assert by["delivered"]["reply"].startswith("250")
        assert by["delivered"]["classification"] is None
        assert by["deferred"]["recipient"] == "soft@example.test"
        assert by["deferred"]["reply"].startswith("451 4.2.2")
        assert by["deferred"]["classification"] == {"kind": "soft", "category": "mailbox_full"}
        assert by["bounced"]["recipient"] == "hard@example.test"
        assert by["bounced"]["reply"].startswith("550 5.1.1")
        assert by["bounced"]["classification"] == {"kind": "hard", "category": "no_such_user"}

        # Every POST is signed with its webhook's secret; another secret fails.
        for p in every.posts:
            assert p["ctype"] == "application/json"
            assert verify(SECRET, p["sig"], p["body"]), p
            assert not verify("wrong-secret", p["sig"], p["body"])
            # A stale timestamp is refused too.
            assert not verify(SECRET, p["sig"], p["body"], tolerance=-1)

        # The filtered webhook gets the bounce only, signed with its own secret.
        only = only_bounces.wait_for(1)
        time.sleep(0.5)
        assert [e["event"] for e in only_bounces.accepted()] == ["bounced"], only
        assert verify("other-secret", only_bounces.posts[0]["sig"], only_bounces.posts[0]["body"])
        assert not verify(SECRET, only_bounces.posts[0]["sig"], only_bounces.posts[0]["body"])

        deadline = time.monotonic() + 5
        while metric(srv, "mailgate_webhook_outbox_events") != 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert metric(srv, "mailgate_webhook_outbox_events") == 0
        assert metric(srv, "mailgate_webhook_events_total", result="queued") == 4
        assert metric(srv, "mailgate_webhook_events_total", result="sent") == 4
        assert metric(srv, "mailgate_webhook_events_total", result="lost") == 0
    finally:
        every.stop()
        only_bounces.stop()


def test_receiver_down_then_up_across_a_restart(mailgate_factory, peer, monkeypatch):
    monkeypatch.setenv("MAILGATE_WEBHOOK_RETRY_MS", "200")
    port = free_port()  # the receiver's, closed for now: POSTs are refused
    srv = make(mailgate_factory, peer, hook_toml(f"http://127.0.0.1:{port}/hook"))
    srv.start()
    qids = [send(srv, ["ok@example.test", "hard@example.test"], f"d{i}") for i in range(4)]
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if metric(srv, "mailgate_webhook_outbox_events") == 8 and metric(srv, "mailgate_webhook_events_total", result="retried") >= 2:
            break
        time.sleep(0.1)
    assert metric(srv, "mailgate_webhook_outbox_events") == 8
    assert metric(srv, "mailgate_webhook_events_total", result="sent") == 0
    # A restart while the receiver is down: the outbox is replayed.
    assert srv.stop() == 0
    srv.start()
    assert "sending what an earlier run left" in srv.log_text()

    receiver = Receiver(port)
    # The first POST of each delivered event fails: if order per message
    # were not kept, its bounce would arrive first.
    refused_once: set[str] = set()

    def fail(e):
        if e["event"] == "delivered" and e["queue_id"] not in refused_once:
            refused_once.add(e["queue_id"])
            return True
        return False

    receiver.fail = fail
    try:
        got = receiver.wait_for(8, timeout=30)
        assert len(got) == 8, got
        for q in qids:
            mine = [(e["event"], e["recipient"]) for e in got if e["queue_id"] == q]
            assert mine == [("delivered", "ok@example.test"), ("bounced", "hard@example.test")], (q, mine)
        assert refused_once == set(qids)
        assert all(verify(SECRET, p["sig"], p["body"]) for p in receiver.posts)
        deadline = time.monotonic() + 5
        while metric(srv, "mailgate_webhook_outbox_events") != 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert metric(srv, "mailgate_webhook_outbox_events") == 0
    finally:
        receiver.stop()


def test_order_per_message_with_a_slow_receiver_and_a_refusal(mailgate_factory, peer, monkeypatch):
    """While the receiver keeps up, events go straight from the writer's
    commit to the sender; a message's second event still waits for its
    first to be answered, and one refused POST (the sender falls back to
    reading the outbox) neither loses nor reorders anything."""
    monkeypatch.setenv("MAILGATE_WEBHOOK_RETRY_MS", "200")
    receiver = Receiver()
    # "delivered" answers slowly: a "bounced" of the same message sent
    # without waiting for it would begin before it ends.
    receiver.delay = lambda e: 0.3 if e["event"] == "delivered" else 0.0
    refused: set[str] = set()

    def fail(e):
        # The third message's "delivered" is refused once.
        if e["event"] == "delivered" and e["queue_id"] == qids[2] and not refused:
            refused.add(e["queue_id"])
            return True
        return False

    receiver.fail = fail
    srv = make(mailgate_factory, peer, hook_toml(receiver.url()))
    srv.start()
    try:
        qids: list[str] = []
        for i in range(6):
            qids.append(send(srv, ["ok@example.test", "hard@example.test"], f"o{i}"))
        got = receiver.wait_for(12, timeout=30)
        assert len(got) == 12, got
        assert refused == {qids[2]}
        for q in qids:
            began = [e["event"] for e in receiver.arrived if e["queue_id"] == q]
            ended = [e["event"] for e in got if e["queue_id"] == q]
            want = ["delivered", "delivered", "bounced"] if q == qids[2] else ["delivered", "bounced"]
            assert began == want, (q, began)
            assert ended == ["delivered", "bounced"], (q, ended)
        # After the outbox drained, later events flow again, in order.
        more = send(srv, ["ok@example.test", "hard@example.test"], "late")
        got = receiver.wait_for(14, timeout=30)
        assert [e["event"] for e in receiver.arrived if e["queue_id"] == more] == ["delivered", "bounced"]
        deadline = time.monotonic() + 5
        while metric(srv, "mailgate_webhook_outbox_events") != 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert metric(srv, "mailgate_webhook_outbox_events") == 0
        assert metric(srv, "mailgate_webhook_events_total", result="sent") == 14
    finally:
        receiver.stop()


def test_rejected_submission(mailgate_factory, mailgate_bin, peer):
    password = "correct horse"
    h = subprocess.run([str(mailgate_bin), "user", "hash"], input=password + "\n", capture_output=True,
                       text=True, timeout=60, start_new_session=True).stdout.strip()
    assert h.startswith("$argon2id$")
    users = f'[[user]]\nname = "app"\npassword = "{h}"\nsend_as = ["*@example.test"]\n'
    receiver = Receiver()
    srv = make(mailgate_factory, peer, hook_toml(receiver.url(), ["rejected", "delivered"]), extra=users)
    srv.start()
    try:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with smtplib.SMTP("127.0.0.1", srv.submission_port, timeout=10) as s:
            s.ehlo("app.test")
            s.starttls(context=ctx)
            s.ehlo("app.test")
            s.login("app", password)
            code, _ = s.mail("boss@elsewhere.test")
            assert code == 553
            s.rset()
            # Allowed envelope, but a From: it may not use: 550 at DATA.
            assert s.mail("app@example.test")[0] == 250
            assert s.rcpt("ok@example.test")[0] == 250
            code, _ = s.data(b"From: ceo@elsewhere.test\r\nMessage-ID: <r1@app.test>\r\nSubject: x\r\n\r\nhi\r\n")
            assert code == 550
        got = receiver.wait_for(2)
        assert [e["event"] for e in got] == ["rejected", "rejected"], got
        # Two refusals of two transactions: nothing orders them (order is
        # kept per message only).
        mail, data = sorted(got, key=lambda e: e["reply"][:3], reverse=True)
        assert mail["sender"] == "boss@elsewhere.test" and mail["recipient"] is None
        assert mail["reply"].startswith("553 5.7.1") and mail["queue_id"] is None
        assert data["sender"] == "app@example.test" and data["recipient"] == "ok@example.test"
        assert data["reply"].startswith("550 5.7.1") and data["message_id"] == "<r1@app.test>"
        assert data["classification"]["kind"] == "hard"
    finally:
        receiver.stop()


def test_config_check_lists_webhook_problems(mailgate_factory, peer):
    srv = make(mailgate_factory, peer,
               '[[webhook]]\nurl = "ftp://hooks.test/x"\nevents = ["opened"]\nsecret = ""\nmax_age = "soon"\n')
    p = srv.cli("config", "check", check=False)
    assert p.returncode != 0
    out = p.stdout + p.stderr
    for key in ["webhook[0].url", "webhook[0].events", "webhook[0].secret", "webhook[0].max_age"]:
        assert key in out, out


def test_https_receiver_with_keep_alive_and_a_response_body(mailgate_factory, peer, tmp_path):
    """An HTTPS receiver (its certificate from a CA that `[delivery]
    ca_file` trusts), named `localhost` (resolved by the system resolver,
    which may answer ::1 first: the receiver listens on 127.0.0.1 only),
    answering HTTP/1.1 `200` with a body, as web frameworks do. Each POST
    arrives signed, and the events of four messages sent one after the
    other share one kept-alive connection: the body is read so the
    connection can carry the next POST."""
    from testca import make_ca

    ca, cert, key = make_ca(tmp_path, ["localhost"])
    conns: list[int] = []
    posts: list[tuple[bytes, str]] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with lock:
                conns.append(self.client_address[1])
                posts.append((body, self.headers.get("Mailgate-Signature", "")))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "12")
            self.end_headers()
            self.wfile.write(b'{"ok": true}')

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    port = httpd.server_address[1]
    srv = make(mailgate_factory, peer, hook_toml(f"https://localhost:{port}/hook", ["delivered"]))
    srv.config_path.write_text(srv.config_path.read_text().replace("[delivery]\n", f'[delivery]\nca_file = "{ca}"\n', 1))
    srv.start()
    try:
        for n in range(4):
            qid = send(srv, ["ok@example.test"], f"tls{n}")
            deadline = time.monotonic() + WAIT
            while time.monotonic() < deadline and len(posts) < n + 1:
                time.sleep(0.05)
            assert len(posts) == n + 1, (n, posts, srv.log_text()[-3000:])
            body, sig = posts[n]
            assert json.loads(body)["queue_id"] == qid
            assert verify(SECRET, sig, body)
        assert len(set(conns)) == 1, f"a connection per POST: {conns}"
        assert metric(srv, "mailgate_webhook_events_total", result="sent") == 4
    finally:
        httpd.shutdown()
        httpd.server_close()
