"""TLS and AUTH interop with a real Postfix, both directions, on loopback.

- Postfix -> mailgate submission: a private Postfix instance relays through
  `relayhost = [127.0.0.1]:<mailgate submission port>` with
  `smtp_tls_security_level = encrypt` and SASL (Cyrus client, Debian's
  `libsasl2-modules` provides PLAIN/LOGIN); mailgate delivers the message to
  a Python sink. The sink's copy must carry mailgate's Received header with
  `ESMTPSA` and the TLS version.
- mailgate -> Postfix: mailgate's `[[domain]] deliver` points at a Postfix
  smtpd with a certificate made by `openssl req -x509` and
  `smtpd_tls_security_level = may`; Postfix's Received header and maillog
  must show the message arrived over TLS.

Uses tests/postfix.py (private instances, `postfix -c DIR`).
"""

from __future__ import annotations

import email
import email.policy
import glob
import os
import re
import shutil
import smtplib
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from helpers import Dialogue, queue_id
from postfix import (
    FAST_DELIVERY,
    PostfixInstance,
    PySink,
    domain_toml,
    postfix_ids,
    require_postfix,
    scratch_dir,
    set_delivery,
)

MG_HOST = "mx.example.test"
PF_HOST = "postfix.interop.test"
SECRET = "interop-secret-7"  # no spaces: static: maps split on whitespace


def require_sasl_client_plugins() -> None:
    """Postfix's Cyrus SASL client needs PLAIN/LOGIN plugins
    (Debian `libsasl2-modules`)."""
    found = glob.glob("/usr/lib/*/sasl2/libplain.so*") + glob.glob("/usr/lib/sasl2/libplain.so*")
    if found:
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    p = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                        "libsasl2-modules"], env=env, capture_output=True, text=True, timeout=600)
    found = glob.glob("/usr/lib/*/sasl2/libplain.so*")
    if not found:
        pytest.skip(f"libsasl2-modules (SASL PLAIN plugin) is missing and could not be "
                    f"installed: {p.stderr.strip()[-300:]}")


def hash_password(binary: Path, password: str) -> str:
    p = subprocess.run([str(binary), "user", "hash"], input=password + "\n",
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.startswith("$argon2id$"), (p.stdout, p.stderr)
    return p.stdout.strip()


def make_cert(directory: Path, cn: str) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if not openssl:
        pytest.skip("openssl CLI is not installed")
    cert, key = directory / "pf-cert.pem", directory / "pf-key.pem"
    p = subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
         "-subj", f"/CN={cn}", "-addext", f"subjectAltName=DNS:{cn}"],
        capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    os.chmod(cert, 0o644)
    os.chmod(key, 0o600)
    return cert, key


@pytest.fixture
def postfix_factory(request):
    require_postfix()
    made: list[PostfixInstance] = []
    failed_before = request.session.testsfailed

    def make(name: str, main: dict | None = None, setup=None) -> PostfixInstance:
        base = scratch_dir(f"mailgate-{name}-")
        if setup:
            main = dict(main or {}, **setup(base))
        pf = PostfixInstance(base, name=name, main=main, hostname=PF_HOST)
        made.append(pf)
        return pf

    yield make

    failed = request.session.testsfailed > failed_before
    for pf in made:
        pf.stop()
    for pf in made:
        if failed:
            print(pf.diag())
            print(f"(kept {pf.base})")
        else:
            shutil.rmtree(pf.base, ignore_errors=True)


@pytest.fixture
def pysink():
    sink = PySink().start()
    yield sink
    sink.stop()


def received_headers(msg) -> list[str]:
    return [re.sub(r"\s+", " ", str(h)) for h in msg.get_all("Received", [])]


def wait_queue_empty(srv, timeout: float = 30.0, extra=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while True:
        q = srv.queue_list()
        if not q:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"mailgate queue not empty after {timeout}s: {q}{extra()}")
        time.sleep(0.2)


# ---------------------------------------------------------------------------


