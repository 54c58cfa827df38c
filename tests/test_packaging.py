"""dist/mailgate.service is a unit systemd accepts as it is: `systemd-analyze
verify` prints nothing about it. The unit is verified as shipped except for
ExecStart's binary path, pointed at the built binary (verify insists that the
binary exists)."""

import shutil
import subprocess

import pytest

from conftest import ROOT

UNIT = ROOT / "dist" / "mailgate.service"
SHIPPED_BIN = "/usr/local/bin/mailgate"


def directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def verify(unit_text: str, mailgate_bin, tmp_path) -> subprocess.CompletedProcess:
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    unit = tmp_path / "mailgate.service"
    unit.write_text(unit_text.replace(SHIPPED_BIN, str(mailgate_bin)))
    return subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )


def test_unit_has_the_hardening_and_commands_we_document():
    d = directives(UNIT.read_text())
    assert d["ExecStart"] == [f"{SHIPPED_BIN} serve --config /etc/mailgate/mailgate.toml"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    for key, value in {
        "Restart": "on-failure",
        "User": "mailgate",
        "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
        "ProtectSystem": "strict",
        "ReadWritePaths": "/var/lib/mailgate",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
    }.items():
        assert d.get(key) == [value], f"{key}={d.get(key)}"


def test_unit_passes_systemd_analyze_verify(mailgate_bin, tmp_path):
    p = verify(UNIT.read_text(), mailgate_bin, tmp_path)
    assert p.returncode == 0, p
    # verify reports bad lines on stderr and still exits 0.
    assert p.stdout.strip() == "" and p.stderr.strip() == "", p


def test_verify_check_catches_a_broken_unit(mailgate_bin, tmp_path):
    # Control: the check above can fail.
    broken = UNIT.read_text().replace("ProtectSystem=strict", "ProtectSystm=strict")
    p = verify(broken, mailgate_bin, tmp_path)
    assert "ProtectSystm" in p.stdout + p.stderr, p
