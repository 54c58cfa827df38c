"""Connection caps and cross-protocol (HTTP on the SMTP port) handling."""

import socket
import time

import pytest

from helpers import ConnectionClosed, Dialogue


def open_n(port: int, n: int) -> list[Dialogue]:
    out = []
    for _ in range(n):
        d = Dialogue(port)
        assert d.greeting.code == 220, d.greeting
        out.append(d)
    return out


def assert_refused_421(port: int, enhanced: str = "4.7.0") -> None:
    """Refused at a cap: 4.7.0 per address, 4.4.5 for the global cap."""
    with Dialogue(port) as d:
        g = d.greeting
        assert g.is_(421, enhanced), g
        d.expect_closed()


def assert_admitted(port: int, attempts: int = 20) -> None:
    """A new connection gets 220 (the server may need a moment to notice a
    closed connection)."""
    for _ in range(attempts):
        with Dialogue(port) as d:
            if d.greeting.code == 220:
                assert d.cmd("NOOP").code == 250
                return
        time.sleep(0.1)
    raise AssertionError("no slot was freed after closing a connection")


@pytest.mark.mailgate(limits={"max_connections_per_ip": 2})
def test_third_concurrent_connection_from_one_ip_gets_421(server):
    held = open_n(server.mx_port, 2)
    try:
        assert_refused_421(server.mx_port)
        # The two admitted sessions still work.
        for d in held:
            assert d.cmd("NOOP").code == 250
    finally:
        held[0].cmd("QUIT")
        held[0].close()
    assert_admitted(server.mx_port)
    held[1].close()


@pytest.mark.mailgate(limits={"max_connections_per_ip": 2})
def test_per_ip_cap_counts_connections_on_all_listeners(server):
    held = [Dialogue(server.mx_port), Dialogue(server.submission_port)]
    try:
        assert all(d.greeting.code == 220 for d in held)
        assert_refused_421(server.mx_port)
        assert_refused_421(server.submission_port)
    finally:
        for d in held:
            d.close()


@pytest.mark.mailgate(limits={"max_connections": 2, "max_connections_per_ip": 50})
def test_global_connection_cap_refuses_with_421(server):
    held = open_n(server.mx_port, 2)
    try:
        assert_refused_421(server.mx_port, "4.4.5")
        assert_refused_421(server.submission_port, "4.4.5")
    finally:
        held[0].close()
    assert_admitted(server.mx_port)
    held[1].close()


@pytest.mark.mailgate(limits={"max_connections_per_ip": 3})
def test_refused_connections_do_not_use_up_slots(server):
    held = open_n(server.mx_port, 3)
    try:
        for _ in range(5):
            assert_refused_421(server.mx_port)
    finally:
        for d in held:
            d.cmd("QUIT")
            d.close()
    time.sleep(0.2)
    again = open_n(server.mx_port, 3)
    for d in again:
        d.close()


def test_default_per_ip_cap_admits_at_least_50_connections(server):
    held = open_n(server.mx_port, 50)
    try:
        for d in held[:5]:
            assert d.cmd("NOOP").code == 250
    finally:
        for d in held:
            d.close()


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"POST /submit HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nMAIL",
        b"CONNECT 127.0.0.1:25 HTTP/1.1\r\n\r\n",
    ],
    ids=["get", "post", "connect"],
)
def test_http_request_on_smtp_port_gets_421_and_close(server, request_bytes):
    with server.smtp() as d:
        d.send(request_bytes)
        r = d.read_reply()
        assert r.code == 421, r
        assert r.enhanced and r.enhanced.startswith("4."), r
        # One reply, then the connection is closed: the following header
        # lines are never answered.
        d.expect_closed()
    assert server.queue_list() == []


def test_http_request_after_ehlo_also_closes(server):
    with server.smtp() as d:
        d.ehlo()
        d.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        r = d.read_reply()
        assert r.code == 421, r
        d.expect_closed()


def test_client_disconnect_mid_data_queues_nothing(server):
    with server.smtp() as d:
        d.ehlo()
        assert d.cmd("MAIL FROM:<a@sender.test>").code == 250
        assert d.cmd("RCPT TO:<b@example.test>").code == 250
        assert d.cmd("DATA").code == 354
        d.send(b"Subject: cut\r\n\r\nhalf a message\r\n")
    time.sleep(0.3)
    assert server.queue_list() == []
    # The server is fine.
    with server.smtp() as d:
        assert d.cmd("NOOP").code == 250


def test_http_request_with_lf_line_endings_gets_421_and_close(server):
    # Hand-typed or scripted HTTP requests often end lines with LF only; they
    # are still HTTP and must be dropped like the CRLF kind.
    with server.smtp() as d:
        d.send(b"GET / HTTP/1.0\nHost: 127.0.0.1\nUser-Agent: probe\n\n")
        r = d.read_reply()
        assert r.code == 421, f"{r}; {d.dump()}"
        d.expect_closed()
