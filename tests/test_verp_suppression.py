"""VERP, asynchronous bounces, complaints and the suppression list,
black-box through the real binary.

A loopback peer plays the receiving MX (per-recipient replies, every
transaction recorded). Mail submitted from a trusted network for two
recipients leaves as two transactions, each with its own authenticated
`bounces+...` envelope sender; a DSN sent back to one of them at our MX is
consumed, matched to its queue id and recipient, and suppresses that
recipient for the sender's domain, so the next submission to it gets
550 5.1.1 at RCPT. A forged token is refused at RCPT. A synchronous 550
5.1.1 suppresses too; `action = "drop"` accepts and bounces with a DSN;
an ARF complaint is consumed and suppresses; the CLI and the API add,
list and remove entries, and an entry that expires stops refusing.
"""

from __future__ import annotations

import json
import re
import smtplib
import socketserver
import threading
import time
import urllib.request

import pytest

TRUSTED = {"trusted_networks": ["127.0.0.1/32"]}


class Peer(socketserver.ThreadingTCPServer):
    """A receiving MX: answers RCPT per address (`replies`, else 250) and
    records every transaction as (mail_from, [rcpts], data)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, replies: dict[str, str] | None = None):
        self.replies = {k.lower(): v for k, v in (replies or {}).items()}
        self.transactions: list[tuple[str, list[str], bytes]] = []
        self.lock = threading.Lock()
        peer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                w = self.wfile.write
                w(b"220 peer.test ESMTP\r\n")
                mail, rcpts = "", []
                while True:
                    line = self.rfile.readline()
                    if not line:
                        return
                    cmd = line.decode(errors="replace").strip()
                    verb = cmd[:4].upper()
                    if verb in ("EHLO", "HELO"):
                        w(b"250-peer.test\r\n250 PIPELINING\r\n")
                    elif verb == "MAIL":
                        mail, rcpts = re.search(r"<(.*?)>", cmd).group(1), []
                        w(b"250 2.1.0 ok\r\n")
                    elif verb == "RCPT":
                        addr = re.search(r"<(.*?)>", cmd).group(1)
                        reply = peer.replies.get(addr.lower(), "250 2.1.5 ok")
                        if reply.startswith("2"):
                            rcpts.append(addr)
                        w(reply.encode() + b"\r\n")
                    elif verb == "DATA":
                        w(b"354 go\r\n")
                        data = b""
                        while True:
                            l = self.rfile.readline()
                            if not l or l == b".\r\n":
                                break
                            data += l
                        with peer.lock:
                            peer.transactions.append((mail, rcpts, data))
                        w(b"250 2.0.0 queued\r\n")
                    elif verb == "QUIT":
                        w(b"221 bye\r\n")
                        return
                    else:
                        w(b"250 2.0.0 ok\r\n")

        super().__init__(("127.0.0.1", 0), Handler)
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def wait(self, n: int, timeout: float = 20) -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.transactions) >= n:
                    return list(self.transactions)
            time.sleep(0.05)
        raise AssertionError(f"peer got {len(self.transactions)} transactions, expected {n}")


@pytest.fixture
def peer():
    made: list[Peer] = []

    def make(replies=None) -> Peer:
        p = Peer(replies)
        made.append(p)
        return p

    yield make
    for p in made:
        p.shutdown()
        p.server_close()


def start(factory, name, peer_port, suppression: dict | None = None, verp: bool = True, deliver_ours_to_peer=False,
          extra_toml: str = ""):
    extra = f'[[domain]]\nname = "peer.test"\ndkim = false\ndeliver = "smtp://127.0.0.1:{peer_port}"\n' + extra_toml
    if suppression:
        extra += "[suppression]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in suppression.items())
    srv = factory(name, relay=TRUSTED, extra_toml=extra)
    text = srv.config_path.read_text()
    if verp:
        text = text.replace("[delivery]\n", "[delivery]\nverp = true\n", 1)
    if deliver_ours_to_peer:
        text = text.replace('deliver = "smtp://127.0.0.1:9"', f'deliver = "smtp://127.0.0.1:{peer_port}"', 1)
    srv.config_path.write_text(text)
    return srv.start()


def submit(srv, rcpts, sender="alice@example.test", expect_refused=()):
    """Sends one message; returns (queue id or None, {rcpt: (code, text)})."""
    with smtplib.SMTP("127.0.0.1", srv.mx_port, timeout=30) as s:
        s.ehlo("app.example.test")
        s.mail(sender)
        answers = {r: s.rcpt(r) for r in rcpts}
        for r in rcpts:
            want_refused = r in expect_refused
            assert (answers[r][0] >= 500) == want_refused, (r, answers[r])
        if all(a[0] >= 400 for a in answers.values()):
            return None, answers
        code, reply = s.data(b"From: alice@example.test\r\nTo: someone@peer.test\r\nSubject: hi\r\n\r\nhello\r\n")
        assert code == 250, reply
        return re.search(r"queued as (\S+)", reply.decode()).group(1), answers


def api(srv, method, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{srv.http_port}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None)
    req.add_header("Authorization", f"Bearer {srv.admin_token()}")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def wait_for(pred, timeout=15, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def entries(srv, domain="example.test"):
    status, doc = api(srv, "GET", f"/api/v1/suppression?domain={domain}")
    assert status == 200, doc
    return {e["address"]: e for e in doc["entries"]}


def dsn(verp: str, rcpt: str, action="failed", status="5.1.1", diag="550 5.1.1 <{r}>: Recipient address rejected: User unknown") -> bytes:
    diag = diag.format(r=rcpt)
    return (
        f"From: MAILER-DAEMON@peer.test\r\nTo: {verp}\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        "MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\r\n"
        "--B\r\nContent-Type: text/plain\r\n\r\nI'm sorry to have to inform you that your message could not be delivered.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; peer.test\r\n\r\n"
        f"Final-Recipient: rfc822; {rcpt}\r\nAction: {action}\r\nStatus: {status}\r\n"
        f"Remote-MTA: dns; mx.peer.test\r\nDiagnostic-Code: smtp; {diag}\r\n"
        "--B--\r\n"
    ).encode()


def send_raw(srv, mail_from, rcpt, data) -> tuple[int, int]:
    with smtplib.SMTP("127.0.0.1", srv.mx_port, timeout=30) as s:
        s.ehlo("mx.peer.test")
        s.mail(mail_from)
        code, _ = s.rcpt(rcpt)
        if code >= 400:
            return code, 0
        return code, s.data(data)[0]


def test_verp_round_trip_async_bounce_suppresses_and_forgery_is_refused(mailgate_factory, peer):
    p = peer()
    srv = start(mailgate_factory, "verp", p.port)
    qid, _ = submit(srv, ["x@peer.test", "y@peer.test"])
    got = p.wait(2)
    # One transaction per recipient, each with its own VERP sender.
    by_rcpt = {t[1][0]: t[0] for t in got if len(t[1]) == 1}
    assert set(by_rcpt) == {"x@peer.test", "y@peer.test"}, got
    for addr in by_rcpt.values():
        assert re.fullmatch(r"bounces\+[0-9a-f]{20}-\d+-[0-9a-f]{20}@example\.test", addr), addr
        assert qid.lower() in addr
    assert by_rcpt["x@peer.test"] != by_rcpt["y@peer.test"]
    assert got[0][2] == got[1][2], "the content (and any signature) is the same for both"

    # The bounce for y comes back to our MX: consumed and matched.
    verp_y = by_rcpt["y@peer.test"]
    assert send_raw(srv, "", verp_y, dsn(verp_y, "y@peer.test")) == (250, 250)
    wait_for(lambda: re.search(rf"queue_id={qid}.*to=y@peer\.test.*asynchronous bounce|asynchronous bounce.*queue_id={qid}",
                               srv.log_text()), what="the async bounce log line")
    line = next(l for l in srv.log_text().splitlines() if "asynchronous bounce" in l and qid in l)
    assert "y@peer.test" in line and "no_such_user" in line and "hard" in line, line
    e = wait_for(lambda: entries(srv).get("y@peer.test"), what="y suppressed")
    assert e["source"] == "async-bounce" and e["category"] == "no_such_user", e
    assert "x@peer.test" not in entries(srv)
    # Consumed, not delivered: nothing new reached the peer, nothing queued.
    time.sleep(0.5)
    assert len(p.transactions) == 2
    assert wait_for(lambda: srv.queue_list() == [], what="an empty queue")
    status, metrics = srv.http_get("/metrics")
    line = 'mailgate_async_bounces_total{kind="hard",category="no_such_user"}'
    assert [m for m in metrics.splitlines() if m.startswith(line)] == [line + " 1"], metrics[:200]

    # The next submission to y is refused at RCPT, saying why; x still goes.
    _, answers = submit(srv, ["x@peer.test", "y@peer.test"], expect_refused=("y@peer.test",))
    code, text = answers["y@peer.test"]
    assert code == 550 and text.decode().startswith("5.1.1 <y@peer.test> is on the suppression list of example.test: hard bounce (no_such_user) on 20"), text
    # Inbound mail from the internet is not held against the list.
    # (A different sender domain has its own list, empty.)
    submit(srv, ["y@peer.test"], sender="bob@other.test")

    # Forged and tampered tokens are refused at RCPT.
    forged = verp_y[:-len("@example.test") - 4] + ("0000" if not verp_y.split("@")[0].endswith("0000") else "1111") + "@example.test"
    other_index = re.sub(r"-(\d+)-", lambda m: f"-{int(m.group(1)) + 5}-", verp_y, count=1)
    for bad in (forged, other_index, "bounces+00000000000000000000-0-00000000000000000000@example.test"):
        code, _ = send_raw(srv, "", bad, dsn(bad, "y@peer.test"))
        assert code == 550, bad
    with srv.smtp() as d:
        d.ehlo("mx.peer.test")
        d.cmd("MAIL FROM:<>")
        r = d.cmd(f"RCPT TO:<{forged}>")
        assert r.code == 550 and r.enhanced == "5.1.1", r


def test_delayed_dsn_is_soft_and_synchronous_hard_bounce_suppresses(mailgate_factory, peer):
    p = peer({"z@peer.test": "550 5.1.1 <z@peer.test>: Recipient address rejected: User unknown in virtual mailbox table"})
    srv = start(mailgate_factory, "sync", p.port)
    qid, _ = submit(srv, ["z@peer.test", "w@peer.test"])
    # With PIPELINING, z's refused transaction may reach DATA with no
    # recipient: wait for w's.
    verp_w = wait_for(lambda: next((t[0] for t in p.transactions if t[1] == ["w@peer.test"]), None), what="w delivered")
    e = wait_for(lambda: entries(srv).get("z@peer.test"), what="z suppressed after the 550")
    assert e["source"] == "bounce" and e["category"] == "no_such_user", e
    submit(srv, ["z@peer.test"], expect_refused=("z@peer.test",))
    # A delay notice is recorded as soft and suppresses nothing.
    assert send_raw(srv, "", verp_w, dsn(verp_w, "w@peer.test", action="delayed", status="4.2.2",
                                         diag="452 4.2.2 mailbox full")) == (250, 250)
    wait_for(lambda: re.search(r"asynchronous bounce", srv.log_text()), what="the delayed DSN logged")
    line = next(l for l in srv.log_text().splitlines() if "asynchronous bounce" in l)
    assert "soft" in line and "w@peer.test" in line, line
    time.sleep(0.3)
    assert "w@peer.test" not in entries(srv)


def test_drop_action_accepts_and_sends_a_notice(mailgate_factory, peer):
    p = peer()
    srv = start(mailgate_factory, "drop", p.port, suppression={"action": "drop"}, verp=False, deliver_ours_to_peer=True)
    out = srv.cli("suppression", "add", "q@peer.test", "--domain", "example.test", "--reason", "asked us to stop")
    assert "suppressed q@peer.test for example.test" in out.stdout, out.stdout
    qid, answers = submit(srv, ["q@peer.test"])
    assert answers["q@peer.test"][0] == 250
    got = p.wait(1)
    mail_from, rcpts, data = got[0]
    assert (mail_from, rcpts) == ("", ["alice@example.test"]), got
    assert b"suppression list of example.test" in data and b"5.1.1" in data, data[:2000]
    assert not any("q@peer.test" in t[1] for t in got)
    assert "suppressed recipient dropped" in srv.log_text()


ARF = (
    "From: <fbl@isp.example>\r\nTo: <fbl@example.test>\r\nSubject: FW: hi\r\nMIME-Version: 1.0\r\n"
    "Content-Type: multipart/report; report-type=feedback-report; boundary=\"P\"\r\n\r\n"
    "--P\r\nContent-Type: text/plain\r\n\r\nThis is an email abuse report.\r\n"
    "--P\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nUser-Agent: ISP-FBL/1.0\r\nVersion: 1\r\n"
    "Original-Mail-From: <alice@example.test>\r\n\r\n"
    "--P\r\nContent-Type: message/rfc822\r\n\r\nFrom: Alice <alice@example.test>\r\nTo: Carol <carol@isp.example>\r\n"
    "Subject: hi\r\nMessage-ID: <m1@example.test>\r\n\r\nhello\r\n--P--\r\n"
).encode()


def test_complaint_is_consumed_and_suppresses(mailgate_factory, peer):
    p = peer()
    srv = start(mailgate_factory, "arf", p.port, suppression={"complaints": ["fbl@example.test"]}, verp=False)
    assert send_raw(srv, "fbl-sender@isp.example", "fbl@example.test", ARF) == (250, 250)
    e = wait_for(lambda: entries(srv).get("carol@isp.example"), what="carol suppressed")
    assert e["source"] == "complaint" and e["category"] == "complaint", e
    assert wait_for(lambda: srv.queue_list() == [], what="the report consumed, not queued")
    assert "complaint" in srv.log_text()
    _, answers = submit(srv, ["carol@isp.example"], expect_refused=("carol@isp.example",))
    assert "complaint (abuse)" in answers["carol@isp.example"][1].decode()


def test_cli_and_api_manage_the_list_and_entries_expire(mailgate_factory, peer):
    p = peer()
    srv = start(mailgate_factory, "manage", p.port, verp=False)
    srv.cli("suppression", "add", "m+tag@peer.test", "--domain", "example.test", "--reason", "manual test")
    listed = json.loads(srv.cli("suppression", "list", "--json").stdout)["entries"]
    assert [(e["domain"], e["address"], e["source"]) for e in listed] == [("example.test", "m+tag@peer.test", "manual")]
    assert "m+tag@peer.test" in srv.cli("suppression", "list", "--domain", "example.test").stdout
    _, answers = submit(srv, ["m+tag@peer.test"], expect_refused=("m+tag@peer.test",))
    assert "added by an administrator (manual test)" in answers["m+tag@peer.test"][1].decode()
    srv.cli("suppression", "remove", "m+tag@peer.test", "--domain", "example.test")
    assert srv.cli("suppression", "remove", "m+tag@peer.test", check=False).returncode != 0
    submit(srv, ["m+tag@peer.test"])

    status, e = api(srv, "POST", "/api/v1/suppression", {"address": "t@peer.test", "domain": "example.test", "expires_in": 2})
    assert status == 201 and e["expires"], e
    submit(srv, ["t@peer.test"], expect_refused=("t@peer.test",))
    time.sleep(2.5)
    submit(srv, ["t@peer.test"])  # expired: accepted again
    assert "t@peer.test" not in entries(srv)
    assert api(srv, "POST", "/api/v1/suppression", {"address": "nope", "domain": "example.test"})[0] == 400
    status, _ = api(srv, "POST", "/api/v1/suppression", {"address": "u@peer.test", "domain": "example.test"})
    assert status == 201
    assert api(srv, "DELETE", "/api/v1/suppression?address=u%40peer.test")[1] == {"removed": 1}
    assert api(srv, "DELETE", "/api/v1/suppression?address=u%40peer.test")[0] == 404
    # The same token rules as the rest of the admin API.
    assert srv.http_get("/api/v1/suppression", token="wrong")[0] == 401
