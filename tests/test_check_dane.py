"""`mailgate check DOMAIN`'s DANE area against the real binary: the TLSA
records of each MX host served by a loopback DNS zone, and for our own MX
host (`[server] hostname`) the comparison with the key of the certificate
in `[tls] cert`: a record that matches, one that does not (the error that
comes before a certificate change breaks DANE), PKIX-only records, and
none at all. The expected `3 1 1` data is computed here with
`cryptography`, independently of mailgate.
"""

from __future__ import annotations

import datetime
import hashlib
import subprocess
import json
from pathlib import Path

import pytest

pytest.importorskip("dnslib", reason="pip install dnslib")
pytest.importorskip("cryptography", reason="pip install cryptography")

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402
from dnslib import A, MX, TLSA  # noqa: E402
from dnslib.server import DNSLogger, DNSServer  # noqa: E402

from conftest import BIN, free_port  # noqa: E402
from loopdns import Zone  # noqa: E402


def key_311(public_key) -> str:
    spki = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def self_signed(directory: Path, host: str):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .sign(key, hashes.SHA256()))
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    return key_311(key.public_key())


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dane")
    ours = self_signed(tmp, "mx.ours.test")
    # The certificates to install next: one whose key is published beside
    # ours (a rollover under way), one whose key is nowhere.
    (tmp / "next").mkdir()
    other = self_signed(tmp / "next", "mx.ours.test")
    (tmp / "unpublished").mkdir()
    self_signed(tmp / "unpublished", "mx.ours.test")
    zone = Zone()
    tlsa = {
        "match": [(3, 1, 1, ours), (3, 1, 1, other)],
        "mismatch": [(3, 1, 1, other)],
        "pkix": [(1, 1, 1, ours)],
        "none": [],
    }
    for case, records in tlsa.items():
        mx = f"mx.{case}.test"
        zone.add(f"{case}.test", "MX", MX(mx + "."))
        zone.add(mx, "A", A("127.0.0.1"))
        for usage, selector, matching, data in records:
            zone.add(f"_25._tcp.{mx}", "TLSA", TLSA(usage, selector, matching, bytes.fromhex(data)))
    dns = DNSServer(zone, port=free_port(), address="127.0.0.1", logger=DNSLogger(prefix=False, logf=lambda s: None))
    dns.start_thread()
    yield tmp, dns.server.server_address[1], ours, other
    dns.stop()


def config_for(env, hostname: str) -> Path:
    tmp = env[0]
    config = tmp / f"{hostname}.toml"
    config.write_text(f'[server]\nhostname = "{hostname}"\ndata_dir = "{tmp / "data"}"\n'
                      f'[tls]\ncert = "{tmp / "cert.pem"}"\nkey = "{tmp / "key.pem"}"\n'
                      '[dns]\nquery_timeout = 2\nquery_attempts = 1\n')
    return config


def check(env, domain: str, hostname: str, *extra: str):
    _, port, _, _ = env
    config = config_for(env, hostname)
    p = subprocess.run([str(BIN), "--config", str(config), "check", domain, "--nameserver", f"127.0.0.1:{port}",
                        "--allow-private", "--json", *extra], capture_output=True, text=True, timeout=60)
    assert p.stderr == "", p.stderr
    doc = json.loads(p.stdout)
    return p.returncode, {f["code"]: f for f in doc["findings"] if f["check"] == "dane"}


def test_our_key_published_is_a_match(env):
    _, _, ours, other = env
    _, found = check(env, "match.test", "mx.match.test")
    assert set(found) == {"dane-tlsa", "dane-match"}, found
    assert f"3 1 1 {ours}" in found["dane-tlsa"]["message"] and f"3 1 1 {other}" in found["dane-tlsa"]["message"]
    assert ours in found["dane-match"]["message"]


def test_a_certificate_whose_key_is_not_published_is_an_error_before_it_is_served(env):
    _, _, ours, _ = env
    rc, found = check(env, "mismatch.test", "mx.mismatch.test")
    assert set(found) == {"dane-tlsa", "dane-mismatch"}, found
    assert found["dane-mismatch"]["severity"] == "error" and rc == 2
    # The fix names the exact record to publish beside the old one.
    assert f"_25._tcp.mx.mismatch.test. IN TLSA 3 1 1 {ours}" in found["dane-mismatch"]["fix"]


