"""Slow clients (slowloris), black-box over TCP against the real binary.

A client that sends one byte every few seconds used to keep its session
forever, because every byte restarted the idle timer. Now a command line
must arrive whole within `[limits] command_timeout` of its first byte,
message content must average `[limits] min_data_rate` octets/s over each
30 s window, and `[limits] session_timeout` caps a whole session; each
ends with `421 4.4.2` and a text naming the deadline.

The volume test holds 2,000 such connections from 50 loopback addresses
(127.0.0.2..51), half of them trickling a command line and half trickling
message content (DATA, or one BDAT chunk), while a normal client still gets its message accepted
within a second; then every slow one is closed by its deadline. It also
reports the server's memory with the 2,000 connections open.
"""

from __future__ import annotations

import asyncio
import re
import resource
import socket
import time

import pytest

from helpers import Reply

SOURCES = [f"127.0.0.{i}" for i in range(2, 52)]  # 50 addresses
SLOW_EACH = 20      # connections per address and kind: 50 x 20 x 2 = 2,000
TRICKLE = 3.0       # seconds between bytes
COMMAND_TIMEOUT = 20
MIN_RATE = 200      # octets/s; the rate window is 30 s


def raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft < need:
        pytest.skip(f"needs {need} open files, the hard limit is {hard}")


def vm_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


async def read_reply(r: asyncio.StreamReader) -> Reply:
    lines, raw = [], b""
    while True:
        line = await r.readline()
        if not line:
            raise ConnectionError(f"closed after {raw!r}")
        raw += line
        # As helpers.Reply wants it: each line's text after "NNN-".
        lines.append(line[4:].decode("latin-1").rstrip("\r\n"))
        if len(line) < 4 or line[3:4] != b"-":
            return Reply(int(raw[:3]), lines, raw)


async def cmd(r, w, line: str) -> Reply:
    w.write(line.encode() + b"\r\n")
    await w.drain()
    return await read_reply(r)


class Slow:
    """One slow connection's outcome."""

    def __init__(self, kind: str, source: str):
        self.kind, self.source = kind, source
        self.first_byte = 0.0
        self.reply: Reply | None = None
        self.closed_at = 0.0
        self.eof = False
        self.error = ""


async def slow_client(port: int, s: Slow, opened: list, go: asyncio.Event, gate: asyncio.Semaphore) -> None:
    """Opens a session, gets to the point of trickling, waits for `go`,
    then sends one byte every TRICKLE seconds until the server answers.

    `gate` bounds the handshakes in flight, as a real flood from 50
    addresses arrives over a moment rather than in one instant; the
    content clients send DATA (or BDAT) only after `go`, so the
    server's rate window starts when every session is open, however
    long opening 2,000 took on a slow machine."""
    try:
        async with gate:
            r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(s.source, 0))
            g = await read_reply(r)
            assert g.code == 220, g
            if s.kind in ("data", "bdat"):
                assert (await cmd(r, w, "EHLO slow.test")).code == 250
                assert (await cmd(r, w, "MAIL FROM:<slow@sender.test>")).code == 250
                assert (await cmd(r, w, "RCPT TO:<b@example.test>")).code == 250
        if s.kind in ("data", "bdat"):
            payload = b"Subject: slow\r\n\r\n" + b"x" * 100000
        else:
            # Never a whole line (and shorter than the 512-octet limit).
            payload = b"EHLO " + b"x" * 400
        opened.append(s)
        await go.wait()
        if s.kind == "data":
            assert (await cmd(r, w, "DATA")).code == 354
        elif s.kind == "bdat":
            # A chunk announced whole, then trickled.
            w.write(b"BDAT %d LAST\r\n" % len(payload))
        reader = asyncio.ensure_future(read_reply(r))
        s.first_byte = time.monotonic()
        i = 0
        while not reader.done():
            w.write(payload[i:i + 1])
            i += 1
            await asyncio.wait([reader], timeout=TRICKLE)
        s.closed_at = time.monotonic()
        s.reply = reader.result()
        s.eof = await asyncio.wait_for(r.read(), 10) == b""
        w.close()
    except Exception as e:  # noqa: BLE001 - reported by the test
        s.error = f"{type(e).__name__}: {e}"


