"""Long lines from applications: HTML with lines of 20,000 characters,
submitted with AUTH on `submission` (STARTTLS, smtplib), is accepted,
re-encoded (quoted-printable) before it is signed, and delivered with every
line at most 998 octets; its HTML part decodes to exactly what was sent and
both DKIM signatures (Ed25519, RSA) pass with dkimpy, against the key
records served by a loopback DNS server.

Also: the same message on `mx` from an untrusted client gets 550 5.6.0;
from a trusted network it is accepted and re-encoded; a line longer than
`[limits] max_submission_line` (default 64 KiB) is refused on submission.

PyPI: dkimpy, pynacl, dnspython, dnslib (as test_dkim.py).
"""

from __future__ import annotations

import email
import email.policy
import smtplib
import ssl
import time

import pytest

import test_dkim as td
from helpers import Dialogue
from postfix import PySink

OURS, FAR = td.OURS, td.FAR


@pytest.fixture(scope="module")
def sink():
    s = PySink().start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def submission_env(mailgate_bin, tmp_path_factory, sink):
    """No trusted networks: `mx` clients are untrusted; `app` may submit."""
    h = td.hash_password(mailgate_bin, td.SECRET)
    users = f'[[user]]\nname = "app"\npassword = "{h}"\nsend_as = ["*@{OURS}"]\n'
    env = td.start_env(tmp_path_factory, "submission", td.domains_toml(sink) + users, None, sink)
    yield env
    td.stop_env(env)


@pytest.fixture(scope="module")
def relay_env(mailgate_bin, tmp_path_factory, sink):
    """127.0.0.0/8 is a trusted network: its mail on `mx` is outbound."""
    env = td.start_env(tmp_path_factory, "relay", td.domains_toml(sink),
                       {"trusted_networks": ["127.0.0.0/8"]}, sink)
    yield env
    td.stop_env(env)


