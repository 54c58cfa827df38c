"""The running server's warning before a certificate change breaks DANE:
at start and on every reload of `[tls] cert` (SIGHUP), the TLSA records
of our own MX host, asked through `[dns]` (a loopback dnslib zone here),
are compared with the loaded key; when none pins it, one WARN line names
the `3 1 1` record to publish. The reload itself is never refused, and a
DNS server that never answers does not hold up the start.
"""

from __future__ import annotations

import signal
import smtplib
import socket
import ssl
import time

import pytest

pytest.importorskip("dnslib", reason="pip install dnslib")

from cryptography import x509  # noqa: E402
from dnslib import TLSA  # noqa: E402
from dnslib.server import DNSLogger, DNSServer  # noqa: E402

from conftest import free_port  # noqa: E402
from dnssec_dns import wait_for  # noqa: E402
from loopdns import Zone  # noqa: E402
from test_check_dane import key_311, self_signed  # noqa: E402

HOST = "mx.roll.test"
WARNING = "no TLSA record of our MX host matches the key"


def certs(tmp):
    """Three certificates with their own keys: (directory, 3 1 1 data)."""
    out = []
    for name in ("a", "b", "c"):
        d = tmp / name
        d.mkdir()
        out.append((d, self_signed(d, HOST)))
    return out


def install(src, dst) -> None:
    """Copies a certificate and its key over the served files (key first:
    the server only loads a pair that belongs together)."""
    (dst / "key.pem").write_bytes((src / "key.pem").read_bytes())
    (dst / "cert.pem").write_bytes((src / "cert.pem").read_bytes())


def warnings(srv) -> list[str]:
    return [l for l in srv.log_text().splitlines() if "WARN" in l and WARNING in l]


def test_warns_at_start_and_on_reload_when_the_loaded_key_is_not_published(mailgate_factory, tmp_path):
    (a, key_a), (b, key_b), (c, key_c) = certs(tmp_path)
    zone = Zone()
    zone.add(f"_25._tcp.{HOST}", "TLSA", TLSA(3, 1, 1, bytes.fromhex(key_a)))
    dns = DNSServer(zone, port=free_port(), address="127.0.0.1", logger=DNSLogger(prefix=False, logf=lambda s: None))
    dns.start_thread()
    served = tmp_path / "served"
    served.mkdir()
    install(b, served)
    srv = mailgate_factory("roll", hostname=HOST, dns_port=dns.server.server_address[1],
                           extra_toml=f'[tls]\ncert = "{served / "cert.pem"}"\nkey = "{served / "key.pem"}"\n')
    try:
        srv.start()
        # B's key is not published (only A's): one WARN naming B's record.
        assert wait_for(lambda: warnings(srv), 15), srv.log_text()[-3000:]
        (line,) = warnings(srv)
        assert f'publish "_25._tcp.{HOST}. IN TLSA 3 1 1 {key_b}"' in line, line
        assert key_a in line, line  # what is published now
        # A's key is published: the reload is quiet.
        install(a, served)
        srv.signal(signal.SIGHUP)
        assert wait_for(lambda: "TLSA records match the key" in srv.log_text(), 15), srv.log_text()[-3000:]
        assert len(warnings(srv)) == 1
        # C's key is not: warned again, naming C, and C is served all the
        # same (the reload is not refused).
        install(c, served)
        srv.signal(signal.SIGHUP)
        assert wait_for(lambda: any(key_c in l for l in warnings(srv)), 15), srv.log_text()[-3000:]
        with smtplib.SMTP("127.0.0.1", srv.mx_port, timeout=10) as s:
            s.ehlo("client.test")
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            s.starttls(context=ctx)
            served_cert = x509.load_der_x509_certificate(s.sock.getpeercert(binary_form=True))
        assert key_311(served_cert.public_key()) == key_c
    finally:
        dns.stop()


def test_a_silent_dns_does_not_hold_up_the_start(mailgate_factory, tmp_path):
    (a, _), = certs(tmp_path)[:1]
    # A UDP and TCP port that accept queries and never answer.
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    port = udp.getsockname()[1]
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", port))
    tcp.listen(8)
    srv = mailgate_factory("silent", hostname=HOST, dns_port=port,
                           extra_toml=f'[tls]\ncert = "{a / "cert.pem"}"\nkey = "{a / "key.pem"}"\n')
    try:
        t0 = time.monotonic()
        srv.start(timeout=15)
        # A start that waited for the lookup would take its 10 s cap; a
        # loaded machine can make a normal start take a few seconds.
        assert time.monotonic() - t0 < 8, srv.log_text()
        # The lookup gives up in the background; nothing is claimed.
        assert wait_for(lambda: "DANE self-check" in srv.log_text(), 30), srv.log_text()[-3000:]
        assert not warnings(srv)
    finally:
        udp.close()
        tcp.close()
