"""Helpers for tests that run mailgate beside real Postfix programs.

- `require_postfix()`: makes sure Debian's `postfix` package (postfix,
  smtp-sink, smtp-source) is installed, installing it the way .ci/run does
  when it is missing; skips the test only if that is impossible.
- `PostfixInstance`: a private Postfix instance in its own directory
  (as BENCHMARKS.md describes): own main.cf/master.cf, queue and data
  directories, listening only on 127.0.0.1, started and stopped with
  `postfix -c DIR`. It never touches /etc/postfix or a system instance.
- `SmtpSink`: Postfix's `smtp-sink` dumping every transaction to a file.
- `PySink`: a small threaded SMTP sink in Python that keeps each message.
- `scratch_dir()`: a temporary directory that Postfix's unprivileged
  daemons (and smtp-sink after it drops privileges) can reach; pytest's
  tmp_path lives under 0700 directories owned by root.

Everything here binds or connects to 127.0.0.1 only.
"""

from __future__ import annotations

import os
import pwd
import grp
import re
import shutil
import signal
import socket
import socketserver
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

MASTER_CF_TEMPLATES = ("/usr/share/postfix/master.cf.dist", "/etc/postfix/master.cf")


# --------------------------------------------------------------- install


def _have_postfix() -> bool:
    return all(shutil.which(p) or os.path.exists(f"/usr/sbin/{p}")
               for p in ("postfix", "smtp-sink", "smtp-source"))


_install_error: str | None = None


def require_postfix() -> None:
    """Installs Debian's postfix if missing (as .ci/run does); skips with
    the reason if that cannot be done."""
    global _install_error
    if os.geteuid() != 0:
        pytest.skip("Postfix interop tests must run as root (postfix master starts as root)")
    if _have_postfix():
        return
    if _install_error is None:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        try:
            subprocess.run(
                ["debconf-set-selections"],
                input="postfix postfix/main_mailer_type select No configuration\n",
                text=True, check=True, capture_output=True, timeout=60,
            )
            p = subprocess.run(["apt-get", "install", "-y", "postfix"],
                               env=env, capture_output=True, text=True, timeout=600)
            if p.returncode != 0:
                subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600)
                p = subprocess.run(["apt-get", "install", "-y", "postfix"],
                                   env=env, capture_output=True, text=True, timeout=600)
            if p.returncode != 0 or not _have_postfix():
                _install_error = f"apt-get install postfix failed: {p.stderr.strip()[-500:]}"
            else:
                _install_error = ""
        except (OSError, subprocess.SubprocessError) as e:
            _install_error = f"cannot install postfix: {e}"
    if _install_error:
        pytest.skip(_install_error)
    if not _have_postfix():
        pytest.skip("postfix, smtp-sink or smtp-source missing after installation")


