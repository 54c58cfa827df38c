"""Submission rate limits against the real binary: a user's limit is hit
(451 4.7.0 naming it, the metric, one log line per window) and resets
after the window; a burst lets that many through at once and then the
steady rate; a domain's limit counts every user sending as it; the
per-network limit counts clients by their network (two loopback
networks, /16 each). Recipients are what is counted."""

from __future__ import annotations

import re
import smtplib
import ssl
import time

import pytest

from conftest import BIN, MailgateServer
from test_dkim import hash_password

SECRET = "rate-limit-test-password"
FAR = "far.example"


def tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Client:
    """One authenticated submission session."""

    def __init__(self, srv: MailgateServer, user: str, source: str = "127.0.0.1"):
        self.s = smtplib.SMTP("127.0.0.1", srv.submission_port, timeout=15, source_address=(source, 0))
        self.s.ehlo("client.test")
        self.s.starttls(context=tls())
        self.s.ehlo("client.test")
        self.s.login(user, SECRET)

    def rcpts(self, sender: str, n: int, start: int = 0) -> list[tuple[int, str]]:
        """MAIL, then n RCPTs; their replies; RSET after."""
        code, msg = self.s.mail(sender)
        assert code == 250, (code, msg)
        out = [self.s.rcpt(f"r{start + i}@{FAR}") for i in range(n)]
        self.s.rset()
        return [(c, m.decode()) for c, m in out]

    def close(self):
        try:
            self.s.quit()
        except (smtplib.SMTPException, OSError):
            pass


def users_toml(h: str) -> str:
    out = ""
    for name, extra in (("app1", 'rate = "5/3s"\n'), ("app2", 'rate = "10/3s"\nburst = 2\n'), ("app3", ""), ("app4", "")):
        out += f'[[user]]\nname = "{name}"\npassword = "{h}"\nsend_as = ["*@example.test", "*@limited.test"]\n{extra}'
    return out + '[[domain]]\nname = "limited.test"\ndkim = false\nrate = "3/3s"\ndeliver = "smtp://127.0.0.1:9"\n'


@pytest.fixture(scope="module")
def password_hash():
    return hash_password(BIN, SECRET)


@pytest.fixture(scope="module")
def srv(tmp_path_factory, password_hash):
    s = MailgateServer(BIN, tmp_path_factory.mktemp("rate") / "srv", extra_toml=users_toml(password_hash))
    s.start()
    yield s
    s.stop()


def metric(srv: MailgateServer, scope: str) -> float:
    status, text = srv.http_get("/metrics", token="")
    assert status == 200
    m = re.search(rf'^mailgate_rate_limited_total\{{scope="{scope}"\}} (\S+)$', text, re.M)
    assert m, text[:2000]
    return float(m.group(1))


def test_user_limit_is_hit_then_resets_after_the_window(srv):
    before = metric(srv, "user")
    c = Client(srv, "app1")
    try:
        replies = c.rcpts("app1@example.test", 8)
        assert [code for code, _ in replies] == [250] * 5 + [451] * 3, replies
        code, text = replies[5]
        assert text.startswith("4.7.0 rate limit for user app1: 5/3s reached, retry in "), text
        assert int(re.search(r"retry in (\d+) s", text).group(1)) in (1, 2, 3), text
        assert metric(srv, "user") == before + 3
        # A message to many recipients counts each: another transaction is
        # refused at its first RCPT too.
        assert c.rcpts("app1@example.test", 1)[0][0] == 451
        time.sleep(3.2)
        replies = c.rcpts("app1@example.test", 6, start=100)
        assert [code for code, _ in replies] == [250] * 5 + [451], replies
    finally:
        c.close()
    # One log line per user per window, not one per refusal (6 refusals in
    # two windows).
    lines = [l for l in srv.log_text().splitlines() if "rate limit reached" in l and "app1" in l]
    assert len(lines) == 2, lines


def test_burst_allows_that_many_at_once_then_the_steady_rate(srv):
    c = Client(srv, "app2")
    try:
        # 10 per 3 s is one per 0.3 s; a burst of 2 lets two go at once.
        replies = c.rcpts("app2@example.test", 3)
        assert [code for code, _ in replies] == [250, 250, 451], replies
        assert "rate limit for user app2: 10/3s reached, retry in 1 s" in replies[2][1]
        time.sleep(0.35)
        assert [code for code, _ in c.rcpts("app2@example.test", 2, start=10)] == [250, 451]
    finally:
        c.close()


def test_domain_limit_counts_every_sender_of_the_domain(srv):
    before = metric(srv, "domain")
    a, b = Client(srv, "app3"), Client(srv, "app4")
    try:
        assert [code for code, _ in a.rcpts("x@limited.test", 2)] == [250, 250]
        # Another user, another address of the same domain: same counter.
        replies = b.rcpts("y@limited.test", 2, start=10)
        assert [code for code, _ in replies[:1]] == [250], replies
        assert replies[1][0] == 451 and "rate limit for domain limited.test: 3/3s" in replies[1][1], replies
        # The same user with a sender of another domain is not limited by it.
        assert [code for code, _ in a.rcpts("x@example.test", 3, start=20)] == [250, 250, 250]
        assert metric(srv, "domain") == before + 1
    finally:
        a.close()
        b.close()


def test_network_limit_counts_per_client_network(tmp_path_factory, password_hash):
    srv = MailgateServer(
        BIN, tmp_path_factory.mktemp("rate-net") / "srv",
        limits={"submission_rate_per_network": "4/3s", "submission_network_prefix_v4": 16},
        extra_toml=users_toml(password_hash),
    )
    srv.start()
    try:
        a = Client(srv, "app3", source="127.0.0.1")
        b = Client(srv, "app3", source="127.0.3.1")
        c = Client(srv, "app3", source="127.1.0.1")
        replies = a.rcpts("z@example.test", 3) + b.rcpts("z@example.test", 2, start=10)
        assert [code for code, _ in replies] == [250, 250, 250, 250, 451], replies
        assert "rate limit for network 127.0.0.0/16: 4/3s reached" in replies[4][1], replies
        # Another /16: its own counter.
        assert [code for code, _ in c.rcpts("z@example.test", 4, start=20)] == [250] * 4
        assert metric(srv, "network") == 1
        for x in (a, b, c):
            x.close()
    finally:
        srv.stop()
