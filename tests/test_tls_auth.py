"""STARTTLS, implicit TLS, SMTP AUTH, throttling and `send_as`, black-box.

Every server here gets three listeners: `mx` and `submission` (from
conftest) and a `submissions` (implicit TLS) one added through
`extra_toml`, plus `[[user]]`s whose argon2id hashes come from
`mailgate user hash`. The clients are independent of mailgate: Python's
ssl/smtplib, raw sockets wrapped with ssl, and Debian's `openssl s_client`.

Everything binds and connects on loopback only; DNS goes to conftest's
closed loopback port. Some tests connect *from* other loopback addresses
(127.0.0.x) so that per-IP throttling in one test does not leak into the
next step.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import signal
import smtplib
import socket
import ssl
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from helpers import ConnectionClosed, Dialogue, Reply, queue_id
from conftest import free_port as conftest_free_port  # noqa: E402

HOST = "mx.example.test"          # conftest's default mailgate hostname
SECRET = "correct horse battery"  # app's password
OTHER_SECRET = "ceo-pass-42"      # ceo's password
ALLOWED = "app@example.test"      # within app's send_as
FOREIGN = "boss@elsewhere.test"   # outside app's send_as

AUTH_FAIL = "535 5.7.8"
WAIT = 10.0


# --------------------------------------------------------------- tools


def free_port() -> int:
    # conftest's: never a port handed out before in this run (two
    # listeners of one config once got the same just-closed port).
    return conftest_free_port()


def openssl() -> str:
    path = shutil.which("openssl")
    if not path:
        pytest.skip("openssl CLI is not installed (apt-get install openssl)")
    return path


def hash_password(binary: Path, password: str, newline: bool = True) -> str:
    p = subprocess.run([str(binary), "user", "hash"], input=password + ("\n" if newline else ""),
                       capture_output=True, text=True, timeout=60, start_new_session=True)
    assert p.returncode == 0, f"mailgate user hash failed: {p.returncode} {p.stdout!r} {p.stderr!r}"
    lines = p.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("$argon2id$"), p.stdout
    return lines[0]


@pytest.fixture(scope="module")
def hashes(mailgate_bin) -> dict[str, str]:
    return {"app": hash_password(mailgate_bin, SECRET), "ceo": hash_password(mailgate_bin, OTHER_SECRET)}


def make_cert(directory: Path, cn: str = HOST, tag: str = "") -> tuple[Path, Path]:
    """A fresh self-signed EC certificate made with the openssl CLI."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"cert{tag}.pem", directory / f"key{tag}.pem"
    p = subprocess.run(
        [openssl(), "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
         "-subj", f"/CN={cn}", "-addext", f"subjectAltName=DNS:{cn}"],
        capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return cert, key


def pem_der(path: Path) -> bytes:
    text = path.read_text()
    m = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", text, re.S)
    assert m, f"no certificate in {path}"
    return ssl.PEM_cert_to_DER_cert(m.group(0))


def fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def users_toml(hashes: dict[str, str]) -> str:
    return (
        f'[[user]]\nname = "app"\npassword = "{hashes["app"]}"\n'
        f'send_as = ["*@example.test", "alias@other.test"]\n'
        f'[[user]]\nname = "ceo"\npassword = "{hashes["ceo"]}"\n'
        f'send_as = ["ceo@example.test"]\n'
    )


def start_server(factory, hashes, *, name: str = "srv", tls: tuple[Path, Path] | None = None,
                 extra: str = "", **kw):
    """A started server with a `submissions` listener and two users;
    `srv.submissions_port` is the implicit-TLS port."""
    port = free_port()
    toml = f'[[listener]]\nrole = "submissions"\nbind = "127.0.0.1:{port}"\n' + users_toml(hashes)
    if tls:
        toml += f'[tls]\ncert = "{tls[0]}"\nkey = "{tls[1]}"\n'
    srv = factory(name, extra_toml=toml + extra, **kw)
    srv.submissions_port = port
    return srv.start()


@pytest.fixture
def tls_server(mailgate_factory, hashes):
    return start_server(mailgate_factory, hashes)


def insecure_ctx() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def pinned_ctx(cert: Path) -> ssl.SSLContext:
    """Trusts exactly `cert` and checks the host name against it."""
    ctx = ssl.create_default_context(cafile=str(cert))
    ctx.check_hostname = True
    return ctx


def generated_cert(srv) -> Path:
    return srv.data_dir / "tls" / "cert.pem"


# --------------------------------------------------------------- dialogues


def starttls(d: Dialogue, ctx: ssl.SSLContext | None = None, hostname: str = HOST) -> None:
    r = d.cmd("STARTTLS")
    assert r.code == 220, r
    assert d.buf == b"", f"bytes after the 220 to STARTTLS: {d.buf!r}"
    d.sock = (ctx or insecure_ctx()).wrap_socket(d.sock, server_hostname=hostname)
    d.transcript.append(("=", b"<TLS handshake>"))


def connect(port: int, source: str = "127.0.0.1", timeout: float = WAIT) -> Dialogue:
    """A clear-text Dialogue from `source` (any 127.0.0.x)."""
    d = Dialogue.__new__(Dialogue)
    d.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                      source_address=(source, 0))
    d.sock.settimeout(timeout)
    d.buf = b""
    d.transcript = []
    d.greeting = d.read_reply()
    assert d.greeting.code == 220, d.greeting
    return d


