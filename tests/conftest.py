"""Fixtures for the black-box acceptance suite.

Every test talks to the real `target/release/mailgate` binary over TCP on
127.0.0.1. A server is started per test with a temporary config and data
directory; its log goes to a file that is attached to the report when the
test fails.

Use the `server` fixture for a server with the default test config, and
`@pytest.mark.mailgate(limits={...}, relay={...}, spool={...})` on a test to
change sections of that config. `mailgate_factory` starts additional or
custom servers (for example on a tmpfs data_dir, or on the same data_dir
after a restart).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from helpers import Dialogue
from loopdns import empty_dns_port

ROOT = Path(__file__).resolve().parent.parent
# `[policy]` of every test server unless the test passes its own.
# Protocol tests send bare messages without a From: header, and their DNS
# fails (see loopdns.py); the authentication tests pass `policy={}` and
# get the defaults, which refuse or defer such mail.
BASE_POLICY = {"invalid_from": "tag", "temperror": "accept"}
BIN = ROOT / "target" / "release" / "mailgate"

# Settings every test server gets unless a test overrides them: short
# timeouts so a hung dialogue fails fast, a short shutdown grace.
DEFAULT_LIMITS = {
    "command_timeout": 30,
    "data_timeout": 30,
    "shutdown_grace": 10,
}
DEFAULT_SPOOL = {"min_free_space": 0}

# Servers started during the current test, so a failure report can show
# their logs.
_RUNNING: list["MailgateServer"] = []


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "mailgate(**sections): config for the `server` fixture, e.g. "
        "limits={'max_errors': 3}, relay={'trusted_networks': [...]}",
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for srv in list(_RUNNING):
            report.sections.append(
                (f"mailgate log ({srv.log_path})", srv.log_text()[-20000:])
            )


@pytest.fixture(scope="session")
def mailgate_bin() -> Path:
    if not BIN.exists():
        subprocess.run(
            ["cargo", "build", "--release", "-p", "mailgate"],
            cwd=ROOT,
            check=True,
        )
    assert BIN.exists(), f"{BIN} was not built"
    return BIN


_GIVEN: set[int] = set()


def free_port() -> int:
    """A port free now and not handed out before in this run: the kernel
    may offer a just-closed port again, and two listeners of one config
    must never share one."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def toml_table(name: str, values: dict) -> str:
    lines = [f"[{name}]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


class MailgateServer:
    """One mailgate process with its own config file, ports and data_dir."""

    def __init__(
        self,
        binary: Path,
        workdir: Path,
        *,
        data_dir: Path | None = None,
        limits: dict | None = None,
        relay: dict | None = None,
        spool: dict | None = None,
        hostname: str = "mx.example.test",
        extra_toml: str = "",
        dns_port: int | None = None,
        policy: dict | None = None,
        http_tls: bool = False,
        server: dict | None = None,
    ):
        self.binary = binary
        self.http_tls = http_tls
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir or (workdir / "data")
        self.hostname = hostname
        self.mx_port = free_port()
        self.submission_port = free_port()
        self.http_port = free_port()
        # Everything stays on loopback: DNS goes to the shared empty
        # server (NXDOMAIN for every name) unless the test brings its own
        # on `dns_port`, and MX delivery goes to a closed local port.
        self.dns_port = dns_port if dns_port is not None else empty_dns_port()
        self.mx_delivery_port = free_port()
        self.config_path = workdir / "mailgate.toml"
        self.log_path = workdir / "mailgate.log"
        self.proc: subprocess.Popen | None = None
        self.exit_codes: list[int] = []
        lim = dict(DEFAULT_LIMITS)
        lim.update(limits or {})
        sp = dict(DEFAULT_SPOOL)
        sp.update(spool or {})
        parts = [
            toml_table(
                "server",
                {"hostname": hostname, "data_dir": str(self.data_dir), **(server or {})},
            ),
            "[[listener]]\nrole = \"mx\"\n"
            f"bind = \"127.0.0.1:{self.mx_port}\"\n",
            "[[listener]]\nrole = \"submission\"\n"
            f"bind = \"127.0.0.1:{self.submission_port}\"\n",
            toml_table(
                "http", {"bind": f"127.0.0.1:{self.http_port}", "tls": http_tls}
            ),
            "[[domain]]\nname = \"example.test\"\ndkim = false\n"
            "deliver = \"smtp://127.0.0.1:9\"\n",
            toml_table("dns", {"nameservers": [f"127.0.0.1:{self.dns_port}"]}),
            toml_table("delivery", {"mx_port": self.mx_delivery_port}),
            toml_table("limits", lim),
            toml_table("spool", sp),
        ]
        if relay is not None:
            parts.append(toml_table("relay", relay))
        pol = dict(BASE_POLICY) if policy is None else policy
        if pol:
            parts.append(toml_table("policy", pol))
        if extra_toml:
            parts.append(extra_toml)
        self.config_path.write_text("\n".join(parts))

    # -- process control -------------------------------------------------

    def start(self, timeout: float = 15.0) -> "MailgateServer":
        assert self.proc is None or self.proc.poll() is not None
        log = open(self.log_path, "ab")
        env = dict(os.environ)
        env.setdefault("MAILGATE_LOG", "info")
        self.proc = subprocess.Popen(
            [str(self.binary), "serve", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=self.workdir,
        )
        log.close()
        if self not in _RUNNING:
            _RUNNING.append(self)
        # Probe readiness through the admin API only: the HTTP listener is
        # bound after the SMTP ones, and probing the SMTP ports would open
        # sessions that count against the connection caps under test.
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"mailgate exited with {self.proc.returncode} at start:\n"
                    + self.log_text()
                )
            try:
                status, _ = self.http_get("/healthz")
                if status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("mailgate did not become ready:\n" + self.log_text())
            time.sleep(0.05)
        return self

    def signal(self, sig) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        rc = self.proc.wait(timeout=timeout)
        self.exit_codes.append(rc)
        return rc

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"mailgate did not exit within {timeout}s of SIGTERM"
            )

    def kill(self) -> None:
        """SIGKILL: a crash."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def restart(self) -> "MailgateServer":
        return self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # -- admin interfaces ------------------------------------------------

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run(
            [str(self.binary), "--config", str(self.config_path), *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if check and p.returncode != 0:
            raise AssertionError(
                f"mailgate {' '.join(args)} exited {p.returncode}: "
                f"stdout={p.stdout!r} stderr={p.stderr!r}"
            )
        return p

    def queue_list(self) -> list[dict]:
        out = self.cli("queue", "list", "--json").stdout
        doc = json.loads(out)
        assert isinstance(doc, dict) and isinstance(doc.get("messages"), list), doc
        return doc["messages"]

    def queue_ids(self) -> set[str]:
        return {m["id"] for m in self.queue_list()}

    def queue_show(self, qid: str) -> dict:
        return json.loads(self.cli("queue", "show", qid, "--json").stdout)

    def queue_delete(self, qid: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.cli("queue", "delete", qid, check=check)

    def admin_token(self) -> str:
        """The admin API's bearer token, from DATA_DIR/admin.token."""
        return (self.data_dir / "admin.token").read_text().strip()

    def http_get(self, path: str, token: str | None = None) -> tuple[int, str]:
        """GET on the admin server; sends the server's token unless
        `token` names another (use "" to send none). /healthz and /metrics
        need none, and the token file may not exist yet at start-up."""
        if token is None and path not in ("/healthz", "/metrics"):
            token = self.admin_token()
        url = f"{'https' if self.http_tls else 'http'}://127.0.0.1:{self.http_port}{path}"
        req = urllib.request.Request(url)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        ctx = None
        if self.http_tls:
            # Trust exactly the server's certificate, which names the
            # hostname, not 127.0.0.1.
            ctx = ssl.create_default_context(cafile=str(self.data_dir / "tls" / "cert.pem"))
            ctx.check_hostname = False
        try:
            with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def smtp(self, port: int | None = None, **kw) -> "Dialogue":
        return Dialogue(port or self.mx_port, **kw)


