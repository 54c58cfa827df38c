"""Forwarding with SRS against the real binary: mail from
alice@origin.example to a `[[forward]]` address reaches the final hop (a
loopback sink standing for elsewhere.example's MX) from an SRS0 sender in
our `[srs] domain`, which pyspf, asking a loopback DNS only, passes at
that hop (the original sender fails there: that is why SRS exists); a
bounce to that SRS address reaches alice's own MX (another sink, on
127.0.0.2) addressed to her again; forged and expired SRS addresses are
refused at RCPT with 550 5.1.1.

The expected SRS address is computed here too, from the secret mailgate
wrote in data_dir, with Python's hmac: an independent implementation of
the scheme's hash (HMAC-SHA1 over the lower-cased timestamp, domain and
local part; four base64 characters; base32 days).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import smtplib
import socket
import stat
import threading
import time

import pytest

pytest.importorskip("dnslib", reason="pip install dnslib")
spf = pytest.importorskip("spf", reason="pip install pyspf")
from dnslib import A, MX, TXT  # noqa: E402
from dnslib.server import DNSLogger, DNSServer  # noqa: E402

from conftest import BIN, MailgateServer, free_port  # noqa: E402
from helpers import Dialogue, RefusingSmtp  # noqa: E402
from loopdns import Zone, pyspf_check  # noqa: E402
from postfix import PySink, _PySinkHandler, _ThreadingServer  # noqa: E402

SRS_DOMAIN = "srs.example.test"
FORWARD = "team@example.test"
TARGET = "someone@elsewhere.example"
ALICE = "alice@origin.example"
# The client that hands alice's mail to our MX: her domain's SPF lists it.
ALICE_IP = "127.0.0.5"
HOSTNAME = "mx.example.test"
# A second forwarding address whose target's MX refuses every recipient.
FORWARD_GONE = "gone@example.test"
GONE = "nobody@refusing.example"


def sink_on(address: str, port: int) -> PySink:
    """A PySink listening on `address`:`port` (PySink itself takes 127.0.0.1)."""
    sink = PySink.__new__(PySink)
    sink.hostname = f"sink.{address}"
    sink.messages = []
    sink.lock = threading.Lock()
    sink.server = _ThreadingServer((address, port), _PySinkHandler)
    sink.server.sink = sink
    sink.port = port
    sink.thread = threading.Thread(target=sink.server.serve_forever, daemon=True)
    return sink.start()


class Env:
    def __init__(self, srv, final_hop, origin_mx, dns_port):
        self.srv, self.final_hop, self.origin_mx, self.dns_port = srv, final_hop, origin_mx, dns_port

    def secret(self) -> bytes:
        path = self.srv.data_dir / "srs.secret"
        return path.read_text().splitlines()[0].strip().encode()

    def pyspf(self, ip: str, sender: str) -> str:
        return pyspf_check(spf, self.dns_port, ip, sender, HOSTNAME)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("srs")
    final_hop = PySink("mx.elsewhere.example").start()
    # alice's MX: the same port on another loopback address (mx_port is
    # one setting for every destination).
    try:
        origin_mx = sink_on("127.0.0.2", final_hop.port)
        refusing = _ThreadingServer(("127.0.0.3", final_hop.port), RefusingSmtp)
    except OSError as e:
        final_hop.stop()
        pytest.skip(f"cannot listen on 127.0.0.2 and 127.0.0.3: {e}")
    threading.Thread(target=refusing.serve_forever, daemon=True).start()
    zone = Zone()
    dns_server = DNSServer(zone, port=free_port(), address="127.0.0.1", logger=DNSLogger(prefix=False, logf=lambda s: None))
    dns_server.start_thread()
    dns_port = dns_server.server.server_address[1]
    zone.add("elsewhere.example.", "MX", MX("mx.elsewhere.example."))
    zone.add("mx.elsewhere.example.", "A", A("127.0.0.1"))
    zone.add("origin.example.", "MX", MX("mx.origin.example."))
    zone.add("mx.origin.example.", "A", A("127.0.0.2"))
    zone.add("origin.example.", "TXT", TXT([f"v=spf1 ip4:{ALICE_IP} -all"]))
    zone.add("refusing.example.", "MX", MX("mx.refusing.example."))
    zone.add("mx.refusing.example.", "A", A("127.0.0.3"))
    # The SRS domain's SPF covers us (we send from 127.0.0.1).
    zone.add(f"{SRS_DOMAIN}.", "TXT", TXT(["v=spf1 ip4:127.0.0.1 -all"]))
    srv = MailgateServer(
        BIN, tmp / "server", dns_port=dns_port, hostname=HOSTNAME,
        extra_toml=(f'[srs]\ndomain = "{SRS_DOMAIN}"\nmax_age_days = 21\n'
                    f'[[forward]]\naddress = "{FORWARD}"\nto = ["{TARGET}"]\n'
                    f'[[forward]]\naddress = "{FORWARD_GONE}"\nto = ["{GONE}"]\n'),
    )
    text = srv.config_path.read_text().replace(f"mx_port = {srv.mx_delivery_port}", f"mx_port = {final_hop.port}")
    srv.config_path.write_text(text)
    srv.start()
    yield Env(srv, final_hop, origin_mx, dns_port)
    srv.stop()
    final_hop.stop()
    origin_mx.stop()
    refusing.shutdown()
    refusing.server_close()
    dns_server.stop()


def srs0(secret: bytes, local: str, domain: str, day: int) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    day %= 1024
    tt = alphabet[day >> 5] + alphabet[day & 31]
    mac = hmac.new(secret, digestmod=hashlib.sha1)
    for part in (tt, domain, local):
        mac.update(part.lower().encode())
    h = base64.b64encode(mac.digest()).decode()[:4]
    return f"SRS0={h}={tt}={domain}={local}@{SRS_DOMAIN}"


def expected_srs0(secret: bytes, local: str, domain: str) -> str:
    return srs0(secret, local, domain, int(time.time()) // 86400)


def envelope_sender(m: dict) -> str:
    """The address of the sink's `MAIL FROM:<...> PARAMS`."""
    return m["sender"].split(">", 1)[0].lstrip("<")


