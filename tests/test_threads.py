"""`[server] smtp_threads`: SMTP sessions run on threads of their own
(`smtp-0`, `smtp-1`, ...), each accepting on every listener; the default
is half the cores, at least one."""

import concurrent.futures
import math
import os
import smtplib
import subprocess
from pathlib import Path

import pytest

MESSAGE = "From: a@client.example.net\r\nTo: rcpt@example.test\r\nSubject: t\r\n\r\nbody\r\n"


def smtp_threads(pid: int) -> list[str]:
    names = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        if name.startswith("smtp-"):
            names.append(name)
    return sorted(names)


def send(port: int, i: int) -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.ehlo("client.example.net")
        s.mail(f"sender{i}@client.example.net")
        code, _ = s.rcpt("rcpt@example.test")
        assert code == 250, code
        code, reply = s.data(MESSAGE)
        assert code == 250, (code, reply)
        return reply.decode()


def cores() -> set[int]:
    """What the server may count as its cores: the CPUs it may run on, or
    fewer under a cgroup CPU quota."""
    n = len(os.sched_getaffinity(0))
    out = {n}
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            out.add(max(1, min(n, math.ceil(int(quota) / int(period)))))
    except (OSError, ValueError):
        pass
    return out


@pytest.mark.mailgate(server={"smtp_threads": 3})
def test_sessions_run_on_the_configured_threads_over_every_listener(server):
    assert smtp_threads(server.proc.pid) == ["smtp-0", "smtp-1", "smtp-2"]
    # More sessions at once than threads: every one is served and stored.
    with concurrent.futures.ThreadPoolExecutor(max_workers=24) as pool:
        replies = list(pool.map(lambda i: send(server.mx_port, i), range(60)))
    assert all("queued as" in r for r in replies), replies
    assert len(server.queue_ids()) == 60
    # The submission listener is served by the same threads.
    with smtplib.SMTP("127.0.0.1", server.submission_port, timeout=30) as s:
        code, features = s.ehlo("client.example.net")
        assert code == 250 and b"STARTTLS" in features, features
    assert "SMTP sessions run on their own threads" in server.log_text()


def test_the_default_is_half_the_cores(server):
    got = len(smtp_threads(server.proc.pid))
    assert got in {max(1, n // 2) for n in cores()}, (got, cores())


@pytest.mark.parametrize("value", [257, -1])
def test_out_of_range_is_a_config_error(mailgate_factory, value):
    srv = mailgate_factory(server={"smtp_threads": value})
    out = subprocess.run(
        [str(srv.binary), "config", "check", "--config", str(srv.config_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode != 0
    assert "server.smtp_threads" in out.stdout + out.stderr, out
