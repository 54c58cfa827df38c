"""Interop with a real Postfix, in both directions, on loopback.

Each test starts a private Postfix instance in its own directory
(`postfix -c DIR`, see tests/postfix.py)
and a mailgate server from the shared conftest, and stops both afterwards.

- mailgate -> Postfix: mailgate's `[[domain]] deliver` points at Postfix's
  smtpd; Postfix delivers into a virtual Maildir it owns, which the test
  reads back.
- Postfix -> mailgate: mail injected into Postfix for a domain whose
  transport is mailgate's mx port; mailgate delivers it to a Python sink.
"""

from __future__ import annotations

import email
import os
import email.policy
import re
import shutil
import smtplib
import subprocess
import time
import uuid

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
    tool,
)

MG_HOST = "mx.example.test"      # conftest's default mailgate hostname
PF_HOST = "postfix.interop.test"


@pytest.fixture
def postfix_factory(request):
    """Builds private Postfix instances (not started). On teardown every
    instance is stopped and, if the test failed, its maillog is printed."""
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


def wait_queue_empty(srv, timeout: float = 30.0, extra: str = "") -> None:
    deadline = time.monotonic() + timeout
    while True:
        q = srv.queue_list()
        if not q:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"mailgate queue not empty after {timeout}s: {q}{extra}")
        time.sleep(0.2)


def received_headers(msg) -> list[str]:
    return [re.sub(r"\s+", " ", str(h)) for h in msg.get_all("Received", [])]


def body_lines(marker: str) -> list[str]:
    """A body that exercises transparency (leading dots), a long line and
    8-bit text."""
    return [
        f"Interop body marker {marker}",
        ".a line starting with a dot",
        "..two dots",
        ".",
        "x" * 950,
        "caf\u00e9 \u2013 8-bit UTF-8 text",
        "",
        "From the last line (an mbox-sensitive line)",
        f"end {marker}",
    ]


def build_message(sender: str, rcpts: list[str], subject: str, lines: list[str],
                  msgid: str) -> bytes:
    head = [
        f"From: <{sender}>",
        f"To: {', '.join('<' + r + '>' for r in rcpts)}",
        f"Subject: {subject}",
        f"Message-ID: <{msgid}>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
    ]
    return ("\r\n".join(head) + "\r\n\r\n" + "\r\n".join(lines) + "\r\n").encode()


def dot_stuff(data: bytes) -> bytes:
    return b"\r\n".join(b"." + l if l.startswith(b".") else l for l in data.split(b"\r\n"))


def check_body(raw: bytes, lines: list[str], where: str) -> None:
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    payload = msg.get_payload(decode=True).decode("utf-8")
    got = payload.replace("\r\n", "\n").split("\n")
    if got and got[-1] == "":
        got = got[:-1]
    assert got == lines, f"body changed on the way to {where}:\n{got!r}\n!=\n{lines!r}"


# ---------------------------------------------------------------------------


