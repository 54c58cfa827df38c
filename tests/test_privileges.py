"""Started as root, `mailgate serve` binds its listeners and then runs as
`[server] user`, owning its data_dir; a `user` that does not exist refuses
the start. Checked from outside: /proc/PID/status, a message over SMTP, the
owners of the files in data_dir. Needs root (CI runs as root)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

TEST_USER = "mailgate-test"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="the privilege drop needs root (CI runs as root)"
)


@pytest.fixture
def test_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(TEST_USER)
    except KeyError:
        pass
    subprocess.run(
        ["useradd", "--system", "--no-create-home", TEST_USER], check=True, timeout=30
    )
    return pwd.getpwnam(TEST_USER)


@pytest.fixture
def shared_dir():
    """A data_dir the dropped user can reach: pytest's tmp_path is under a
    root-only (0700) directory."""
    d = Path(tempfile.mkdtemp(prefix="mailgate-privs-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def with_user(srv, user: str) -> None:
    text = srv.config_path.read_text()
    srv.config_path.write_text(text.replace("[server]\n", f'[server]\nuser = "{user}"\n', 1))


def proc_status(pid: int) -> dict[str, list[int]]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            out[key] = [int(x) for x in value.split()]
    return out


def test_root_start_drops_to_the_configured_user(mailgate_factory, test_user, shared_dir):
    data = shared_dir / "data"
    data.mkdir()
    # Something already there (say, from a run as root) changes owner too.
    (data / "left-over").write_text("x")
    srv = mailgate_factory(data_dir=data)
    with_user(srv, TEST_USER)
    srv.start()

    status = proc_status(srv.proc.pid)
    uid, gid = test_user.pw_uid, test_user.pw_gid
    # real, effective, saved and file-system ids
    assert status["Uid"] == [uid] * 4, status
    assert status["Gid"] == [gid] * 4, status
    assert 0 not in status["Groups"], status
    assert "dropped root privileges" in srv.log_text()

    with srv.smtp() as d:
        d.ehlo()
        r = d.transaction(rcpts=("b@example.test",))
        assert r.code == 250, r

    files = [p for p in data.rglob("*")]
    spool = [p for p in files if "spool" in p.parts and p.is_file()]
    assert spool, f"no spool files in {files}"
    wrong = [(str(p), p.lstat().st_uid) for p in [data, *files] if p.lstat().st_uid != uid]
    assert not wrong, f"not owned by {TEST_USER} ({uid}): {wrong}"
    # Nothing stays writable for root only: the message is in a spool
    # file the user wrote after the drop.
    assert any(p.stat().st_size > 0 for p in spool)


def test_unknown_user_refuses_to_start_naming_it(mailgate_factory, shared_dir):
    srv = mailgate_factory(data_dir=shared_dir / "data")
    with_user(srv, "no-such-user-mg")
    p = subprocess.run(
        [str(srv.binary), "serve", "--config", str(srv.config_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert p.returncode != 0, p
    lines = p.stderr.strip().splitlines()
    assert lines and "no-such-user-mg" in lines[-1] and "does not exist" in lines[-1], p
    assert not (shared_dir / "data" / "spool").exists(), "it started the spool before refusing"


def test_without_a_mailgate_user_root_runs_on_with_a_warning(mailgate_factory, shared_dir):
    try:
        pwd.getpwnam("mailgate")
        pytest.skip('a "mailgate" user exists here, so the default applies')
    except KeyError:
        pass
    srv = mailgate_factory(data_dir=shared_dir / "data").start()
    assert proc_status(srv.proc.pid)["Uid"] == [0] * 4
    assert 'there is no user "mailgate"' in srv.log_text()