def connect_tls(port: int, ctx: ssl.SSLContext | None = None, source: str = "127.0.0.1",
                timeout: float = WAIT) -> Dialogue:
    """Implicit TLS: handshake first, then the greeting."""
    d = Dialogue.__new__(Dialogue)
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
    d.sock = (ctx or insecure_ctx()).wrap_socket(raw, server_hostname=HOST)
    d.sock.settimeout(timeout)
    d.buf = b""
    d.transcript = []
    d.greeting = d.read_reply()
    assert d.greeting.code == 220, d.greeting
    return d


def submission_tls(srv, source: str = "127.0.0.1", ctx=None) -> Dialogue:
    """submission port, EHLO, STARTTLS, EHLO again."""
    d = connect(srv.submission_port, source)
    d.ehlo()
    starttls(d, ctx)
    d.ehlo()
    return d


def b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


def plain(user: str, password: str, authz: str = "") -> str:
    return b64(f"{authz}\0{user}\0{password}")


def auth_plain(d: Dialogue, user: str = "app", password: str = SECRET) -> Reply:
    return d.cmd(f"AUTH PLAIN {plain(user, password)}")


def login(d: Dialogue, user: str = "app", password: str = SECRET) -> None:
    r = auth_plain(d, user, password)
    assert r.is_(235, "2.7.0"), r


def ehlo_keywords(r: Reply) -> list[str]:
    return [l.upper() for l in r.lines[1:]]


def assert_silent(d: Dialogue, wait: float = 1.0) -> None:
    """Nothing at all arrives within `wait` seconds."""
    d.sock.settimeout(wait)
    try:
        chunk = d.sock.recv(65536)
    except (socket.timeout, TimeoutError):
        d.sock.settimeout(WAIT)
        assert d.buf == b"", f"unexpected bytes: {d.buf!r}"
        return
    raise AssertionError(f"the server sent {chunk!r} (buffered {d.buf!r}) "
                         f"where no reply was due; {d.dump()}")


def message(sender: str = ALLOWED, to: str = "bob@elsewhere.test", subject: str = "hello",
            extra_headers: str | None = None) -> bytes:
    head = f"From: <{sender}>\r\n" if extra_headers is None else extra_headers
    return (head + f"To: <{to}>\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@example.test>\r\n\r\nbody\r\n").encode()


def send(d: Dialogue, sender: str, rcpt: str, body: bytes) -> Reply:
    r = d.cmd(f"MAIL FROM:<{sender}>")
    assert r.code == 250, r
    r = d.cmd(f"RCPT TO:<{rcpt}>")
    assert r.code == 250, r
    r = d.cmd("DATA")
    assert r.code == 354, r
    d.send(body + b".\r\n")
    return d.read_reply()


def unfolded(headers: str) -> str:
    return re.sub(r"\r?\n[ \t]+", " ", headers)


def received_of(srv, qid: str) -> str:
    shown = srv.queue_show(qid)
    headers = shown.get("headers")
    assert isinstance(headers, str), f"queue show has no headers: {shown}"
    rec = [l for l in unfolded(headers).splitlines() if l.lower().startswith("received:")]
    assert rec, f"no Received header in {headers!r}"
    return rec[0]


def run_s_client(args: list[str], stdin: str, timeout: float = 20) -> str:
    """s_client's stdout: the session summary, then whatever the server
    said after the handshake (the clear-text part of `-starttls` goes to
    stderr); stderr is appended after a marker for the error messages."""
    p = subprocess.run([openssl(), "s_client", *args, "-ign_eof", "-crlf"],
                       input=stdin, capture_output=True, text=True, timeout=timeout)
    return p.stdout + "\n--- stderr ---\n" + p.stderr


def after_handshake(out: str) -> str:
    """What the server said inside TLS, from run_s_client's output."""
    stdout = out.split("\n--- stderr ---\n", 1)[0]
    return stdout.split("Verify return code", 1)[-1]


def s_client_cert(out: str) -> bytes:
    m = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", out, re.S)
    assert m, f"s_client printed no certificate:\n{out}"
    return ssl.PEM_cert_to_DER_cert(m.group(0))


def peer_fp(port: int, implicit: bool = False) -> str:
    """The SHA-256 fingerprint of the certificate a new connection gets."""
    if implicit:
        d = connect_tls(port)
    else:
        d = connect(port)
        d.ehlo()
        starttls(d)
    try:
        d.ehlo()  # proves the handshake completed with this certificate
        return fingerprint(d.sock.getpeercert(binary_form=True))
    finally:
        d.close()


