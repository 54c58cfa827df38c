"""Connection floods, black-box over TCP against the real binary.

`[limits] connections_per_ip_per_minute` refuses a client address that
connects too often with `421 4.7.0`, as does the per-address concurrent
cap (`max_connections_per_ip`); the global cap keeps `421 4.4.5`. A
refusal is one write from the accept loop: before any TLS or session work,
so it is fast and cheap, and other addresses keep being served during a
flood. `[relay] trusted_networks` are exempt from the rate (not from the
caps); loopback is not special.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from helpers import Dialogue
from conftest import free_port as conftest_free_port  # noqa: E402


def greet(port: int, source: str = "127.0.0.1", timeout: float = 5.0) -> bytes:
    """Connects from `source` and returns the first line the server sends."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0)) as s:
        f = s.makefile("rb")
        return f.readline()


def free_port() -> int:
    # conftest's: never a port handed out before in this run (two
    # listeners of one config once got the same just-closed port).
    return conftest_free_port()


def metric(srv, name: str, **labels) -> float:
    status, text = srv.http_get("/metrics", token="")
    assert status == 200, status
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        got = line[len(name) + 1:line.index("}")]
        if all(f'{k}="{v}"' in got for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.mailgate(limits={"connections_per_ip_per_minute": 20})
def test_connection_rate_per_address_answers_421_4_7_0(server):
    for i in range(20):
        line = greet(server.mx_port, "127.0.0.2")
        assert line.startswith(b"220 "), f"connection {i + 1} of 20: {line!r}"
    line = greet(server.mx_port, "127.0.0.2")
    assert line.startswith(b"421 4.7.0 "), line
    assert b"per minute" in line, line
    # The submission listener shares the count; another address has its own.
    assert greet(server.submission_port, "127.0.0.2").startswith(b"421 4.7.0 ")
    assert greet(server.mx_port, "127.0.0.3").startswith(b"220 ")
    # The bucket refills at 20/min: one every 3 s.
    time.sleep(3.2)
    assert greet(server.mx_port, "127.0.0.2").startswith(b"220 ")
    assert greet(server.mx_port, "127.0.0.2").startswith(b"421 4.7.0 ")
    assert metric(server, "mailgate_connections_refused_total", limit="rate") >= 3


def test_the_rate_refusal_comes_before_tls(mailgate_factory):
    port = free_port()
    srv = mailgate_factory("tls", limits={"connections_per_ip_per_minute": 5},
                           extra_toml=f'[[listener]]\nrole = "submissions"\nbind = "127.0.0.1:{port}"\n').start()
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=("127.0.0.4", 0)):
            pass
    # No ClientHello is sent: the implicit-TLS port answers in clear text at
    # once, so no handshake (or anything else) was started for it.
    t0 = time.monotonic()
    line = greet(port, "127.0.0.4")
    assert line.startswith(b"421 4.7.0 "), line
    assert time.monotonic() - t0 < 0.5


@pytest.mark.mailgate(limits={"connections_per_ip_per_minute": 10}, relay={"trusted_networks": ["127.0.0.9/32"]})
def test_trusted_networks_are_exempt_from_the_rate_and_0_is_off(server, mailgate_factory):
    for i in range(30):
        line = greet(server.mx_port, "127.0.0.9")
        assert line.startswith(b"220 "), f"trusted connection {i + 1}: {line!r}"
    for _ in range(10):
        greet(server.mx_port, "127.0.0.10")
    assert greet(server.mx_port, "127.0.0.10").startswith(b"421 4.7.0 "), "untrusted loopback is limited"
    off = mailgate_factory("off", limits={"connections_per_ip_per_minute": 0}).start()
    for i in range(100):
        assert greet(off.mx_port, "127.0.0.11").startswith(b"220 "), f"connection {i + 1} with the rate off"


@pytest.mark.mailgate(limits={"max_connections_per_ip": 2, "max_connections": 3})
def test_per_address_cap_is_4_7_0_and_the_global_cap_4_4_5(server):
    held = [Dialogue(server.mx_port), Dialogue(server.mx_port)]
    try:
        assert greet(server.mx_port).startswith(b"421 4.7.0 "), "third from one address"
        other = socket.create_connection(("127.0.0.1", server.mx_port), source_address=("127.0.0.5", 0))
        try:
            assert other.makefile("rb").readline().startswith(b"220 ")
            line = greet(server.mx_port, "127.0.0.6")
            assert line.startswith(b"421 4.4.5 "), f"fourth overall: {line!r}"
        finally:
            other.close()
    finally:
        for d in held:
            d.close()


@pytest.mark.mailgate(limits={"connections_per_ip_per_minute": 60, "max_connections": 2000})
def test_a_flood_is_refused_cheaply_while_other_clients_are_served(server):
    """20 addresses open 20,000 connections as fast as they can; each gets
    its minute's allowance and then 421 4.7.0. Meanwhile a normal client
    from another address gets its message accepted within a second."""
    sources = [f"127.0.1.{i}" for i in range(1, 21)]
    counts = {"220": 0, "421 4.7.0": 0, "other": 0}
    lock = threading.Lock()
    stop = threading.Event()
    per_thread = 1000

    def flood(src: str) -> None:
        mine = {"220": 0, "421 4.7.0": 0, "other": 0}
        for _ in range(per_thread):
            try:
                line = greet(server.mx_port, src)
            except OSError:
                line = b""
            key = "220" if line.startswith(b"220 ") else "421 4.7.0" if line.startswith(b"421 4.7.0 ") else "other"
            mine[key] += 1
        with lock:
            for k, v in mine.items():
                counts[k] += v

    threads = [threading.Thread(target=flood, args=(s,)) for s in sources]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(0.3)
    normal = []
    for _ in range(3):
        t1 = time.monotonic()
        with server.smtp() as d:
            d.ehlo()
            assert d.transaction().code == 250
        normal.append(time.monotonic() - t1)
    for t in threads:
        t.join(120)
    stop.set()
    wall = time.monotonic() - t0
    total = len(sources) * per_thread
    print(f"\nflood: {total} connections in {wall:.1f} s ({total / wall:.0f}/s): {counts}; "
          f"normal client: {[round(x, 3) for x in normal]} s")
    assert counts["other"] == 0, counts
    # Each address got its 60 (a few more may refill during the run).
    assert len(sources) * 60 <= counts["220"] <= len(sources) * 70, counts
    assert counts["421 4.7.0"] == total - counts["220"], counts
    assert max(normal) < 1.0, normal
    # Still serving after the flood.
    assert greet(server.mx_port, "127.0.0.7").startswith(b"220 ")