def test_pkix_usages_are_unusable_for_smtp(env):
    rc, found = check(env, "pkix.test", "mx.pkix.test")
    assert found["dane-unusable"]["severity"] == "warning", found
    # 1 1 1 carries our key's digest but is not a DANE-EE record.
    assert "dane-mismatch" in found and rc == 2


def test_no_tlsa_suggests_the_record_for_our_host(env):
    _, _, ours, _ = env
    rc, found = check(env, "none.test", "mx.none.test")
    assert set(found) == {"dane-absent"}, found
    assert f"IN TLSA 3 1 1 {ours}" in found["dane-absent"]["message"]


def test_someone_elses_mx_is_listed_not_compared(env):
    _, found = check(env, "mismatch.test", "mx.ours.test")
    assert set(found) == {"dane-tlsa"}, found


def test_next_certificate_already_published_is_ready(env):
    tmp, _, ours, other = env
    _, found = check(env, "match.test", "mx.match.test", "--next-cert", str(tmp / "next" / "cert.pem"))
    assert set(found) == {"dane-tlsa", "dane-match", "dane-next-ready"}, found
    assert found["dane-next-ready"]["severity"] == "ok" and other in found["dane-next-ready"]["message"]


def test_next_certificate_not_yet_published_is_a_warning_with_the_record(env):
    tmp, _, _, _ = env
    nxt = tmp / "unpublished" / "cert.pem"
    want = key_311(x509.load_pem_x509_certificate(nxt.read_bytes()).public_key())
    rc, found = check(env, "match.test", "mx.match.test", "--next-cert", str(nxt))
    assert set(found) == {"dane-tlsa", "dane-match", "dane-next-missing"}, found
    f = found["dane-next-missing"]
    # (The exit status also reflects the other areas: this zone has no SPF.)
    assert f["severity"] == "warning" and rc >= 1, (f, rc)
    assert f"_25._tcp.mx.match.test. IN TLSA 3 1 1 {want}" in f["fix"], f


def test_an_unreadable_next_certificate_cannot_be_checked(env):
    tmp, port, _, _ = env
    config = config_for(env, "mx.match.test")
    p = subprocess.run([str(BIN), "--config", str(config), "check", "match.test", "--nameserver", f"127.0.0.1:{port}",
                        "--allow-private", "--next-cert", str(tmp / "nope.pem")], capture_output=True, text=True, timeout=60)
    assert p.returncode == 3 and "--next-cert" in p.stderr and "nope.pem" in p.stderr, p


def test_records_prints_the_next_certificates_tlsa_beside_the_current_one(env):
    tmp, _, ours, _ = env
    nxt = tmp / "unpublished" / "cert.pem"
    want = key_311(x509.load_pem_x509_certificate(nxt.read_bytes()).public_key())
    config = config_for(env, "mx.ours.test")
    p = subprocess.run([str(BIN), "--config", str(config), "records", "--next-cert", str(nxt)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p
    lines = [l for l in p.stdout.splitlines() if " IN TLSA " in l]
    assert lines == [f"_25._tcp.mx.ours.test. 3600 IN TLSA 3 1 1 {ours}",
                     f"_25._tcp.mx.ours.test. 3600 IN TLSA 3 1 1 {want}"], p.stdout
    assert "two TTLs" in p.stdout, p.stdout
    # The same key next: nothing to publish.
    same = subprocess.run([str(BIN), "--config", str(config), "records", "--next-cert", str(tmp / "cert.pem")],
                          capture_output=True, text=True, timeout=60)
    assert [l for l in same.stdout.splitlines() if " IN TLSA " in l] == [f"_25._tcp.mx.ours.test. 3600 IN TLSA 3 1 1 {ours}"]
    assert "keeps the key" in same.stdout, same.stdout
    bad = subprocess.run([str(BIN), "--config", str(config), "records", "--next-cert", str(tmp / "nope.pem")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and bad.stdout == "" and "--next-cert" in bad.stderr, bad