def wait_for_fp(port: int, want: str, timeout: float = 12.0) -> str:
    deadline = time.monotonic() + timeout
    got, err = None, None
    while time.monotonic() < deadline:
        try:
            got = peer_fp(port)
            err = None
            if got == want:
                return got
        except (OSError, ssl.SSLError, ConnectionClosed, AssertionError) as e:
            err = e  # a half-replaced pair may fail a handshake for a moment
        time.sleep(0.3)
    raise AssertionError(f"new connections still get {got} (last error {err!r}), expected {want}")


def replace_atomically(src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".new")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


# =============================================================== certificates


def test_generated_self_signed_certificate_on_submission_starttls(tls_server):
    srv = tls_server
    cert = generated_cert(srv)
    key = srv.data_dir / "tls" / "key.pem"
    assert cert.is_file(), f"no generated certificate at {cert}"
    assert key.is_file(), f"no generated key at {key}"
    mode = stat.S_IMODE(key.stat().st_mode)
    assert mode == 0o600, f"key.pem has mode {oct(mode)}, expected 0o600"

    d = connect(srv.submission_port)
    r = d.ehlo()
    kw = ehlo_keywords(r)
    assert "STARTTLS" in kw, r
    # The client trusts exactly the generated file and checks the host name.
    starttls(d, pinned_ctx(cert))
    assert d.sock.version() == "TLSv1.3", d.sock.version()
    assert d.sock.getpeercert(binary_form=True) == pem_der(cert)
    r = d.ehlo()
    kw = ehlo_keywords(r)
    assert "STARTTLS" not in kw, f"STARTTLS offered again after TLS: {r}"
    assert any(k.startswith("AUTH") and "PLAIN" in k.split() and "LOGIN" in k.split() for k in kw), r
    assert d.cmd("QUIT").code == 221
    d.close()

    # A restart reuses the certificate instead of generating a new one.
    before = pem_der(cert)
    srv.stop()
    srv.start()
    assert pem_der(cert) == before, "the generated certificate changed across a restart"
    assert peer_fp(srv.submission_port) == fingerprint(before)


def test_starttls_on_mx_without_auth(tls_server):
    srv = tls_server
    d = connect(srv.mx_port)
    r = d.ehlo()
    kw = ehlo_keywords(r)
    assert "STARTTLS" in kw, r
    assert not any(k.startswith("AUTH") for k in kw), f"AUTH offered on mx: {r}"
    starttls(d, pinned_ctx(generated_cert(srv)))
    r = d.ehlo()
    kw = ehlo_keywords(r)
    assert not any(k.startswith("AUTH") for k in kw), f"AUTH offered on mx after TLS: {r}"
    assert "STARTTLS" not in kw, r
    r = auth_plain(d)
    assert r.code >= 500 and r.code not in (534, 535, 538), f"AUTH accepted or half-accepted on mx: {r}"
    r = d.cmd("AUTH LOGIN")
    assert r.code >= 500, f"AUTH LOGIN on mx: {r}"
    # Mail for our domain still flows over TLS, recorded as ESMTPS (no A).
    r = send(d, "someone@outside.test", "bob@example.test", message("someone@outside.test"))
    assert r.code == 250, r
    rec = received_of(srv, queue_id(r))
    assert re.search(r"\bwith ESMTPS\b", rec), rec
    assert "version=TLSv1.3" in rec, rec
    d.close()


def test_implicit_tls_submissions_smtplib(tls_server):
    srv = tls_server
    ctx = pinned_ctx(generated_cert(srv))
    # smtplib passes the IP as server_hostname: verify the chain against the
    # generated file, and compare the certificate below.
    ctx.check_hostname = False
    with smtplib.SMTP_SSL("127.0.0.1", srv.submissions_port, context=ctx, timeout=WAIT,
                          local_hostname="client.example.test") as s:
        assert s.sock.getpeercert(binary_form=True) == pem_der(generated_cert(srv))
        assert s.sock.version() == "TLSv1.3"
        code, _ = s.ehlo()
        assert code == 250
        assert not s.has_extn("starttls"), s.esmtp_features
        assert "PLAIN" in s.esmtp_features.get("auth", "").upper().split(), s.esmtp_features
        code, resp = s.login("app", SECRET)
        assert code == 235, resp
        refused = s.sendmail(ALLOWED, ["bob@elsewhere.test"], message(subject="implicit tls"))
        assert refused == {}
        code, resp = s.noop()
        assert code == 250
    msgs = srv.queue_list()
    assert len(msgs) == 1 and msgs[0]["sender"] == ALLOWED, msgs
    rec = received_of(srv, msgs[0]["id"])
    assert re.search(r"\bwith ESMTPSA\b", rec), rec
    assert "version=TLSv1.3" in rec and "cipher=" in rec, rec