def forward_one(e: Env, marker: str) -> dict:
    body = (f"From: Alice <{ALICE}>\r\nTo: {FORWARD}\r\nSubject: {marker}\r\n"
            f"Message-ID: <{marker}@origin.example>\r\n\r\nhello\r\n").encode()
    with smtplib.SMTP("127.0.0.1", e.srv.mx_port, local_hostname="mx.origin.example", timeout=30,
                      source_address=(ALICE_IP, 0)) as s:
        assert s.sendmail(ALICE, [FORWARD], body) == {}
    got = e.final_hop.wait_for(lambda m: marker.encode() in m["content"], timeout=20)
    assert got, f"nothing reached the final hop; log:\n{e.srv.log_text()[-3000:]}"
    return got[0]


def test_forwarded_mail_has_an_srs0_sender_that_passes_spf_at_the_final_hop(env):
    m = forward_one(env, "fwd-1")
    assert m["rcpts"] == [f"<{TARGET}>"], m["rcpts"]
    sender = envelope_sender(m)
    assert sender == expected_srs0(env.secret(), "alice", "origin.example"), sender
    peer = m["peer"][0] if isinstance(m["peer"], tuple) else m["peer"]
    assert env.pyspf(peer, sender) == "pass"
    # Without SRS the final hop would see alice's own domain, whose SPF
    # does not list us.
    assert env.pyspf(peer, ALICE) == "fail"
    secret_file = env.srv.data_dir / "srs.secret"
    assert stat.S_IMODE(os.stat(secret_file).st_mode) == 0o600


def test_a_bounce_to_the_srs_address_goes_back_to_alice(env):
    m = forward_one(env, "fwd-2")
    srs_address = envelope_sender(m)
    dsn = (f"From: MAILER-DAEMON@elsewhere.example\r\nTo: {srs_address}\r\n"
           "Subject: Undelivered Mail Returned to Sender bounce-2\r\n\r\nno such user\r\n").encode()
    with Dialogue(env.srv.mx_port) as d:
        d.ehlo("mx.elsewhere.example")
        assert d.cmd("MAIL FROM:<>").code == 250
        r = d.cmd(f"RCPT TO:<{srs_address}>")
        assert r.code == 250, r
        # The hash compares without regard to case.
        r = d.cmd(f"RCPT TO:<{srs_address.lower()}>")
        assert r.code == 250, r
        assert d.cmd("DATA").code == 354
        d.send(dsn + b".\r\n")
        assert d.read_reply().code == 250
    got = env.origin_mx.wait_for(lambda m: b"bounce-2" in m["content"], timeout=20)
    assert got, f"the bounce did not reach alice's MX; log:\n{env.srv.log_text()[-3000:]}"
    assert got[0]["rcpts"] == [f"<{ALICE}>"], got[0]["rcpts"]
    assert envelope_sender(got[0]) == ""