def test_mailgate_delivers_to_postfix(mailgate_factory, postfix_factory):
    uid, gid = postfix_ids()

    def vmail(base):
        box = base / "vmail"
        box.mkdir()
        os.chown(box, uid, gid)
        return {
            "virtual_mailbox_domains": "pf.test",
            "virtual_mailbox_base": str(box),
            "virtual_mailbox_maps": "static:box/",
            "virtual_uid_maps": f"static:{uid}",
            "virtual_gid_maps": f"static:{gid}",
        }

    pf = postfix_factory("pf-dest", setup=vmail).start()
    maildir = pf.base / "vmail" / "box" / "new"

    srv = mailgate_factory("mg", extra_toml=domain_toml("pf.test", f"smtp://127.0.0.1:{pf.port}"))
    set_delivery(srv, **FAST_DELIVERY)
    srv.start()

    marker = uuid.uuid4().hex
    subject = f"mailgate to postfix {marker}"
    rcpts = ["bob@pf.test", "carol@pf.test"]
    lines = body_lines(marker)
    raw = build_message("alice@sender.test", rcpts, subject, lines, f"{marker}@sender.test")
    with Dialogue(srv.mx_port) as d:
        d.ehlo("client.sender.test")
        r = d.transaction(sender="alice@sender.test", rcpts=tuple(rcpts),
                          body=dot_stuff(raw), mail_params="BODY=8BITMIME")
        assert r.code == 250, r
        qid = queue_id(r)
        d.cmd("QUIT")

    # Postfix stores one copy per recipient in the (shared) virtual Maildir.
    deadline = time.monotonic() + 30
    files = []
    while time.monotonic() < deadline:
        files = sorted(maildir.glob("*")) if maildir.is_dir() else []
        if len(files) >= 2:
            break
        time.sleep(0.2)
    diag = pf.diag() + "\n--- mailgate log ---\n" + srv.log_text()[-4000:]
    assert len(files) == 2, f"Postfix Maildir holds {len(files)} messages, expected 2{diag}"

    delivered_to = set()
    for f in files:
        data = f.read_bytes()
        msg = email.message_from_bytes(data, policy=email.policy.compat32)
        assert msg["Subject"] == subject, data[:2000]
        assert msg["Message-ID"] == f"<{marker}@sender.test>"
        assert msg["Return-Path"] == "<alice@sender.test>", msg["Return-Path"]
        delivered_to.add(msg["Delivered-To"])
        check_body(data, lines, "Postfix's Maildir")
        rec = received_headers(msg)
        # Newest first: Postfix's own, then mailgate's.
        assert len(rec) >= 2, rec
        assert f"by {PF_HOST} (Postfix)" in rec[0], rec
        assert f"from {MG_HOST}" in rec[0], f"Postfix did not see mailgate's EHLO: {rec}"
        assert f"by {MG_HOST} (mailgate)" in rec[1], rec
        assert "client.sender.test" in rec[1], rec
    assert delivered_to == set(rcpts), delivered_to

    wait_queue_empty(srv, extra=diag)

    # The hand-over is visible in both logs: mailgate logs Postfix's queue id
    # for each recipient, and Postfix logs the virtual delivery of that id.
    log = srv.log_text()
    pf_ids = set()
    for rcpt in rcpts:
        m = re.search(rf"queue_id={re.escape(qid)}.*to={re.escape(rcpt)}.*queued as ([0-9A-Za-z]+)"
                      rf"|queued as ([0-9A-Za-z]+).*queue_id={re.escape(qid)}.*to={re.escape(rcpt)}",
                      log)
        assert m, f"mailgate log has no delivery of {qid} to {rcpt} with Postfix's queue id\n{log[-4000:]}"
        pf_ids.add(m.group(1) or m.group(2))
    maillog = pf.maillog()
    for pf_id in pf_ids:
        assert re.search(rf"{pf_id}: from=<alice@sender\.test>", maillog), pf.diag()
        for rcpt in rcpts:
            if re.search(rf"{pf_id}: to=<{re.escape(rcpt)}>, relay=virtual.*status=sent", maillog):
                break
        else:
            raise AssertionError(f"Postfix did not deliver {pf_id}{pf.diag()}")
    assert pf.queued_files() == [], f"Postfix queue not empty: {pf.queued_files()}{pf.diag()}"