def test_submissions_never_speaks_clear_text(tls_server):
    srv = tls_server
    with socket.create_connection(("127.0.0.1", srv.submissions_port), timeout=5) as s:
        s.sendall(b"EHLO client.example.test\r\n")
        got = b""
        try:
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
        except (socket.timeout, ConnectionResetError):
            pass
    assert not re.search(rb"^(220|250)", got), f"clear-text SMTP on the implicit TLS port: {got!r}"


def test_openssl_s_client_starttls_and_implicit_tls(tls_server):
    srv = tls_server
    cert = generated_cert(srv)
    want = pem_der(cert)
    common = ["-connect", None, "-servername", HOST, "-CAfile", str(cert),
              "-verify_hostname", HOST, "-verify_return_error"]

    def run(port, *extra, stdin="EHLO sclient.example.test\nQUIT\n"):
        args = list(common)
        args[1] = f"127.0.0.1:{port}"
        return run_s_client(args + list(extra), stdin)

    for port, listener in ((srv.submission_port, "submission"), (srv.mx_port, "mx")):
        out = run(port, "-starttls", "smtp")
        assert "Verify return code: 0 (ok)" in out, out
        assert re.search(r"TLSv1\.3", out), out
        assert s_client_cert(out) == want, f"{listener}: s_client got another certificate"
        after = after_handshake(out)
        assert re.search(r"^250[ -]", after, re.M), out
        has_auth = re.search(r"^250[ -]AUTH\b.*\bPLAIN\b", after, re.M) is not None
        assert has_auth == (listener == "submission"), f"{listener}: AUTH offered={has_auth}\n{out}"
        assert not re.search(r"^250[ -]STARTTLS", after, re.M), out
        assert re.search(r"^221 ", after, re.M), out

    out = run(srv.submissions_port,
              stdin=f"EHLO sclient.example.test\nAUTH PLAIN {plain('app', SECRET)}\nQUIT\n")
    assert "Verify return code: 0 (ok)" in out, out
    assert s_client_cert(out) == want
    after = after_handshake(out)
    assert re.search(r"^220 ", after, re.M), out
    assert re.search(r"^235 2\.7\.0", after, re.M), out
    assert re.search(r"^221 ", after, re.M), out


def test_configured_certificate_is_served(mailgate_factory, hashes, tmp_path):
    cert, key = make_cert(tmp_path / "pki")
    srv = start_server(mailgate_factory, hashes, tls=(cert, key))
    want = fingerprint(pem_der(cert))
    assert peer_fp(srv.submission_port) == want
    assert peer_fp(srv.mx_port) == want
    assert peer_fp(srv.submissions_port, implicit=True) == want
    # And through an independent client, verified against the file.
    out = run_s_client(["-connect", f"127.0.0.1:{srv.submissions_port}", "-servername", HOST,
                        "-CAfile", str(cert), "-verify_hostname", HOST, "-verify_return_error"],
                       "QUIT\n")
    assert "Verify return code: 0 (ok)" in out, out
    assert fingerprint(s_client_cert(out)) == want
    # A generated certificate, if any was written, is not what is served.
    gen = generated_cert(srv)
    if gen.exists():
        assert fingerprint(pem_der(gen)) != want


# =============================================================== reload


def _open_authenticated(srv) -> Dialogue:
    d = submission_tls(srv)
    login(d)
    return d


def test_certificate_reload_on_file_change(mailgate_factory, hashes, tmp_path):
    live = tmp_path / "live"
    cert, key = make_cert(live)
    new_cert, new_key = make_cert(tmp_path / "next", tag="-2")
    srv = start_server(mailgate_factory, hashes, tls=(cert, key))
    old_fp, new_fp = fingerprint(pem_der(cert)), fingerprint(pem_der(new_cert))
    assert old_fp != new_fp
    assert peer_fp(srv.submission_port) == old_fp

    existing = _open_authenticated(srv)
    existing_implicit = connect_tls(srv.submissions_port)
    existing_implicit.ehlo()
    time.sleep(1.1)  # a later mtime, whatever the filesystem's granularity
    replace_atomically(new_key, key)
    replace_atomically(new_cert, cert)

    wait_for_fp(srv.submission_port, new_fp)
    assert peer_fp(srv.mx_port) == new_fp
    assert peer_fp(srv.submissions_port, implicit=True) == new_fp

    # The connections made before the reload still work, on the old certificate.
    assert fingerprint(existing.sock.getpeercert(binary_form=True)) == old_fp
    r = send(existing, ALLOWED, "bob@elsewhere.test", message(subject="after reload"))
    assert r.code == 250, r
    assert existing.cmd("NOOP").code == 250
    r = existing_implicit.cmd("NOOP")
    assert r.code == 250, r
    existing.close()
    existing_implicit.close()


