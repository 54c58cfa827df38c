"""`mailgate serve --config F` with a broken config exits non-zero with one
line that names the file and the key."""

import subprocess

import pytest

from conftest import free_port

VALID_BASE = """\
[server]
hostname = "mx.example.test"
data_dir = "{data}"

[[listener]]
role = "mx"
bind = "127.0.0.1:{port}"

[http]
bind = "127.0.0.1:{http}"

[[domain]]
name = "example.test"
deliver = "smtp://127.0.0.1:9"
"""


def run_serve(mailgate_bin, tmp_path, text: str) -> subprocess.CompletedProcess:
    cfg = tmp_path / "broken.toml"
    cfg.write_text(text.format(data=tmp_path / "data", port=free_port(), http=free_port()))
    try:
        return subprocess.run(
            [str(mailgate_bin), "serve", "--config", str(cfg)],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("mailgate started with a broken config instead of exiting")


def check_one_line_error(p, cfg_path, key):
    assert p.returncode != 0, p
    err = p.stderr.strip()
    assert err, "nothing on stderr"
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{err}"
    assert str(cfg_path) in err, f"file not named: {err}"
    assert key in err, f"key {key!r} not named: {err}"


UNKNOWN_KEYS = [
    ("server-hostnme", VALID_BASE.replace('hostname = "mx.example.test"', 'hostnme = "mx.example.test"'), "hostnme"),
    ("limits-typo", VALID_BASE + "\n[limits]\nmax_recipient = 100\n", "max_recipient"),
    ("unknown-section", VALID_BASE + "\n[bogus]\nx = 1\n", "bogus"),
    ("listener-extra-key", VALID_BASE.replace('role = "mx"\n', 'role = "mx"\nport = 25\n'), "port"),
    ("spool-typo", VALID_BASE + "\n[spool]\nmin_free = 0\n", "min_free"),
]


@pytest.mark.parametrize("text,key", [c[1:] for c in UNKNOWN_KEYS], ids=[c[0] for c in UNKNOWN_KEYS])
def test_unknown_config_key_exits_nonzero_with_one_line_naming_file_and_key(mailgate_bin, tmp_path, text, key):
    p = run_serve(mailgate_bin, tmp_path, text)
    check_one_line_error(p, tmp_path / "broken.toml", key)


BAD_VALUES = [
    ("max-recipients-below-100", VALID_BASE + "\n[limits]\nmax_recipients = 5\n", "max_recipients"),
    ("max-errors-wrong-type", VALID_BASE + '\n[limits]\nmax_errors = "many"\n', "max_errors"),
    ("command-timeout-zero", VALID_BASE + "\n[limits]\ncommand_timeout = 0\n", "command_timeout"),
    ("data-timeout-zero", VALID_BASE + "\n[limits]\ndata_timeout = 0\n", "data_timeout"),
    ("max-connections-zero", VALID_BASE + "\n[limits]\nmax_connections = 0\n", "max_connections"),
    ("max-connections-per-ip-zero", VALID_BASE + "\n[limits]\nmax_connections_per_ip = 0\n", "max_connections_per_ip"),
    ("max-message-size-tiny", VALID_BASE + "\n[limits]\nmax_message_size = 10\n", "max_message_size"),
    ("segment-size-tiny", VALID_BASE + "\n[spool]\nsegment_size = 1000\n", "segment_size"),
    ("listener-bind-garbage", VALID_BASE.replace('bind = "127.0.0.1:{port}"', 'bind = "nope"'), "bind"),
    ("listener-role-unknown", VALID_BASE.replace('role = "mx"', 'role = "pop3"'), "role"),
    ("deliver-bad-scheme", VALID_BASE.replace('deliver = "smtp://127.0.0.1:9"', 'deliver = "ftp://x"'), "deliver"),
    ("trusted-networks-garbage", VALID_BASE + '\n[relay]\ntrusted_networks = ["not-a-net"]\n', "trusted_networks"),
    ("hostname-invalid", VALID_BASE.replace('hostname = "mx.example.test"', 'hostname = "bad host!"'), "hostname"),
    ("log-format-unknown", VALID_BASE + '\n[log]\nformat = "xml"\n', "format"),
]


@pytest.mark.parametrize("text,key", [c[1:] for c in BAD_VALUES], ids=[c[0] for c in BAD_VALUES])
def test_bad_config_value_exits_nonzero_with_one_line_naming_file_and_key(mailgate_bin, tmp_path, text, key):
    p = run_serve(mailgate_bin, tmp_path, text)
    check_one_line_error(p, tmp_path / "broken.toml", key)


def test_toml_syntax_error_exits_nonzero_with_one_line_naming_file(mailgate_bin, tmp_path):
    p = run_serve(mailgate_bin, tmp_path, VALID_BASE + "\n[limits\nmax_errors = 3\n")
    check_one_line_error(p, tmp_path / "broken.toml", "broken.toml")


def test_missing_config_file_exits_nonzero_with_one_line(mailgate_bin, tmp_path):
    missing = tmp_path / "nope.toml"
    p = subprocess.run(
        [str(mailgate_bin), "serve", "--config", str(missing)],
        capture_output=True,
        text=True,
        timeout=10,
    )
    check_one_line_error(p, missing, "nope.toml")


def test_valid_base_config_starts(mailgate_bin, tmp_path):
    # Control case: the base config used above is valid, so the failures
    # above come from the one broken key.
    cfg = tmp_path / "ok.toml"
    port = free_port()
    cfg.write_text(VALID_BASE.format(data=tmp_path / "data", port=port, http=free_port()))
    p = subprocess.Popen([str(mailgate_bin), "serve", "--config", str(cfg)], stderr=subprocess.PIPE)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            p.wait(timeout=1)
    finally:
        p.terminate()
        assert p.wait(timeout=15) == 0