def test_postfix_relays_to_mailgate(mailgate_factory, postfix_factory, pysink):
    srv = mailgate_factory("mg", extra_toml=domain_toml("mg.test", pysink.url()))
    set_delivery(srv, **FAST_DELIVERY)
    srv.start()

    pf = postfix_factory("pf-src", main={
        "relay_domains": "mg.test",
        "transport_maps": f"inline:{{ mg.test=smtp:[127.0.0.1]:{srv.mx_port} }}",
    }).start()

    marker = uuid.uuid4().hex
    subject = f"postfix to mailgate {marker}"
    lines = body_lines(marker)
    raw = build_message("carol@outside.test", ["dave@mg.test"], subject, lines,
                        f"{marker}@outside.test")
    with smtplib.SMTP("127.0.0.1", pf.port, local_hostname="client.outside.test",
                      timeout=15) as s:
        s.ehlo()
        code, resp = s.mail("carol@outside.test", ["BODY=8BITMIME"])
        assert code == 250, resp
        code, resp = s.rcpt("dave@mg.test")
        assert code == 250, (code, resp, pf.diag())
        code, resp = s.data(raw)
        assert code == 250, (code, resp, pf.diag())
    pf_id = re.search(rb"queued as ([0-9A-Za-z]+)", resp).group(1).decode()

    diag = lambda: pf.diag() + "\n--- mailgate log ---\n" + srv.log_text()[-4000:]  # noqa: E731
    got = pysink.wait_for(lambda m: marker.encode() in m["content"], timeout=30)
    assert len(got) == 1, f"sink got {len(got)} copies of the message{diag()}"
    m = got[0]
    assert m["sender"].startswith("<carol@outside.test>"), m["sender"]
    assert [r.split()[0] for r in m["rcpts"]] == ["<dave@mg.test>"], m["rcpts"]
    msg = email.message_from_bytes(m["content"], policy=email.policy.compat32)
    assert msg["Subject"] == subject
    check_body(m["content"], lines, "the sink behind mailgate")
    rec = received_headers(msg)
    assert len(rec) == 2, rec
    assert f"by {MG_HOST} (mailgate)" in rec[0], rec
    assert PF_HOST in rec[0].split(" by ")[0], f"mailgate did not record Postfix's EHLO: {rec}"
    assert f"by {PF_HOST} (Postfix)" in rec[1] and pf_id in rec[1], rec
    assert "client.outside.test" in rec[1], rec

    # Postfix handed it to mailgate's mx port and got mailgate's queue id back.
    line = pf.wait_log(
        rf"{pf_id}: to=<dave@mg\.test>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:{srv.mx_port},"
        r".*status=sent \((.*)\)$")
    mg_ids = re.findall(r"queued as (\S+?)\)?$", line.group(1))
    assert mg_ids, line.group(0)
    mg_id = mg_ids[0]
    # The sink stores the message before its 250, and mailgate logs the
    # delivery after it: wait for the line.
    delivered = rf"queue_id={re.escape(mg_id)}.*to=dave@mg\.test.*delivered|delivered.*queue_id={re.escape(mg_id)}"
    deadline = time.monotonic() + 10
    while not re.search(delivered, srv.log_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert re.search(delivered, srv.log_text()), diag()
    wait_queue_empty(srv, extra=diag())
    assert pf.queued_files() == [], diag()

    # A burst through Postfix's smtp client (connection reuse, pipelining):
    # 30 messages from smtp-source into Postfix, all must reach the sink.
    burst = f"burst {marker}"
    p = subprocess.run(
        [tool("smtp-source"), "-s", "3", "-m", "30", "-l", "512", "-S", burst,
         "-f", "load@outside.test", "-t", "eve@mg.test", "-M", "source.outside.test",
         f"127.0.0.1:{pf.port}"],
        capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, (p.stdout, p.stderr, pf.diag())
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        n = len(pysink.wait_for(lambda m: burst.encode() in m["content"], timeout=0))
        if n >= 30:
            break
        time.sleep(0.2)
    assert n == 30, f"sink has {n} of 30 burst messages{diag()}"
    wait_queue_empty(srv, extra=diag())
    deadline = time.monotonic() + 20
    while pf.queued_files() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert pf.queued_files() == [], diag()
    sent = re.findall(rf"relay=127\.0\.0\.1\[127\.0\.0\.1\]:{srv.mx_port},.*status=sent", pf.maillog())
    assert len(sent) == 31, f"Postfix logged {len(sent)} deliveries to mailgate, expected 31"