def test_postfix_submits_over_starttls_with_auth(mailgate_bin, mailgate_factory, postfix_factory,
                                                 pysink):
    require_sasl_client_plugins()
    user_toml = (f'[[user]]\nname = "relayuser"\npassword = "{hash_password(mailgate_bin, SECRET)}"\n'
                 'send_as = ["*@app.example.test"]\n')
    srv = mailgate_factory("mg", extra_toml=user_toml + domain_toml("sink.test", pysink.url()))
    set_delivery(srv, **FAST_DELIVERY)
    srv.start()

    pf = postfix_factory("pf-submit", main={
        "relayhost": f"[127.0.0.1]:{srv.submission_port}",
        "smtp_sasl_auth_enable": "yes",
        "smtp_sasl_password_maps": f"static:relayuser:{SECRET}",
        "smtp_sasl_security_options": "noanonymous",
        "smtp_sasl_tls_security_options": "noanonymous",
        "smtp_tls_security_level": "encrypt",
        "smtp_tls_loglevel": "1",
    }).start()

    marker = uuid.uuid4().hex
    sender = "billing@app.example.test"
    msg = (f"From: Billing <{sender}>\r\nTo: <dest@sink.test>\r\n"
           f"Subject: submit {marker}\r\nMessage-ID: <{marker}@app.example.test>\r\n\r\n"
           f"body {marker}\r\n").encode()
    with smtplib.SMTP("127.0.0.1", pf.port, local_hostname="app.example.test", timeout=15) as s:
        s.ehlo()
        refused = s.sendmail(sender, ["dest@sink.test"], msg)
        assert refused == {}

    diag = lambda: pf.diag() + "\n--- mailgate log ---\n" + srv.log_text()[-4000:]  # noqa: E731
    got = pysink.wait_for(lambda m: marker.encode() in m["content"], timeout=40)
    assert len(got) == 1, f"sink got {len(got)} copies{diag()}"
    m = got[0]
    assert m["sender"].startswith(f"<{sender}>"), m["sender"]
    parsed = email.message_from_bytes(m["content"], policy=email.policy.compat32)
    rec = received_headers(parsed)
    # Newest first: mailgate's (from Postfix), then Postfix's own.
    assert len(rec) >= 2, rec
    assert f"by {MG_HOST} (mailgate)" in rec[0], rec
    assert PF_HOST in rec[0].split(" by ")[0], f"mailgate did not record Postfix's EHLO: {rec}"
    assert re.search(r"\bwith ESMTPSA\b", rec[0]), f"mailgate's Received lacks ESMTPSA: {rec[0]}"
    assert re.search(r"version=TLSv1\.[23] cipher=\S+", rec[0]), rec[0]
    assert f"by {PF_HOST} (Postfix)" in rec[1], rec

    # Postfix saw TLS and authenticated: it logs the TLS connection and a
    # successful relay to mailgate's submission port.
    pf.wait_log(rf"TLS connection established to 127\.0\.0\.1\[127\.0\.0\.1\]:{srv.submission_port}")
    pf.wait_log(rf"relay=127\.0\.0\.1\[127\.0\.0\.1\]:{srv.submission_port},.*status=sent")
    assert re.search(r"authenticated.*relayuser|relayuser.*authenticated", srv.log_text()), diag()
    wait_queue_empty(srv, extra=diag)