async def legit_slow_sender(port: int, result: dict) -> None:
    """Content at twice the minimum rate for over a window: accepted."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        assert (await read_reply(r)).code == 220
        assert (await cmd(r, w, "EHLO steady.test")).code == 250
        assert (await cmd(r, w, "MAIL FROM:<steady@sender.test>")).code == 250
        assert (await cmd(r, w, "RCPT TO:<b@example.test>")).code == 250
        assert (await cmd(r, w, "DATA")).code == 354
        w.write(b"Subject: steady\r\n\r\n")
        t0 = time.monotonic()
        line = b"y" * 78 + b"\r\n"
        # 80 octets every 0.2 s = 400 octets/s, for 36 s.
        while time.monotonic() - t0 < 36:
            w.write(line)
            await w.drain()
            await asyncio.sleep(0.2)
        w.write(b".\r\n")
        result["reply"] = await asyncio.wait_for(read_reply(r), 10)
    finally:
        w.close()


def normal_client_time(port: int) -> float:
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        f = sock.makefile("rb")

        def reply() -> bytes:
            while True:
                line = f.readline()
                if len(line) < 4 or line[3:4] != b"-":
                    return line

        assert reply().startswith(b"220")
        for c in (b"EHLO normal.test", b"MAIL FROM:<n@sender.test>", b"RCPT TO:<b@example.test>"):
            sock.sendall(c + b"\r\n")
            assert reply().startswith(b"250"), c
        sock.sendall(b"DATA\r\n")
        assert reply().startswith(b"354")
        sock.sendall(b"Subject: normal\r\n\r\nhello\r\n.\r\n")
        last = reply()
        assert last.startswith(b"250"), last
        sock.sendall(b"QUIT\r\n")
    return time.monotonic() - t0


@pytest.mark.mailgate(limits={
    "command_timeout": COMMAND_TIMEOUT, "data_timeout": 60, "min_data_rate": MIN_RATE,
    "max_connections": 3000,
})
def test_2000_slow_connections_are_closed_by_their_deadlines_while_mail_flows(server):
    raise_fd_limit(2 * len(SOURCES) * SLOW_EACH + 200)
    rss_before = vm_rss_kib(server.proc.pid)
    kinds = ["command"] * SLOW_EACH + ["data", "bdat"] * (SLOW_EACH // 2)
    slow = [Slow(kind, src) for src in SOURCES for kind in kinds]

    async def main():
        opened: list = []
        go = asyncio.Event()
        gate = asyncio.Semaphore(100)
        t_open = time.monotonic()
        tasks = [asyncio.ensure_future(slow_client(server.mx_port, s, opened, go, gate)) for s in slow]
        deadline = time.monotonic() + 60
        while len(opened) < len(slow) and time.monotonic() < deadline:
            if any(s.error for s in slow):
                break
            await asyncio.sleep(0.2)
        errors = [s.error for s in slow if s.error]
        assert not errors, f"{len(errors)} slow clients failed to start: {errors[:3]}"
        assert len(opened) == len(slow), f"only {len(opened)} of {len(slow)} sessions opened"
        print(f"\n{len(opened)} sessions opened in {time.monotonic() - t_open:.1f} s")
        legit: dict = {}
        steady = asyncio.ensure_future(legit_slow_sender(server.mx_port, legit))
        go.set()
        await asyncio.sleep(2 * TRICKLE)  # every slow client has trickled
        assert not any(s.reply or s.error for s in slow), "closed before their deadlines"
        rss_open = vm_rss_kib(server.proc.pid)
        loop = asyncio.get_running_loop()
        normal = [await loop.run_in_executor(None, normal_client_time, server.mx_port) for _ in range(3)]
        await asyncio.gather(*tasks)
        await steady
        return rss_open, normal, legit

    t0 = time.monotonic()
    rss_open, normal, legit = asyncio.run(main())
    wall = time.monotonic() - t0
    per_conn = (rss_open - rss_before) / len(slow)
    print(f"\nVmRSS: {rss_before} KiB idle, {rss_open} KiB with {len(slow)} slow connections "
          f"({per_conn:.1f} KiB each); normal client: {[round(x, 3) for x in normal]} s; wall {wall:.1f} s")

    assert max(normal) < 1.0, f"a normal transaction took {normal} s with 2,000 slow clients open"
    errors = [f"{s.kind} {s.source}: {s.error}" for s in slow if s.error]
    assert not errors, f"{len(errors)} slow clients failed: {errors[:5]}"
    for s in slow:
        assert s.reply is not None and s.reply.is_(421, "4.4.2"), (s.kind, s.reply)
        assert s.eof, f"{s.kind} connection from {s.source} not closed after {s.reply}"
        took = s.closed_at - s.first_byte
        if s.kind == "command":
            assert re.search(r"no complete command within 20 s", s.reply.text), s.reply
            assert COMMAND_TIMEOUT - 1 <= took <= COMMAND_TIMEOUT + 2 * TRICKLE + 3, took
        else:
            assert re.search(rf"under {MIN_RATE} octets/s over 30 s", s.reply.text), s.reply
            assert 29 <= took <= 30 + 2 * TRICKLE + 3, took
    assert per_conn < 48, f"{per_conn:.1f} KiB per idle connection"
    reply = legit.get("reply")
    assert reply is not None and reply.code == 250, f"content at twice the minimum rate: {reply}"
    # Only the normal clients' and the steady sender's messages are queued.
    assert len(server.queue_list()) == 4


@pytest.mark.mailgate(limits={"command_timeout": 2})
def test_a_command_line_trickled_byte_by_byte_is_cut_at_the_deadline(server):
    with server.smtp() as d:
        d.ehlo()
        t0 = time.monotonic()
        d.sock.settimeout(0.5)
        got = b""
        for ch in b"MAIL FROM:<slow-but-steady@sender.test>":
            try:
                d.sock.sendall(bytes([ch]))
            except OSError:
                break
            try:
                got += d.sock.recv(4096)
            except socket.timeout:
                pass
            if got:
                break
        waited = time.monotonic() - t0
        assert got.startswith(b"421 4.4.2 "), got
        assert b"no complete command within 2 s" in got, got
        # Every byte used to restart the timer: the line took 20 s.
        assert 1.5 <= waited <= 4, waited
        d.expect_closed()


@pytest.mark.mailgate(limits={"session_timeout": 3})
def test_session_timeout_caps_a_session_kept_alive_with_noops(server):
    with server.smtp() as d:
        d.ehlo()
        t0 = time.monotonic()
        while True:
            r = d.cmd("NOOP")
            if r.code != 250:
                break
            assert time.monotonic() - t0 < 6, "NOOPs kept the session open past session_timeout"
            time.sleep(0.3)
        assert r.is_(421, "4.4.2"), r
        assert "Session time limit of 3 s exceeded" in r.text, r
        assert 2.5 <= time.monotonic() - t0 <= 5
        d.expect_closed()


def test_limits_keys_are_checked(mailgate_bin, tmp_path):
    import subprocess
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[server]\nhostname = "mx.example.test"\n[limits]\nsession_timeout = 0\n'
                   'min_data_rate = "fast"\n')
    p = subprocess.run([str(mailgate_bin), "config", "check", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode != 0, p.stdout
    out = p.stdout + p.stderr
    assert "min_data_rate" in out, out