def test_certificate_reload_on_sighup(mailgate_factory, hashes, tmp_path):
    live = tmp_path / "live"
    cert, key = make_cert(live)
    new_cert, new_key = make_cert(tmp_path / "next", tag="-2")
    srv = start_server(mailgate_factory, hashes, tls=(cert, key))
    old_fp, new_fp = fingerprint(pem_der(cert)), fingerprint(pem_der(new_cert))
    existing = _open_authenticated(srv)

    # Replace the files but keep their old modification times, so only the
    # signal can tell the server to look at them.
    times = [(p, p.stat().st_atime_ns, p.stat().st_mtime_ns) for p in (cert, key)]
    replace_atomically(new_key, key)
    replace_atomically(new_cert, cert)
    for p, at, mt in times:
        os.utime(p, ns=(at, mt))
    srv.signal(signal.SIGHUP)
    wait_for_fp(srv.submission_port, new_fp, timeout=5)
    assert srv.running, "mailgate exited on SIGHUP"
    r = send(existing, ALLOWED, "bob@elsewhere.test", message(subject="after sighup"))
    assert r.code == 250, r
    assert fingerprint(existing.sock.getpeercert(binary_form=True)) == old_fp
    existing.close()


def test_broken_certificate_on_reload_keeps_the_old_one(mailgate_factory, hashes, tmp_path):
    cert, key = make_cert(tmp_path / "live")
    srv = start_server(mailgate_factory, hashes, tls=(cert, key))
    old_fp = fingerprint(pem_der(cert))
    tmp = cert.with_name("garbage.new")
    tmp.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n")
    os.replace(tmp, cert)
    srv.signal(signal.SIGHUP)
    time.sleep(3)  # one SIGHUP and at least one file-change check
    assert srv.running
    assert peer_fp(srv.submission_port) == old_fp
    assert peer_fp(srv.submissions_port, implicit=True) == old_fp


# =============================================================== AUTH


def test_auth_plain_success(tls_server):
    d = submission_tls(tls_server)
    r = auth_plain(d)
    assert r.is_(235, "2.7.0"), r
    r = d.ehlo()
    assert not any(k.startswith("AUTH") for k in ehlo_keywords(r)), f"AUTH offered once authenticated: {r}"
    assert auth_plain(d).code == 503, "a second AUTH must be refused"
    r = send(d, ALLOWED, "bob@elsewhere.test", message(subject="plain ok"))
    assert r.code == 250, r
    d.close()


def test_auth_plain_failure(tls_server):
    d = submission_tls(tls_server)
    r = auth_plain(d, "app", "wrong password")
    assert r.code == 535 and r.enhanced == "5.7.8", r
    r = d.cmd("MAIL FROM:<app@example.test>")
    assert r.is_(530, "5.7.0"), f"MAIL after a failed AUTH: {r}"
    # authzid naming another user is refused even with the right password
    r = d.cmd(f"AUTH PLAIN {plain('app', SECRET, authz='ceo')}")
    assert r.code == 535, r
    # The right password still works on the same connection.
    assert auth_plain(d).is_(235, "2.7.0")
    d.close()


def test_auth_login_success(tls_server):
    d = submission_tls(tls_server)
    r = d.cmd("AUTH LOGIN")
    assert r.code == 334 and base64.b64decode(r.lines[0]).lower().startswith(b"username"), r
    r = d.cmd(b64("app"))
    assert r.code == 334 and base64.b64decode(r.lines[0]).lower().startswith(b"password"), r
    r = d.cmd(b64(SECRET))
    assert r.is_(235, "2.7.0"), r
    r = send(d, ALLOWED, "bob@elsewhere.test", message(subject="login ok"))
    assert r.code == 250, r
    d.close()
    # With the user name as initial response.
    d = submission_tls(tls_server)
    r = d.cmd(f"AUTH LOGIN {b64('app')}")
    assert r.code == 334 and base64.b64decode(r.lines[0]).lower().startswith(b"password"), r
    assert d.cmd(b64(SECRET)).is_(235, "2.7.0")
    d.close()


def test_auth_login_failure(tls_server):
    d = submission_tls(tls_server)
    assert d.cmd("AUTH LOGIN").code == 334
    assert d.cmd(b64("app")).code == 334
    r = d.cmd(b64("not it"))
    assert r.code == 535 and r.enhanced == "5.7.8", r
    assert d.cmd("MAIL FROM:<app@example.test>").is_(530, "5.7.0")
    d.close()


def test_auth_plain_without_initial_response(tls_server):
    d = submission_tls(tls_server)
    r = d.cmd("AUTH PLAIN")
    assert r.code == 334, r
    assert r.raw in (b"334 \r\n", b"334\r\n"), f"PLAIN challenge should be empty: {r.raw!r}"
    r = d.cmd(plain("app", SECRET))
    assert r.is_(235, "2.7.0"), r
    d.close()


@pytest.mark.parametrize("mechanism,steps", [("PLAIN", 0), ("LOGIN", 0), ("LOGIN", 1)])
def test_auth_cancel(tls_server, mechanism, steps):
    d = submission_tls(tls_server)
    assert d.cmd(f"AUTH {mechanism}").code == 334
    if steps:
        assert d.cmd(b64("app")).code == 334
    r = d.cmd("*")
    assert r.code == 501, f"cancel with '*' must give 501: {r}"
    # Back to the command state: not authenticated, commands work.
    assert d.cmd("NOOP").code == 250
    assert d.cmd("MAIL FROM:<app@example.test>").is_(530, "5.7.0")
    assert auth_plain(d).is_(235, "2.7.0")
    d.close()


