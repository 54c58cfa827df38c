"""`mailgate config check --config FILE`: every error with its key and the
file (exit non-zero), warnings about risky choices (exit 0), `ok` for a good
file."""

import subprocess

GOOD = """\
[server]
hostname = "mx.example.test"
data_dir = "data"

[[listener]]
role = "mx"
bind = "127.0.0.1:2525"

[[domain]]
name = "example.test"
deliver = "smtp://127.0.0.1:9"
"""


def check(mailgate_bin, path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(mailgate_bin), "config", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_good_file_is_ok(mailgate_bin, tmp_path):
    cfg = tmp_path / "good.toml"
    cfg.write_text(GOOD)
    p = check(mailgate_bin, cfg)
    assert p.returncode == 0, p
    assert p.stdout == f"ok: {cfg}\n", p
    # Checking starts nothing and writes nothing.
    assert not (tmp_path / "data").exists()


def test_every_error_is_listed_with_key_and_file(mailgate_bin, tmp_path):
    cfg = tmp_path / "bad.toml"
    text = (
        GOOD.replace('hostname = "mx.example.test"', 'hostnme = "mx.example.test"')
        .replace('deliver = "smtp://127.0.0.1:9"', 'deliver = "ftp://x"')
        + "\n[limits]\nmax_recipients = 5\ndata_timeout = 0\n"
        + '\n[relay]\ntrusted_networks = ["not-a-net"]\n'
        + "\n[bogus]\nx = 1\n"
    )
    cfg.write_text(text)
    p = check(mailgate_bin, cfg)
    assert p.returncode != 0, p
    errors = [l for l in p.stdout.splitlines() if l.startswith("error: ")]
    keys = [
        "server.hostnme",
        "domain[0].deliver",
        "limits.max_recipients",
        "limits.data_timeout",
        "relay.trusted_networks",
        "bogus",
    ]
    for key in keys:
        hits = [e for e in errors if key in e]
        assert len(hits) == 1, f"{key}: {hits}; all: {p.stdout}"
        assert str(cfg) in hits[0], hits[0]
    assert len(errors) == len(keys), p.stdout
    assert f"{len(keys)} error(s)" in p.stderr, p


def test_risky_choices_warn_but_pass(mailgate_bin, tmp_path):
    cfg = tmp_path / "risky.toml"
    cfg.write_text(
        """\
[server]
hostname = "mx.example.test"

[[listener]]
role = "mx"
bind = "0.0.0.0:25"

[relay]
trusted_networks = ["10.0.0.0/8", "0.0.0.0/1", "2001:db8::/12"]

[http]
bind = "0.0.0.0:8025"
"""
    )
    p = check(mailgate_bin, cfg)
    assert p.returncode == 0, p
    warnings = [l for l in p.stdout.splitlines() if l.startswith("warning: ")]
    expected = {
        "http.bind": "0.0.0.0:8025",
        "relay.trusted_networks": "0.0.0.0/1",
        "listener[0].bind": "self-signed",
        "domain": "no [[domain]]",
    }
    for key, what in expected.items():
        prefix = f"warning: {cfg}: {key}: "
        assert any(w.startswith(prefix) and what in w for w in warnings), f"{key}: {p.stdout}"
    nets = [w for w in warnings if "relay.trusted_networks" in w]
    # /8 is the widest allowed without a warning; the IPv6 /12 is too wide.
    assert len(nets) == 2 and any("2001:db8::/12" in w for w in nets), nets
    assert p.stdout.splitlines()[-1] == f"ok: {cfg} (5 warning(s))", p


def test_missing_file_is_an_error(mailgate_bin, tmp_path):
    p = check(mailgate_bin, tmp_path / "nope.toml")
    assert p.returncode != 0
    assert "nope.toml" in p.stdout + p.stderr, p
