"""A private PostgreSQL server for the cluster tests: Debian's `postgresql`
binaries, `initdb` into a scratch directory and `pg_ctl` to start and stop
it, listening on 127.0.0.1 at a free port and on a socket in that
directory only. It never touches a system cluster.

    with PgServer() as pg:
        url = pg.url            # postgres://postgres@127.0.0.1:PORT/postgres
        pg.stop(); pg.start()   # the database going away and coming back
        pg.sql("SELECT 1")      # psql, for checks

PostgreSQL refuses to run as root, so when the tests run as root the
server runs as the `postgres` user the Debian package creates.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from postfix import free_port, scratch_dir, wait_port


def pg_bin(name: str) -> str | None:
    """The newest installed PostgreSQL's `name` (initdb and pg_ctl are not
    on PATH in Debian)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    return found[-1] if found else shutil.which(name)


def require_postgres() -> None:
    if pg_bin("initdb") is None or pg_bin("pg_ctl") is None:
        pytest.fail("PostgreSQL is not installed: .ci/run installs Debian's postgresql")


class PgServer:
    def __init__(self, base: Path | None = None):
        require_postgres()
        self.base = base or scratch_dir("mg-pg-")
        self.data = self.base / "data"
        self.port = free_port()
        self.run_as = None
        if os.geteuid() == 0:
            self.run_as = "postgres"
            pw = pwd.getpwnam("postgres")
            os.chown(self.base, pw.pw_uid, pw.pw_gid)
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/postgres"
        self._initdb()

    def _cmd(self, *args: str) -> list[str]:
        return (["runuser", "-u", self.run_as, "--"] if self.run_as else []) + list(args)

    def _initdb(self) -> None:
        subprocess.run(self._cmd(pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                                 "--no-sync", "-E", "UTF8", "--locale=C"),
                       check=True, capture_output=True, timeout=120)
        with open(self.data / "postgresql.conf", "a") as f:
            f.write(f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                    f"unix_socket_directories = '{self.base}'\nmax_connections = 200\n"
                    "fsync = on\nlogging_collector = off\n")

    def start(self) -> "PgServer":
        subprocess.run(self._cmd(pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.base / "log"),
                                 "-w", "-t", "60", "start"), check=True, capture_output=True, timeout=90)
        if not wait_port(self.port, 30):
            raise RuntimeError(f"PostgreSQL did not listen on {self.port}:\n{self.log()}")
        return self

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(self._cmd(pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"),
                       capture_output=True, timeout=90)

    def sql(self, query: str) -> str:
        """Runs `query` with psql; answers its unaligned output."""
        out = subprocess.run(["psql", "-X", "-A", "-t", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                              "-d", "postgres", "-c", query], check=True, capture_output=True, text=True, timeout=30)
        return out.stdout.strip()

    def log(self) -> str:
        try:
            return (self.base / "log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def __enter__(self) -> "PgServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)