def test_no_auth_before_tls_on_submission(tls_server):
    srv = tls_server
    d = connect(srv.submission_port)
    r = d.ehlo()
    kw = ehlo_keywords(r)
    assert "STARTTLS" in kw, r
    assert not any(k.startswith("AUTH") for k in kw), f"AUTH advertised before TLS: {r}"
    for cmd in (f"AUTH PLAIN {plain('app', SECRET)}", "AUTH PLAIN", "AUTH LOGIN",
                f"AUTH LOGIN {b64('app')}"):
        r = d.cmd(cmd)
        assert r.is_(538, "5.7.11"), f"{cmd.split()[:2]} before TLS: {r}"
    r = d.cmd("MAIL FROM:<app@example.test>")
    assert r.is_(530, "5.7.0"), f"MAIL before TLS on submission: {r}"
    # The credentials sent in clear text did not authenticate anything.
    starttls(d)
    d.ehlo()
    r = d.cmd("MAIL FROM:<app@example.test>")
    assert r.is_(530, "5.7.0"), f"MAIL after TLS without AUTH: {r}"
    d.close()


# =============================================================== STARTTLS rules


@pytest.mark.parametrize("listener", ["submission", "mx"])
@pytest.mark.parametrize("injected", [b"RSET\r\n", b"MAIL FROM:<a@x.test>\r\n",
                                      b"RSET\r\nNOOP\r\nQUIT\r\n"])
def test_starttls_command_injection(tls_server, listener, injected):
    """Commands sent in clear text behind STARTTLS are discarded (RFC 3207
    §5, CVE-2011-0411): after the handshake nothing answers them."""
    port = tls_server.submission_port if listener == "submission" else tls_server.mx_port
    d = connect(port)
    d.ehlo()
    d.send(b"STARTTLS\r\n" + injected)
    r = d.read_reply()
    assert r.code == 220, r
    assert d.buf == b"", f"a reply to the injected command before the handshake: {d.buf!r}"
    d.sock = insecure_ctx().wrap_socket(d.sock, server_hostname=HOST)
    assert_silent(d, 1.5)
    r = d.ehlo("after.tls.test")
    # This must be the answer to EHLO, not a late answer to an injected command.
    assert r.code == 250 and "after.tls.test" in r.lines[0] and len(r.lines) > 3, r
    assert_silent(d, 0.5)
    # Had the injected MAIL been kept, this would be a nested MAIL (503).
    sender = ALLOWED if listener == "submission" else "c@outside.test"
    if listener == "submission":
        login(d)
    r = d.cmd(f"MAIL FROM:<{sender}>")
    assert r.code == 250, f"transaction state leaked through STARTTLS: {r}"
    assert d.cmd("QUIT").code == 221
    d.close()


@pytest.mark.parametrize("listener", ["submission", "mx"])
def test_state_reset_after_starttls(tls_server, listener):
    port = tls_server.submission_port if listener == "submission" else tls_server.mx_port
    d = connect(port)
    d.ehlo("before.tls.test")
    starttls(d)
    r = d.cmd("MAIL FROM:<app@example.test>")
    assert r.code == 503, f"MAIL right after the handshake needs a new EHLO: {r}"
    r = d.ehlo("after.tls.test")
    assert "STARTTLS" not in ehlo_keywords(r), f"STARTTLS offered again: {r}"
    r = d.cmd("STARTTLS")
    assert r.code == 503, f"a second STARTTLS: {r}"
    assert d.cmd("NOOP").code == 250, "the TLS session must survive a refused STARTTLS"
    d.close()


@pytest.mark.parametrize("listener", ["submission", "mx"])
def test_starttls_with_argument_is_refused(tls_server, listener):
    port = tls_server.submission_port if listener == "submission" else tls_server.mx_port
    d = connect(port)
    d.ehlo()
    r = d.cmd("STARTTLS now")
    assert r.code == 501, f"STARTTLS with an argument: {r}"
    # Still clear text and the real STARTTLS works.
    assert d.cmd("NOOP").code == 250
    starttls(d)
    d.ehlo()
    d.close()


def test_starttls_before_ehlo_and_in_transaction(tls_server):
    d = connect(tls_server.mx_port)
    r = d.cmd("STARTTLS")
    assert r.code == 503, f"STARTTLS before EHLO: {r}"
    d.ehlo()
    assert d.cmd("MAIL FROM:<c@outside.test>").code == 250
    r = d.cmd("STARTTLS")
    assert r.code == 503, f"STARTTLS inside a transaction: {r}"
    assert d.cmd("RSET").code == 250
    starttls(d)
    d.ehlo()
    d.close()