def html_body(marker: str, line: int = 20_000, utf8: bool = True) -> bytes:
    """HTML whose lines are `line` characters long, with `=` signs,
    whitespace at line ends and (with `utf8`) UTF-8, all of which
    quoted-printable must carry. Without `utf8`, characters are octets."""
    cell = '<td class="c" style="width:10px">Grüße = 1 </td>' if utf8 else '<td class="c">x = 1 </td>'
    rows = []
    for i in range(3):
        text = f"<tr id=r{i}>" + cell * (line // len(cell) + 1)
        rows.append(text[:line - 1] + " ")           # ends in a space
    return (f"<html><body><!-- {marker} --><table>\r\n".encode()
            + "\r\n".join(rows).encode() + b"\r\n</table></body></html>")


PLAIN = b"The same, as text: Gr\xc3\xbc\xc3\x9fe = 1.\r\nSecond line."


def message(marker: str, html: bytes) -> bytes:
    head = (
        f"From: App <app@{OURS}>\r\n"
        f"To: Bob <bob@{FAR}>\r\n"
        f"Subject: long lines {marker}\r\n"
        "Date: Mon, 23 Nov 2026 12:00:00 +0000\r\n"
        f"Message-ID: <{marker}@{OURS}>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/alternative; boundary="=_b1"\r\n'
        "\r\n"
        "--=_b1\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "\r\n"
    ).encode()
    return (head + PLAIN + b"\r\n--=_b1\r\n"
            b"Content-Type: text/html; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: 8bit\r\n\r\n"
            + html + b"\r\n--=_b1--\r\n")


def tls_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def submit(env: td.Env, msg: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", env.srv.submission_port, timeout=30) as s:
        s.ehlo("app.test")
        s.starttls(context=tls_context())
        s.ehlo("app.test")
        s.login("app", td.SECRET)
        refused = s.sendmail(f"app@{OURS}", [f"bob@{FAR}"], msg)
        assert refused == {}, refused


def assert_reencoded_and_signed(env: td.Env, content: bytes, html: bytes) -> None:
    longest = max(len(line) for line in content.split(b"\r\n"))
    assert longest <= 998, f"delivered with a line of {longest} octets"
    assert b"\n" not in content.replace(b"\r\n", b""), "bare LF in the delivered message"
    parsed = email.message_from_bytes(content, policy=email.policy.default)
    parts = {p.get_content_type(): p for p in parsed.walk() if not p.is_multipart()}
    assert set(parts) == {"text/plain", "text/html"}, list(parts)
    h = parts["text/html"]
    assert h["Content-Transfer-Encoding"] == "quoted-printable", h.items()
    assert h.get_content_charset() == "utf-8"
    assert h.get_payload(decode=True) == html, "the HTML part does not decode to what was sent"
    assert all(len(line) <= 76 for line in h.get_payload().splitlines()), "QP lines over 76"
    # The short text part is untouched, byte for byte.
    assert (b"Content-Transfer-Encoding: 8bit\r\n\r\n" + PLAIN + b"\r\n--=_b1\r\n") in content
    sigs = td.signatures(content)
    assert sorted(s.get("a") for s in sigs) == ["ed25519-sha256", "rsa-sha256"], sigs
    ok, why = td.verify_each(env, content)
    assert ok == td.BOTH_VALID, why
    assert td.mailgate_verify(env, content) == td.OWN_PASS


def test_authenticated_submission_with_20000_character_lines(submission_env):
    env = submission_env
    html = html_body("sub-long")
    msg = message("sub-long", html)
    assert max(len(line) for line in msg.split(b"\r\n")) >= 20_000 - 1
    submit(env, msg)
    content = env.delivered("sub-long")
    assert_reencoded_and_signed(env, content, html)
    assert "re-encoded lines over 998 octets" in env.srv.log_text()


def test_untrusted_mx_refuses_the_same_message(submission_env):
    env = submission_env
    msg = message("mx-long", html_body("mx-long"))
    with Dialogue(env.srv.mx_port) as d:
        assert d.ehlo("outside.test").code == 250
        r = d.transaction(sender="x@outside.test", rcpts=(f"bob@{FAR}",), body=td.stuff(msg))
        assert r.is_(550, "5.6.0"), r
        assert "1000 octets" in str(r), r
        # The session goes on: a normal message is still accepted.
        r = d.transaction(sender="x@outside.test", rcpts=(f"bob@{FAR}",),
                          body=td.stuff(message("mx-short", html_body("mx-short", line=900))))
        assert r.code == 250, r


def test_trusted_network_on_mx_is_accepted_and_reencoded(relay_env):
    env = relay_env
    html = html_body("relay-long")
    with Dialogue(env.srv.mx_port) as d:
        assert d.ehlo("app.test").code == 250
        r = d.transaction(sender=f"app@{OURS}", rcpts=(f"bob@{FAR}",),
                          body=td.stuff(message("relay-long", html)))
        assert r.code == 250, r
    assert_reencoded_and_signed(env, env.delivered("relay-long"), html)


def test_line_over_max_submission_line_is_refused(submission_env):
    env = submission_env
    # Default [limits] max_submission_line: 65536 octets including CRLF.
    msg = message("too-long", html_body("too-long", line=65_535, utf8=False))
    with smtplib.SMTP("127.0.0.1", env.srv.submission_port, timeout=30) as s:
        s.ehlo("app.test")
        s.starttls(context=tls_context())
        s.ehlo("app.test")
        s.login("app", td.SECRET)
        with pytest.raises(smtplib.SMTPDataError) as e:
            s.sendmail(f"app@{OURS}", [f"bob@{FAR}"], msg)
        assert e.value.smtp_code == 550, e.value
        assert e.value.smtp_error.startswith(b"5.6.0"), e.value
        assert b"65536 octets" in e.value.smtp_error, e.value
        # 65,534 characters + CRLF is the longest line accepted.
        html = html_body("just-fits", line=65_534, utf8=False)
        refused = s.sendmail(f"app@{OURS}", [f"bob@{FAR}"], message("just-fits", html))
        assert refused == {}, refused
    assert_reencoded_and_signed(env, env.delivered("just-fits"), html)
    time.sleep(0.2)
    assert not env.sink.wait_for(lambda m: b"too-long" in m["content"], 0.5)
