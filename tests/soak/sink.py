"""The soak test's next hop: a small SMTP server on 127.0.0.1 that records,
for every message delivered to it, the `X-Soak-Id` header and each RCPT.

It answers `250` to the final dot only after the delivery is counted, so a
message mailgate saw accepted by the sink is always in the count. It offers
no extension (no PIPELINING, no CHUNKING): mailgate's client then speaks the
plainest SMTP, and this stays a few dozen lines.
"""

from __future__ import annotations

import collections
import re
import socketserver
import threading

ID_RX = re.compile(rb"^X-Soak-Id:[ \t]*(\S+)", re.M | re.I)
RCPT_RX = re.compile(rb"^RCPT TO:\s*<([^>]*)>", re.I)


class Sink:
    """Counts deliveries per (soak id, recipient)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.delivered: collections.Counter = collections.Counter()
        self.without_id = 0  # e.g. a bounce notice: nobody sent it
        self.transactions = 0
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.sink = self
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> "Sink":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def record(self, data: bytes, rcpts: list[str]) -> None:
        m = ID_RX.search(data.split(b"\r\n\r\n", 1)[0])
        with self.lock:
            self.transactions += 1
            if not m:
                self.without_id += 1
                return
            sid = m.group(1).decode(errors="replace")
            for r in rcpts:
                self.delivered[(sid, r.lower())] += 1

    def snapshot(self) -> tuple[collections.Counter, int, int]:
        with self.lock:
            return collections.Counter(self.delivered), self.without_id, self.transactions


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    sink: Sink


class _Handler(socketserver.StreamRequestHandler):
    timeout = 60

    def reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")
        self.wfile.flush()

    def handle(self) -> None:
        sink = self.server.sink  # type: ignore[attr-defined]
        rcpts: list[str] = []
        try:
            self.reply("220 sink.soak.test ESMTP")
            while True:
                line = self.rfile.readline(100_000)
                if not line:
                    return
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    self.reply("250 sink.soak.test")
                elif verb == b"MAIL":
                    rcpts = []
                    self.reply("250 2.1.0 ok")
                elif verb == b"RCPT":
                    m = RCPT_RX.match(line)
                    rcpts.append(m.group(1).decode(errors="replace") if m else "?")
                    self.reply("250 2.1.5 ok")
                elif verb == b"DATA":
                    self.reply("354 go ahead")
                    chunks = []
                    while True:
                        part = self.rfile.readline(1_000_000)
                        if not part:
                            return  # the client went away mid-message: not delivered
                        if part == b".\r\n":
                            break
                        chunks.append(part)
                    sink.record(b"".join(chunks), rcpts)
                    rcpts = []
                    self.reply("250 2.0.0 delivered")
                elif verb == b"RSET":
                    rcpts = []
                    self.reply("250 2.0.0 ok")
                elif verb == b"NOOP":
                    self.reply("250 2.0.0 ok")
                elif verb == b"QUIT":
                    self.reply("221 2.0.0 bye")
                    return
                else:
                    self.reply("502 5.5.2 not here")
        except OSError:
            return