def tool(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


# --------------------------------------------------------------- utilities


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def scratch_dir(prefix: str) -> Path:
    """A fresh 0755 directory under /var/tmp (not tmpfs on most systems),
    reachable by unprivileged users."""
    base = "/var/tmp" if os.path.isdir("/var/tmp") else None
    d = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    d.chmod(0o755)
    return d


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def children_of(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and fields[1] == str(pid):
            kids.append(int(entry))
    return kids


# --------------------------------------------------------------- Postfix


class PostfixInstance:
    """A private Postfix instance under `base`.

    `main` holds extra main.cf settings (name -> value) added after the
    defaults; `port` is the smtpd port on 127.0.0.1.
    """

    def __init__(self, base: Path, *, name: str = "postfix", main: dict | None = None,
                 hostname: str = "postfix.interop.test"):
        self.base = base
        self.conf = base / "conf"
        self.queue = base / "queue"
        self.data = base / "data"
        self.maillog_path = base / "maillog"
        self.name = name
        self.hostname = hostname
        self.port = free_port()
        self.extra = dict(main or {})
        self.started = False

    # -- configuration ---------------------------------------------------

    def main_cf(self) -> str:
        settings = {
            "compatibility_level": "3.6",
            "config_directory": str(self.conf),
            "queue_directory": str(self.queue),
            "data_directory": str(self.data),
            "myhostname": self.hostname,
            "mydomain": "interop.test",
            "myorigin": "$myhostname",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mydestination": "",
            "mynetworks": "127.0.0.0/8",
            "smtpd_peername_lookup": "no",
            "smtp_tls_security_level": "none",
            "smtpd_tls_security_level": "none",
            "biff": "no",
            "alias_maps": "",
            "alias_database": "",
            "maillog_file": str(self.maillog_path),
            "maillog_file_prefixes": str(self.base),
            # Retry quickly so a transient failure does not stall a test.
            "queue_run_delay": "2s",
            "minimal_backoff_time": "2s",
            "maximal_backoff_time": "4s",
            "smtp_connect_timeout": "5s",
        }
        settings.update(self.extra)
        return "".join(f"{k} = {v}\n" for k, v in settings.items())

    def master_cf(self) -> str:
        template = next((p for p in MASTER_CF_TEMPLATES if os.path.exists(p)), None)
        if template is None:
            pytest.skip("no packaged master.cf template (master.cf.dist) found")
        out = []
        skip = False
        for line in Path(template).read_text().splitlines():
            if line[:1] in (" ", "\t"):
                if not skip:
                    out.append(line)
                continue
            if line.startswith("#") or not line.strip():
                skip = False
                out.append(line)
                continue
            skip = False
            f = line.split()
            if len(f) >= 8 and f[7] == "pipe":
                skip = True  # maildrop, uucp, ...: not needed, users missing
                continue
            if f[0] == "smtp" and f[1] == "inet":
                out.append(f"127.0.0.1:{self.port} inet n - n - - smtpd")
                continue
            if len(f) >= 8:
                f[4] = "n"  # chroot off
                line = " ".join(f)
            out.append(line)
        return "\n".join(out) + "\n"

    # -- process control -------------------------------------------------

    def _postfix(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([tool("postfix"), "-c", str(self.conf), *args],
                              capture_output=True, text=True, timeout=timeout)

    def start(self) -> "PostfixInstance":
        self.conf.mkdir(parents=True, exist_ok=True)
        self.queue.mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o755)
        (self.conf / "main.cf").write_text(self.main_cf())
        (self.conf / "master.cf").write_text(self.master_cf())
        self.started = True
        chk = self._postfix("check")
        # `check` also creates missing queue directories; warnings are fine.
        if chk.returncode != 0:
            raise AssertionError(f"postfix -c {self.conf} check failed:\n{chk.stdout}{chk.stderr}"
                                 + self.diag())
        p = self._postfix("start")
        if p.returncode != 0:
            raise AssertionError(f"postfix -c {self.conf} start failed:\n{p.stdout}{p.stderr}"
                                 + self.diag())
        if not wait_port(self.port, 20):
            raise AssertionError(f"postfix did not listen on 127.0.0.1:{self.port}" + self.diag())
        return self

    def master_pid(self) -> int | None:
        try:
            return int((self.queue / "pid" / "master.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        if not self.started:
            return
        self.started = False
        m = self.master_pid()
        if m is None or not pid_alive(m):
            return
        kids = children_of(m)
        try:
            self._postfix("stop", timeout=30)
        except subprocess.SubprocessError:
            pass
        deadline = time.monotonic() + 10
        while pid_alive(m) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(m):
            os.kill(m, signal.SIGKILL)
        for k in kids:
            deadline = time.monotonic() + 3
            while pid_alive(k) and time.monotonic() < deadline:
                time.sleep(0.1)
            if pid_alive(k):
                try:
                    os.kill(k, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    # -- inspection ------------------------------------------------------

    def maillog(self) -> str:
        try:
            return self.maillog_path.read_text(errors="replace")
        except OSError:
            return ""

    def queued_files(self) -> list[Path]:
        """Messages still in Postfix's queue (any state)."""
        files = []
        for sub in ("maildrop", "incoming", "active", "deferred", "hold", "corrupt"):
            d = self.queue / sub
            if d.is_dir():
                files += [p for p in d.rglob("*") if p.is_file()]
        return files

    def diag(self) -> str:
        log = self.maillog()
        return f"\n--- {self.name} maillog ({self.maillog_path}) ---\n{log[-8000:]}"

    def wait_log(self, pattern: str, timeout: float = 30.0) -> re.Match:
        rx = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.maillog())
            if m:
                return m
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} maillog has no line matching {pattern!r} "
                                     f"after {timeout}s" + self.diag())
            time.sleep(0.1)


def set_delivery(srv, **settings) -> None:
    """Adds keys to the `[delivery]` table of a conftest MailgateServer's
    config (which writes `[delivery]` with only `mx_port`)."""
    text = srv.config_path.read_text()
    assert "[delivery]\n" in text, text
    lines = "".join(f"{k} = {v}\n" for k, v in settings.items())
    srv.config_path.write_text(text.replace("[delivery]\n", "[delivery]\n" + lines, 1))


FAST_DELIVERY = dict(retry_initial=1, retry_max=2, idle_timeout=1, connect_timeout=2,
                     command_timeout=15)


def domain_toml(name: str, deliver: str) -> str:
    return f'[[domain]]\nname = "{name}"\ndeliver = "{deliver}"\ndkim = false\n'


def postfix_ids() -> tuple[int, int]:
    return pwd.getpwnam("postfix").pw_uid, grp.getgrnam("postfix").gr_gid


# --------------------------------------------------------------- sinks


class SmtpSink:
    """Postfix's smtp-sink on 127.0.0.1, dumping each transaction into its
    own file under `dump_dir` (one subdirectory per second, so the
    pseudo-random file names do not collide)."""

    def __init__(self, dump_dir: Path, *, user: str = "nobody", backlog: int = 256,
                 extra_args: tuple[str, ...] = ()):
        self.dump_dir = dump_dir
        dump_dir.mkdir(parents=True, exist_ok=True)
        dump_dir.chmod(0o777)
        self.port = free_port()
        self.user = user
        self.backlog = backlog
        self.extra_args = extra_args
        self.proc: subprocess.Popen | None = None
        self.log_path = dump_dir.parent / f"smtp-sink-{self.port}.log"

    def start(self) -> "SmtpSink":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [tool("smtp-sink"), "-u", self.user, "-m", "512", *self.extra_args,
             "-d", f"{self.dump_dir}/%H%M%S/",
             f"127.0.0.1:{self.port}", str(self.backlog)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        if not wait_port(self.port, 10):
            self.stop()
            raise AssertionError(f"smtp-sink did not listen on {self.port}: {self.log_text()}")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def files(self) -> list[Path]:
        return [p for p in self.dump_dir.rglob("*") if p.is_file()]

    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"


class _PySinkHandler(socketserver.StreamRequestHandler):
    timeout = 60

    def reply(self, text: str) -> None:
        self.wfile.write(text.encode() + b"\r\n")
        self.wfile.flush()

    def handle(self) -> None:
        sink: PySink = self.server.sink  # type: ignore[attr-defined]
        self.reply(f"220 {sink.hostname} ESMTP pysink")
        sender, rcpts = None, []
        while True:
            line = self.rfile.readline(4096)
            if not line:
                return
            cmd = line.rstrip(b"\r\n").decode("utf-8", "replace")
            verb = cmd[:4].upper()
            if verb in ("EHLO", "HELO"):
                sender, rcpts = None, []
                if verb == "EHLO":
                    self.wfile.write(f"250-{sink.hostname}\r\n250-8BITMIME\r\n"
                                     "250-SIZE 52428800\r\n250 ENHANCEDSTATUSCODES\r\n".encode())
                    self.wfile.flush()
                else:
                    self.reply(f"250 {sink.hostname}")
            elif verb == "MAIL":
                sender, rcpts = cmd[10:].strip(), []
                self.reply("250 2.1.0 Ok")
            elif verb == "RCPT":
                rcpts.append(cmd[8:].strip())
                self.reply("250 2.1.5 Ok")
            elif verb == "DATA":
                if sender is None or not rcpts:
                    self.reply("503 5.5.1 Error: need MAIL and RCPT")
                    continue
                self.reply("354 End data with <CR><LF>.<CR><LF>")
                lines = []
                while True:
                    l = self.rfile.readline(1 << 20)
                    if not l:
                        return
                    if l == b".\r\n":
                        break
                    if l.startswith(b"."):
                        l = l[1:]
                    lines.append(l)
                sink.record(sender, list(rcpts), b"".join(lines), self.client_address)
                sender, rcpts = None, []
                self.reply("250 2.0.0 Ok: stored")
            elif verb == "RSET":
                sender, rcpts = None, []
                self.reply("250 2.0.0 Ok")
            elif verb == "NOOP":
                self.reply("250 2.0.0 Ok")
            elif verb == "QUIT":
                self.reply("221 2.0.0 Bye")
                return
            else:
                self.reply("502 5.5.2 Error: command not recognized")


class _ThreadingServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True


class PySink:
    """A small SMTP sink on 127.0.0.1 keeping (sender, rcpts, content)."""

    def __init__(self, hostname: str = "pysink.interop.test"):
        self.hostname = hostname
        self.messages: list[dict] = []
        self.lock = threading.Lock()
        self.server = _ThreadingServer(("127.0.0.1", 0), _PySinkHandler)
        self.server.sink = self  # type: ignore[attr-defined]
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> "PySink":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def record(self, sender, rcpts, content, peer) -> None:
        with self.lock:
            self.messages.append({"sender": sender, "rcpts": rcpts, "content": content,
                                  "peer": peer})

    def wait_for(self, pred, timeout: float = 30.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                found = [m for m in self.messages if pred(m)]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.1)

    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"
