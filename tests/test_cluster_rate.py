"""Submission rate limits counted across two mailgate nodes that share one
private PostgreSQL (`[cluster] store`, tests/pgserver.py), black-box over
SMTP on loopback.

- A user with `rate = "6/hour"` submits one message at a time, alternately
  through node A and node B: the 7th and every later RCPT gets
  `451 4.7.0` on whichever node it reaches (6 in total, not 6 per node),
  and both nodes count the refusals in `mailgate_rate_limited_total`.
- PostgreSQL stopped: mail keeps flowing, each node counting its own sends
  only (a user with `rate = "3/hour"` gets 3 through node A, and one more
  through node B), with a warning in each node's log. When PostgreSQL is
  back, the sends made meanwhile are written and the nodes count together
  again: node B, which sent only one itself, refuses the user's next.

The nodes learn of each other's sends through PostgreSQL `NOTIFY` a few
milliseconds after they are admitted; a submission (MAIL, RCPT, DATA and
a short pause between messages, as a mail client's) is slower than that.
"""

from __future__ import annotations

import re
import smtplib
import ssl
import time

import pytest

from conftest import _RUNNING, BIN, MailgateServer
from pgserver import PgServer
from test_dkim import hash_password

SECRET = "cluster-rate-password"
LIMIT = 6
OUTAGE_LIMIT = 3


def tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Submitter:
    """An authenticated submission session on one node."""

    def __init__(self, srv: MailgateServer, user: str):
        self.s = smtplib.SMTP("127.0.0.1", srv.submission_port, timeout=15)
        self.s.ehlo("client.test")
        self.s.starttls(context=tls())
        self.s.ehlo("client.test")
        self.s.login(user, SECRET)
        self.user = user

    def submit(self, tag: str) -> tuple[int, str]:
        """One message to one recipient; the RCPT reply."""
        sender = f"{self.user}@example.test"
        code, msg = self.s.mail(sender)
        assert code == 250, (code, msg)
        code, msg = self.s.rcpt("bob@far.example")
        if code == 250:
            body = (f"From: {sender}\r\nTo: bob@far.example\r\nSubject: {tag}\r\n"
                    f"Date: Sun, 06 Dec 2026 21:00:00 +0000\r\nMessage-ID: <{tag}@example.test>\r\n\r\n{tag}\r\n")
            dcode, dmsg = self.s.data(body.encode())
            assert dcode == 250, (dcode, dmsg)
        else:
            self.s.rset()
        return code, msg.decode()

    def close(self) -> None:
        try:
            self.s.quit()
        except (smtplib.SMTPException, OSError):
            pass


def metric(srv: MailgateServer) -> float:
    status, text = srv.http_get("/metrics", token="")
    assert status == 200
    m = re.search(r'^mailgate_rate_limited_total\{scope="user"\} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    assert BIN.exists(), f"{BIN} not built (cargo build --release)"
    h = hash_password(BIN, SECRET)
    users = "".join(f'[[user]]\nname = "{name}"\npassword = "{h}"\nsend_as = ["*@example.test"]\nrate = "{rate}"\n'
                    for name, rate in (("app", f"{LIMIT}/hour"), ("other", f"{OUTAGE_LIMIT}/hour")))
    pg = PgServer().start()
    nodes = []
    try:
        for name in ("node-a", "node-b"):
            toml = users + f'[cluster]\nstore = "{pg.url}"\nnode_id = "{name}"\n'
            nodes.append(MailgateServer(BIN, tmp_path_factory.mktemp(name), extra_toml=toml).start())
        yield pg, nodes[0], nodes[1]
    finally:
        codes = []
        for srv in nodes:
            codes.append(srv.stop())
            while srv in _RUNNING:
                _RUNNING.remove(srv)
        pg.stop("immediate")
    assert codes == [0, 0], f"nodes exited {codes} after SIGTERM:\n" + "\n".join(n.log_text()[-3000:] for n in nodes)


def alternate(a: Submitter, b: Submitter, n: int, tag: str) -> list[tuple[str, int, str]]:
    out = []
    for i in range(n):
        node, s = (("A", a) if i % 2 == 0 else ("B", b))
        code, text = s.submit(f"{tag}-{i}")
        out.append((node, code, text))
        time.sleep(0.05)
    return out


def test_a_users_limit_counts_both_nodes(cluster):
    pg, a, b = cluster
    before = metric(a) + metric(b)
    sa, sb = Submitter(a, "app"), Submitter(b, "app")
    try:
        got = alternate(sa, sb, LIMIT + 4, "shared")
    finally:
        sa.close()
        sb.close()
    codes = [code for _, code, _ in got]
    assert codes == [250] * LIMIT + [451] * 4, got
    for node, code, text in got[LIMIT:]:
        assert text.startswith("4.7.0") and "rate limit for user app" in text, (node, text)
    assert {node for node, _, _ in got[LIMIT:]} == {"A", "B"}, "both nodes refuse"
    assert metric(a) + metric(b) - before == 4
    assert metric(a) > 0 and metric(b) > 0


def test_without_postgresql_each_node_counts_alone_and_catches_up_after(cluster):
    pg, a, b = cluster
    pg.stop()
    try:
        # The listeners notice within a fraction of a second.
        time.sleep(1.0)
        s = Submitter(a, "other")
        try:
            got = [s.submit(f"out-a-{i}")[0] for i in range(OUTAGE_LIMIT + 1)]
        finally:
            s.close()
        assert got == [250] * OUTAGE_LIMIT + [451], got
        s = Submitter(b, "other")
        try:
            code, text = s.submit("out-b")
        finally:
            s.close()
        assert code == 250, f"node B counts its own sends only: {text}"
        for srv in (a, b):
            assert "rate limits count this node's sends only" in srv.log_text(), srv.log_text()[-3000:]
    finally:
        pg.start()
    # Back: the 4 sends made meanwhile are written, and both nodes see them.
    deadline = time.monotonic() + 20
    while "rate limits are counted across nodes again" not in b.log_text() or \
            "rate limits are counted across nodes again" not in a.log_text():
        assert time.monotonic() < deadline, b.log_text()[-3000:]
        time.sleep(0.2)
    total = 0
    while time.monotonic() < deadline:
        total = int(pg.sql("SELECT coalesce(sum(count), 0) FROM cluster_counters WHERE key = 'rate:user:other'") or 0)
        if total == OUTAGE_LIMIT + 1:
            break
        time.sleep(0.2)
    assert total == OUTAGE_LIMIT + 1, "the sends made during the outage were written"
    time.sleep(0.5)
    s = Submitter(b, "other")
    try:
        code, text = s.submit("after")
    finally:
        s.close()
    assert code == 451 and text.startswith("4.7.0"), f"node B counts node A's sends again: {text}"
