"""A raw SMTP client for the acceptance tests: shows exactly what the
server sends, reply by reply; and `RefusingSmtp`, a next hop that refuses
every recipient with 550 5.1.1."""

from __future__ import annotations

import re
import socket
import socketserver

REPLY_LINE = re.compile(rb"^(\d{3})([ -])(.*)$")
ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?: |$)")


class Reply:
    def __init__(self, code: int, lines: list[str], raw: bytes):
        self.code = code
        self.lines = lines
        self.raw = raw

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def enhanced(self) -> str | None:
        """The enhanced status code of the first line, if there is one."""
        m = ENHANCED.match(self.lines[0]) if self.lines else None
        return ".".join(m.groups()) if m else None

    def all_lines_have_enhanced(self) -> bool:
        return all(ENHANCED.match(l) for l in self.lines)

    def is_(self, code: int, enhanced: str | None = None) -> bool:
        return self.code == code and (enhanced is None or self.enhanced == enhanced)

    def __repr__(self) -> str:
        return f"Reply({self.raw!r})"

    def __str__(self) -> str:
        return self.raw.decode(errors="replace").rstrip()


class ConnectionClosed(Exception):
    pass


class Dialogue:
    """A raw SMTP dialogue over one TCP connection."""

    def __init__(self, port: int, timeout: float = 10.0, greet: bool = True):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.buf = b""
        self.transcript: list[tuple[str, bytes]] = []
        self.greeting = self.read_reply() if greet else None

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode()
        self.transcript.append((">", data))
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionClosed(
                f"connection closed; unparsed={self.buf!r}; transcript={self.dump()}"
            )
        self.transcript.append(("<", chunk))
        self.buf += chunk

    def read_line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def read_reply(self) -> Reply:
        lines: list[str] = []
        raw = b""
        code = None
        while True:
            line = self.read_line()
            raw += line + b"\r\n"
            m = REPLY_LINE.match(line)
            if not m:
                raise AssertionError(f"malformed reply line {line!r}; {self.dump()}")
            c = int(m.group(1))
            if code is not None and c != code:
                raise AssertionError(f"code changed inside a multi-line reply: {raw!r}")
            code = c
            lines.append(m.group(3).decode(errors="replace"))
            if m.group(2) == b" ":
                return Reply(code, lines, raw)

    def read_replies(self, n: int) -> list[Reply]:
        return [self.read_reply() for _ in range(n)]

    def cmd(self, line: str | bytes) -> Reply:
        if isinstance(line, str):
            line = line.encode()
        self.send(line + b"\r\n")
        return self.read_reply()

    def ehlo(self, name: str = "client.test") -> Reply:
        r = self.cmd(f"EHLO {name}")
        assert r.code == 250, r
        return r

    def expect_closed(self, timeout: float = 5.0) -> None:
        """Asserts the server closes the connection without sending more."""
        self.sock.settimeout(timeout)
        extra = self.buf
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                extra += chunk
        except ConnectionResetError:
            pass
        except socket.timeout:
            raise AssertionError(f"connection still open after {timeout}s; {self.dump()}")
        assert extra == b"", f"unexpected bytes before close: {extra!r}"

    def is_open(self, wait: float = 0.3) -> bool:
        """True if the peer has not closed (nothing pending to read either)."""
        self.sock.settimeout(wait)
        try:
            chunk = self.sock.recv(1, socket.MSG_PEEK)
            return bool(chunk)
        except socket.timeout:
            return True
        except OSError:
            return False

    def dump(self) -> str:
        """The last exchanges, each cut to a readable length."""
        parts = []
        for d, data in self.transcript[-12:]:
            shown = repr(data if len(data) <= 400 else data[:300] + b"..." + data[-80:])
            parts.append(f"{d}{shown}")
        return " ".join(parts)

    def transaction(
        self,
        sender: str = "a@sender.test",
        rcpts: tuple[str, ...] = ("b@example.test",),
        body: bytes = b"Subject: test\r\n\r\nhello\r\n",
        mail_params: str = "",
    ) -> Reply:
        """MAIL/RCPT/DATA with checks; returns the reply after the dot."""
        r = self.cmd(f"MAIL FROM:<{sender}>{(' ' + mail_params) if mail_params else ''}")
        assert r.code == 250, r
        for rc in rcpts:
            r = self.cmd(f"RCPT TO:<{rc}>")
            assert r.code == 250, r
        r = self.cmd("DATA")
        assert r.code == 354, r
        self.send(body + b".\r\n")
        return self.read_reply()


QUEUED = re.compile(r"queued as (\S+)")


def queue_id(reply: Reply | str) -> str:
    text = reply.text if isinstance(reply, Reply) else reply
    m = QUEUED.search(text)
    assert m, f"no queue id in {text!r}"
    return m.group(1)




def pending_status_ok(rcpt: dict) -> bool:
    """A recipient that is still queued: "scheduled", or "deferred" after a
    failed attempt (the test config's next hop, 127.0.0.1:9, refuses
    connections, so a build with a delivery stage defers)."""
    if rcpt.get("status") == "scheduled":
        return True
    return (
        rcpt.get("status") == "deferred"
        and (rcpt.get("attempts") or 0) >= 1
        and str(rcpt.get("last_reply") or "").startswith("4")
    )


class RefusingSmtp(socketserver.StreamRequestHandler):
    """An SMTP server that refuses every recipient for good."""

    def handle(self):
        def reply(text):
            self.wfile.write(text.encode() + b"\r\n")
            self.wfile.flush()

        reply("220 refuser.test ESMTP")
        while line := self.rfile.readline(4096):
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                reply("250 refuser.test")
            elif verb == b"RCPT":
                reply("550 5.1.1 No such user here")
            elif verb == b"QUIT":
                reply("221 2.0.0 Bye")
                return
            elif verb in (b"MAIL", b"RSET", b"NOOP"):
                reply("250 2.0.0 Ok")
            else:
                reply("503 5.5.1 Nothing to send to")