def test_postfix_with_wrong_password_is_refused(mailgate_bin, mailgate_factory, postfix_factory,
                                                pysink):
    """The same set-up with a wrong password: Postfix must not get the mail
    through; it keeps it deferred with mailgate's 535 in its log."""
    require_sasl_client_plugins()
    user_toml = (f'[[user]]\nname = "relayuser"\npassword = "{hash_password(mailgate_bin, SECRET)}"\n'
                 'send_as = ["*@app.example.test"]\n')
    srv = mailgate_factory("mg", extra_toml=user_toml + domain_toml("sink.test", pysink.url()))
    srv.start()
    pf = postfix_factory("pf-badpw", main={
        "relayhost": f"[127.0.0.1]:{srv.submission_port}",
        "smtp_sasl_auth_enable": "yes",
        "smtp_sasl_password_maps": "static:relayuser:not-the-password",
        "smtp_sasl_security_options": "noanonymous",
        "smtp_sasl_tls_security_options": "noanonymous",
        "smtp_tls_security_level": "encrypt",
    }).start()
    marker = uuid.uuid4().hex
    with smtplib.SMTP("127.0.0.1", pf.port, local_hostname="app.example.test", timeout=15) as s:
        s.sendmail("billing@app.example.test", ["dest@sink.test"],
                   f"From: <billing@app.example.test>\r\nSubject: {marker}\r\n\r\nx\r\n".encode())
    pf.wait_log(r"SASL authentication failed.*535 5\.7\.8", timeout=30)
    time.sleep(1)
    assert pysink.wait_for(lambda m: marker.encode() in m["content"], timeout=0) == []
    assert srv.queue_list() == []


def test_mailgate_delivers_to_postfix_over_tls(mailgate_factory, postfix_factory):
    uid, gid = postfix_ids()

    def setup(base):
        box = base / "vmail"
        box.mkdir()
        os.chown(box, uid, gid)
        cert, key = make_cert(base, PF_HOST)
        return {
            "virtual_mailbox_domains": "pf.test",
            "virtual_mailbox_base": str(box),
            "virtual_mailbox_maps": "static:box/",
            "virtual_uid_maps": f"static:{uid}",
            "virtual_gid_maps": f"static:{gid}",
            "smtpd_tls_cert_file": str(cert),
            "smtpd_tls_key_file": str(key),
            "smtpd_tls_security_level": "may",
            "smtpd_tls_loglevel": "1",
            "smtpd_tls_received_header": "yes",
        }

    pf = postfix_factory("pf-tls-dest", setup=setup).start()
    maildir = pf.base / "vmail" / "box" / "new"

    srv = mailgate_factory("mg", extra_toml=domain_toml("pf.test", f"smtp://127.0.0.1:{pf.port}"))
    set_delivery(srv, **FAST_DELIVERY)
    srv.start()

    marker = uuid.uuid4().hex
    body = (f"From: <alice@sender.test>\r\nTo: <bob@pf.test>\r\nSubject: tls {marker}\r\n"
            f"Message-ID: <{marker}@sender.test>\r\n\r\nover TLS {marker}\r\n").encode()
    with Dialogue(srv.mx_port) as d:
        d.ehlo("client.sender.test")
        r = d.transaction(sender="alice@sender.test", rcpts=("bob@pf.test",), body=body)
        assert r.code == 250, r
        qid = queue_id(r)
        d.cmd("QUIT")

    diag = lambda: pf.diag() + "\n--- mailgate log ---\n" + srv.log_text()[-4000:]  # noqa: E731
    deadline = time.monotonic() + 30
    files = []
    while time.monotonic() < deadline:
        files = sorted(maildir.glob("*")) if maildir.is_dir() else []
        if files:
            break
        time.sleep(0.2)
    assert len(files) == 1, f"Postfix Maildir holds {len(files)} messages, expected 1{diag()}"
    msg = email.message_from_bytes(files[0].read_bytes(), policy=email.policy.compat32)
    assert marker in msg["Subject"]
    rec = received_headers(msg)
    assert f"by {PF_HOST} (Postfix)" in rec[0], rec
    assert f"from {MG_HOST}" in rec[0], rec
    assert re.search(r"\bwith ESMTPS\b", rec[0]), f"Postfix did not receive over TLS: {rec[0]}"
    assert re.search(r"using TLSv1\.[23] with cipher", rec[0]), rec[0]
    assert f"by {MG_HOST} (mailgate)" in rec[1], rec
    pf.wait_log(r"TLS connection established from \S*\[127\.0\.0\.1\]: TLSv1\.[23] ")
    wait_queue_empty(srv, extra=diag)
    assert qid