@pytest.fixture
def mailgate_factory(mailgate_bin, tmp_path):
    """Builds servers: factory(name=..., data_dir=..., limits=..., ...).

    Servers are not started; call .start(). On teardown every running server
    gets SIGTERM and must exit 0.
    """
    made: list[MailgateServer] = []

    def make(name: str = "srv", **kw) -> MailgateServer:
        srv = MailgateServer(mailgate_bin, tmp_path / name, **kw)
        made.append(srv)
        return srv

    yield make

    problems = []
    for srv in made:
        if srv.running:
            try:
                rc = srv.stop()
            except AssertionError as e:
                problems.append(str(e))
                continue
            if rc != 0:
                problems.append(f"mailgate exited {rc} after SIGTERM, expected 0")
    for srv in made:
        while srv in _RUNNING:
            _RUNNING.remove(srv)
    if problems:
        logs = "\n".join(s.log_text()[-5000:] for s in made)
        pytest.fail("; ".join(problems) + "\n--- log ---\n" + logs)


@pytest.fixture
def server(request, mailgate_factory) -> MailgateServer:
    """A started server; configure with @pytest.mark.mailgate(...)."""
    marker = request.node.get_closest_marker("mailgate")
    kw = dict(marker.kwargs) if marker else {}
    return mailgate_factory("server", **kw).start()


@pytest.fixture
def swaks():
    path = shutil.which("swaks")
    if not path:
        pytest.skip("swaks is not installed (apt-get install swaks)")

    def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(
            [path, "--timeout", "10", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run