# =============================================================== send_as


def test_send_as_mail_from_outside_is_refused(tls_server):
    d = submission_tls(tls_server)
    login(d)
    for sender in (FOREIGN, "app@example.test.evil.test", "ceo@other.test"):
        r = d.cmd(f"MAIL FROM:<{sender}>")
        assert r.is_(553, "5.7.1"), f"MAIL FROM:<{sender}> outside send_as: {r}"
    # Another user's exact address is not ours either.
    d.close()
    d = submission_tls(tls_server)
    login(d, "ceo", OTHER_SECRET)
    r = d.cmd("MAIL FROM:<app@example.test>")
    assert r.is_(553, "5.7.1"), r
    r = d.cmd("MAIL FROM:<ceo@example.test>")
    assert r.code == 250, r
    d.close()
    assert tls_server.queue_list() == []


@pytest.mark.parametrize("headers,why", [
    (f"From: <{FOREIGN}>\r\n", "From: outside send_as"),
    (f"From: Someone <{ALLOWED}>\r\nFrom: <{FOREIGN}>\r\n", "two From: headers"),
    (f"From: <{ALLOWED}>\r\nFrom: <{ALLOWED}>\r\n", "two identical From: headers"),
    (f"From: <{ALLOWED}>, <{FOREIGN}>\r\n", "two mailboxes in From:"),
    (f"From: <{ALLOWED}>, <other@example.test>\r\n", "two allowed mailboxes in From:"),
    ("Sender: <app@example.test>\r\n", "no From: header"),
    ("From: Undisclosed:;\r\n", "an empty group in From:"),
])
def test_send_as_from_header(tls_server, headers, why):
    d = submission_tls(tls_server)
    login(d)
    r = send(d, ALLOWED, "bob@elsewhere.test", message(extra_headers=headers))
    assert r.is_(550, "5.7.1"), f"{why}: {r}"
    # The refusal ends only that transaction.
    r = send(d, ALLOWED, "bob@elsewhere.test", message(subject="good one"))
    assert r.code == 250, r
    qid = queue_id(r)
    assert tls_server.queue_ids() == {qid}, f"the refused message ({why}) was queued"
    d.close()


def test_send_as_allowed_address_is_queued_with_esmtpsa(tls_server):
    srv = tls_server
    d = submission_tls(srv)
    login(d)
    r = send(d, "Someone.Else@Example.Test", "bob@elsewhere.test",
             message(sender="app@example.test", subject="allowed"))
    assert r.code == 250, r
    qid = queue_id(r)
    r = send(d, "alias@other.test", "carol@elsewhere.test",
             message(extra_headers="From: App Alias <alias@other.test>\r\n", subject="alias"))
    assert r.code == 250, r
    qid2 = queue_id(r)
    d.close()
    msgs = {m["id"]: m for m in srv.queue_list()}
    assert set(msgs) == {qid, qid2}, msgs
    assert msgs[qid]["sender"].lower() == "someone.else@example.test"
    assert [x["address"] for x in msgs[qid]["recipients"]] == ["bob@elsewhere.test"]
    rec = received_of(srv, qid)
    assert re.search(r"\bwith ESMTPSA\b", rec), rec
    assert re.search(r"\(version=TLSv1\.3 cipher=\S+\)", rec), rec
    assert f"by {HOST} (mailgate)" in rec, rec
    assert "client.test" in rec, rec  # the EHLO after TLS


# =============================================================== throttling


def _fail_once(port: int, source: str, user: str = "app", password: str = "wrong") -> tuple[Reply, float, Dialogue]:
    d = submission_tls_port(port, source)
    t0 = time.monotonic()
    r = auth_plain(d, user, password)
    return r, time.monotonic() - t0, d


def submission_tls_port(port: int, source: str) -> Dialogue:
    d = connect(port, source)
    d.ehlo()
    starttls(d)
    d.ehlo()
    return d


def test_auth_throttling_per_ip(tls_server):
    srv = tls_server
    ip = "127.0.0.2"
    port = srv.submission_port
    timings = []
    # Failures 1 and 2 are answered at once, then each costs a second more.
    for n in (1, 2, 3, 4):
        user = "app" if n % 2 else "nosuchuser"
        r, dt, d = _fail_once(port, ip, user)
        d.close()
        assert r.code == 535, f"failure {n}: {r}"
        timings.append(dt)
    assert timings[0] < 1.0 and timings[1] < 1.0, f"first failures slowed already: {timings}"
    assert timings[2] >= 0.9, f"3rd failure answered after {timings[2]:.2f}s, expected >= 1 s"
    assert timings[3] >= 1.9, f"4th failure answered after {timings[3]:.2f}s, expected >= 2 s"
    assert timings[3] < 8, timings

    # Failures 5..9 at once on parallel connections (each waits <= 5 s).
    results: list = [None] * 5

    def worker(i):
        try:
            r, dt, d = _fail_once(port, ip, f"guess{i}")
            d.close()
            results[i] = r
        except Exception as e:  # noqa: BLE001
            results[i] = e

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(isinstance(x, Reply) and x.code == 535 for x in results), results

    # The 10th failure is still checked (and slowed down)...
    d = submission_tls_port(port, ip)
    r = auth_plain(d, "app", "still wrong")
    assert r.is_(535, "5.7.8"), f"10th failure: {r}"
    # ...then the address is throttled: 454 4.7.0 (RFC 4954 §6, temporary),
    # without a check, and the connection stays open.
    r = auth_plain(d, "app", "again wrong")
    assert r.is_(454, "4.7.0"), f"after 10 failures: {r}"
    assert d.cmd("NOOP").code == 250
    d.close()

    # Now even the right password is refused from this address...
    d = submission_tls_port(port, ip)
    r = auth_plain(d)
    assert r.is_(454, "4.7.0"), f"right password from a throttled address: {r}"
    d.close()