def test_forged_and_expired_srs_addresses_are_refused(env):
    secret = env.secret()
    good = expected_srs0(secret, "alice", "origin.example")
    h = good.split("=")[1]
    forged_hash = good.replace(f"SRS0={h}=", "SRS0=" + ("AAAA" if h != "AAAA" else "BBBB") + "=")
    # The right hash for another victim is not something a forger has.
    other_victim = good.replace("=alice@", "=victim@")
    # Signed with our secret 30 days ago: past max_age_days = 21.
    expired = srs0(secret, "alice", "origin.example", int(time.time()) // 86400 - 30)
    with Dialogue(env.srv.mx_port) as d:
        d.ehlo("attacker.example")
        assert d.cmd("MAIL FROM:<>").code == 250
        for address, why in ((forged_hash, "hash"), (other_victim, "hash"), (expired, "expired")):
            r = d.cmd(f"RCPT TO:<{address}>")
            assert r.is_(550, "5.1.1"), (address, r)
            assert why in r.text, r
        # The control: the genuine address is accepted in the same session.
        assert d.cmd(f"RCPT TO:<{good}>").code == 250
        d.cmd("RSET")


def test_our_own_notice_about_forwarded_mail_goes_to_the_original_sender(env):
    """The onward delivery fails (550): mailgate's own DSN goes to alice,
    whose address the SRS sender stands for, not to the SRS address."""
    body = (f"From: Alice <{ALICE}>\r\nTo: {FORWARD_GONE}\r\nSubject: gone-1\r\n"
            "Message-ID: <gone-1@origin.example>\r\n\r\nhello\r\n").encode()
    with smtplib.SMTP("127.0.0.1", env.srv.mx_port, local_hostname="mx.origin.example", timeout=30,
                      source_address=(ALICE_IP, 0)) as s:
        assert s.sendmail(ALICE, [FORWARD_GONE], body) == {}
    got = env.origin_mx.wait_for(lambda m: b"gone-1@origin.example" in m["content"], timeout=20)
    assert got, f"no notice reached alice's MX; log:\n{env.srv.log_text()[-3000:]}"
    m = got[0]
    assert envelope_sender(m) == "" and m["rcpts"] == [f"<{ALICE}>"], (m["sender"], m["rcpts"])
    content = m["content"].decode(errors="replace")
    # RFC 3464: a multipart/report of report-type delivery-status, naming
    # the failed recipient, its status and the remote's reply.
    assert "multipart/report" in content and "report-type=delivery-status" in content, content[:1500]
    assert f"To: <{ALICE}>" in content, content[:1500]
    assert f"Final-Recipient: rfc822; {GONE}" in content and "Action: failed" in content, content
    assert "Status: 5.1.1" in content and "No such user here" in content, content
    log = env.srv.log_text()
    assert "notice about forwarded mail goes to the original sender" in log
    # Nothing went (or tried to go) to our own SRS domain.
    assert f"@{SRS_DOMAIN}" not in "".join(str(x["rcpts"]) for x in env.final_hop.messages + env.origin_mx.messages)


def test_no_notice_to_a_forged_srs_sender(env):
    """Mail whose sender is an SRS address of ours that does not verify is
    forwarded as it is (it is already in our SRS domain); when it fails,
    no notice is made: it would go to an address our MX refuses."""
    forged = f"SRS0=AAAA=AA=origin.example=mallory@{SRS_DOMAIN}"
    body = (f"From: <{forged}>\r\nTo: {FORWARD_GONE}\r\nSubject: gone-2\r\n"
            "Message-ID: <gone-2@origin.example>\r\n\r\nhello\r\n").encode()
    with smtplib.SMTP("127.0.0.1", env.srv.mx_port, local_hostname="mx.srs.example.test", timeout=30) as s:
        assert s.sendmail(forged, [FORWARD_GONE], body) == {}
    deadline = time.monotonic() + 20
    while "the SRS sender does not verify" not in env.srv.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    line = [l for l in env.srv.log_text().splitlines() if "the SRS sender does not verify" in l]
    assert line and forged.split("@")[0] in line[0], env.srv.log_text()[-3000:]
    assert not env.origin_mx.wait_for(lambda m: b"gone-2@origin.example" in m["content"], timeout=1)
    assert not env.final_hop.wait_for(lambda m: b"gone-2@origin.example" in m["content"], timeout=0.1)