def test_auth_throttling_per_user_across_addresses(tls_server):
    """10 failures for one user, from 10 addresses: addresses that failed
    are throttled for that user, clean ones are not (or anyone could lock
    the user out)."""
    port = tls_server.submission_port
    ips = [f"127.0.0.{i}" for i in range(31, 41)]
    for n, ip in enumerate(ips, 1):
        r, dt, d = _fail_once(port, ip, "ceo", "guess")
        d.close()
        assert r.code == 535, f"failure {n} from {ip}: {r}"
        assert dt < 1.0, f"a first failure from a new address is not slowed: {dt}"
    # An address that has failed: 454 for this user, even the right password.
    r, _, d = _fail_once(port, ips[0], "ceo", OTHER_SECRET)
    d.close()
    assert r.is_(454, "4.7.0"), f"guarded user from a failing address: {r}"
    # Another user from that address is still checked.
    r, dt, d = _fail_once(port, ips[1], "app", "guess")
    d.close()
    assert r.is_(535, "5.7.8") and dt < 1.0, (r, dt)
    # The real user from a clean address gets in, at once.
    r, dt, d = _fail_once(port, "127.0.0.41", "ceo", OTHER_SECRET)
    d.close()
    assert r.is_(235, "2.7.0") and dt < 1.0, (r, dt)


def test_unknown_user_gets_the_same_reply_as_wrong_password(tls_server):
    port = tls_server.submission_port
    r1, _, d = _fail_once(port, "127.0.0.21", "app", "wrong")
    d.close()
    r2, _, d = _fail_once(port, "127.0.0.22", "nobody-here", "wrong")
    d.close()
    assert r1.raw == r2.raw, f"wrong password {r1.raw!r} vs unknown user {r2.raw!r}"
    assert r1.raw.startswith(AUTH_FAIL.encode()), r1
    # LOGIN too.
    replies = []
    for ip, user in (("127.0.0.23", "app"), ("127.0.0.24", "nobody-here")):
        d = submission_tls_port(port, ip)
        assert d.cmd("AUTH LOGIN").code == 334
        assert d.cmd(b64(user)).code == 334, f"LOGIN asked for no password for {user}"
        replies.append(d.cmd(b64("wrong")).raw)
        d.close()
    assert replies[0] == replies[1] == r1.raw, replies


# =============================================================== user hash


def test_user_hash_reads_stdin_and_ignores_trailing_newline(mailgate_bin, mailgate_factory):
    # No terminal: stdin is a pipe and there is no controlling tty.
    p = subprocess.run([str(mailgate_bin), "user", "hash"], input="pw\n", capture_output=True,
                       text=True, timeout=60, start_new_session=True)
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    lines = p.stdout.splitlines()
    assert len(lines) == 1, f"expected exactly one line on stdout: {p.stdout!r}"
    assert p.stdout.endswith("\n") and p.stdout.count("\n") == 1, repr(p.stdout)
    h = lines[0]
    assert re.fullmatch(r"\$argon2id\$v=19\$m=\d+,t=\d+,p=\d+\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+", h), h
    # Salted: the same password hashes differently each time.
    h2 = hash_password(mailgate_bin, "pw")
    assert h2 != h

    toml = (f'[[user]]\nname = "pwuser"\npassword = "{h}"\nsend_as = ["*@example.test"]\n'
            f'[[user]]\nname = "nlfree"\npassword = "{hash_password(mailgate_bin, "pw", newline=False)}"\n'
            'send_as = ["*@example.test"]\n')
    srv = mailgate_factory("hashsrv", extra_toml=toml).start()
    d = submission_tls(srv)
    assert auth_plain(d, "pwuser", "pw\n").code == 535, "the newline became part of the password"
    assert auth_plain(d, "pwuser", "pw").is_(235, "2.7.0"), "hash of 'pw\\n' does not verify 'pw'"
    d.close()
    d = submission_tls(srv)
    assert auth_plain(d, "nlfree", "pw").is_(235, "2.7.0"), "hash of 'pw' (no newline)"
    d.close()
