"""`mailgate check DOMAIN` against the real binary: one loopback DNS zone
per problem (11 SPF lookups, 3 void lookups, two SPF records, an SPF
syntax error, `+all`, weak, too short and revoked DKIM keys, DMARC with
the removed tags and an unauthorised external `rua`, an MTA-STS policy
whose `mx` misses the real MX) and one zone where everything is right.
The MTA-STS policies are served over HTTPS on 127.0.0.1 with a
certificate from a test CA the config's `[delivery] ca_file` trusts.
Each test asserts the codes, severities, exit status and JSON shape.

Then `checkdmarc` (PyPI) reads the same zones through the same loopback
nameserver (a dnspython resolver pinned to it; constructing any other
resolver during its calls fails the test), and its SPF lookup counts and
DMARC parse are compared with ours.
"""

from __future__ import annotations

import base64
import http.server
import json
import ssl
import subprocess
import threading
from pathlib import Path

import pytest

pytest.importorskip("dnslib", reason="pip install dnslib")
crypto = pytest.importorskip("cryptography", reason="pip install cryptography")

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa  # noqa: E402
from dnslib import A, MX  # noqa: E402
from dnslib.server import DNSLogger, DNSServer  # noqa: E402

from conftest import BIN, free_port  # noqa: E402
from loopdns import Zone  # noqa: E402
from testca import make_ca  # noqa: E402

GOOD = "good.test"
CODES_OK = {"mx-ok", "spf-record", "spf-lookups", "spf-void-lookups", "spf-all", "dkim-key-ok", "dmarc-record",
            "dmarc-policy", "dmarc-alignment", "dmarc-destination", "mta-sts-txt", "mta-sts-mode", "mta-sts-mx",
            "mta-sts-max-age", "tls-rpt-ok", "bimi-absent"}


def spki(public_key) -> str:
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


def rsa_record(bits: int) -> str:
    if bits < 1024:
        # cryptography refuses to generate keys this short; the size is
        # the modulus's, which need not be a product of two primes here.
        import secrets
        n = secrets.randbits(bits) | (1 << (bits - 1)) | 1
        key = rsa.RSAPublicNumbers(65537, n).public_key()
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits).public_key()
    return f"v=DKIM1; k=rsa; p={spki(key)}"


def policy(mx: str, mode: str = "enforce", max_age: int = 604800) -> str:
    return f"version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: {max_age}\r\n"


# Every zone: the good one with the named records replaced.
PROBLEMS = {
    "lookups11.test": {"spf": "v=spf1 " + " ".join(f"include:i{i}.lookups11.test" for i in range(1, 12)) + " -all"},
    "void3.test": {"spf": "v=spf1 a:nx1.void3.test a:nx2.void3.test mx:nx3.void3.test ip4:192.0.2.1 -all"},
    "twospf.test": {"spf": ["v=spf1 mx -all", "v=spf1 ip4:192.0.2.1 -all"]},
    "syntax.test": {"spf": "v=spf1 mx ip4:192.0.2.300 -all"},
    "passall.test": {"spf": "v=spf1 mx +all"},
    "weak.test": {"dkim": {"s1": 1024}},
    "short.test": {"dkim": {"s1": 512}},
    "revoked.test": {"dkim": {"s1": "v=DKIM1; k=rsa; p="}},
    "oldtags.test": {"dmarc": "v=DMARC1; p=reject; pct=50; rf=afrf; ri=3600; rua=mailto:dmarc@oldtags.test"},
    "extrua.test": {"dmarc": "v=DMARC1; p=reject; rua=mailto:agg@partner.test,mailto:agg@stranger.test"},
    "stsmx.test": {"policy": policy("mx.elsewhere.test")},
    # Many smaller problems at once, each its own finding.
    "lax.test": {"spf": "v=spf1 ptr ~all", "dmarc": "v=DMARC1; p=none; t=y",
                 "policy": policy("*.lax.test", mode="testing", max_age=3600),
                 "tlsrpt": "v=TLSRPTv1; rua=ftp://reports.lax.test", "bimi": "v=BIMI1; l=http://lax.test/logo.svg"},
}


def publish(zone: Zone, domain: str, policies: dict, keys: dict, change: dict | None = None) -> None:
    change = change or {}
    zone.add(domain, "MX", MX(f"mx.{domain}."))
    zone.add(f"mx.{domain}", "A", A("127.0.0.1"))
    spf = change.get("spf", "v=spf1 ip4:192.0.2.0/24 mx -all")
    for record in spf if isinstance(spf, list) else [spf]:
        zone.txt(domain, record)
    zone.txt(domain, "google-site-verification=not-spf")
    for selector, key in change.get("dkim", {"s1": 2048}).items():
        zone.txt(f"{selector}._domainkey.{domain}", key if isinstance(key, str) else keys[key])
    zone.txt(f"_dmarc.{domain}", change.get("dmarc", f"v=DMARC1; p=reject; sp=quarantine; np=reject; adkim=s; "
                                                      f"rua=mailto:dmarc@{domain}"))
    zone.txt(f"_mta-sts.{domain}", "v=STSv1; id=20261206a")
    zone.add(f"mta-sts.{domain}", "A", A("127.0.0.1"))
    policies[f"mta-sts.{domain}"] = change.get("policy", policy(f"mx.{domain}"))
    zone.txt(f"_smtp._tls.{domain}", change.get("tlsrpt", f"v=TLSRPTv1; rua=mailto:tls@{domain}"))
    if "bimi" in change:
        zone.txt(f"default._bimi.{domain}", change["bimi"])


class PolicyServer:
    """HTTPS on 127.0.0.1: the policy of the host the request names."""

    def __init__(self, policies: dict[str, str], cert: Path, key: Path):
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                host = (self.headers.get("Host") or "").split(":")[0].lower()
                outer.requests.append(f"{host}{self.path}")
                body = policies.get(host)
                if self.path != "/.well-known/mta-sts.txt" or body is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class Env:
    def __init__(self, dns_port: int, config: Path, zone: Zone, server: PolicyServer):
        self.dns_port, self.config, self.zone, self.server = dns_port, config, zone, server

    def run(self, domain: str, *extra: str, allow_private: bool = True, json_out: bool = True,
            nameserver: bool = True, config: Path | None = None) -> tuple[int, dict | str]:
        args = [str(BIN), "--config", str(config or self.config), "check", domain]
        if nameserver:
            args += ["--nameserver", f"127.0.0.1:{self.dns_port}"]
        if allow_private:
            args.append("--allow-private")
        if json_out:
            args.append("--json")
        p = subprocess.run(args + list(extra), capture_output=True, text=True, timeout=60)
        assert p.stderr == "", p.stderr
        if not json_out:
            return p.returncode, p.stdout
        doc = json.loads(p.stdout)
        check_shape(doc, domain)
        return p.returncode, doc


def check_shape(doc: dict, domain: str) -> None:
    assert doc["domain"] == domain
    assert set(doc) == {"domain", "findings", "spf", "dmarc"}
    for f in doc["findings"]:
        assert set(f) == {"check", "severity", "code", "message", "fix"}, f
        assert f["check"] in {"mx", "spf", "dkim", "dmarc", "mta-sts", "tls-rpt", "bimi", "dane"}, f
        assert f["severity"] in {"ok", "warning", "error"}, f
        assert f["code"] and f["code"] == f["code"].lower() and " " not in f["code"], f
        assert f["message"], f
        if f["severity"] != "ok":
            assert f["fix"], f"every warning and error has a fix: {f}"
    # Every area is reported, ok ones too.
    assert {f["check"] for f in doc["findings"]} == {"mx", "spf", "dkim", "dmarc", "mta-sts", "tls-rpt", "bimi", "dane"}
    assert {"records", "lookups", "void_lookups", "tree"} <= set(doc["spf"])
    assert {"record", "policy", "org_domain"} <= set(doc["dmarc"])


def codes(doc: dict, severity: str | None = None) -> set[str]:
    return {f["code"] for f in doc["findings"] if severity is None or f["severity"] == severity}


def problems(doc: dict) -> set[tuple[str, str]]:
    return {(f["code"], f["severity"]) for f in doc["findings"] if f["severity"] != "ok"}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("check")
    keys = {2048: rsa_record(2048), 1024: rsa_record(1024), 512: rsa_record(512)}
    zone, policies = Zone(), {}
    publish(zone, GOOD, policies, keys)
    zone.add(f"sub.{GOOD}", "A", A("127.0.0.1"))
    for domain, change in PROBLEMS.items():
        publish(zone, domain, policies, keys, change)
    for i in range(1, 12):
        zone.txt(f"i{i}.lookups11.test", f"v=spf1 ip4:192.0.2.{i} -all")
    # extrua.test's reports may go to partner.test, not to stranger.test.
    zone.txt("extrua.test._report._dmarc.partner.test", "v=DMARC1")
    for dest in ("partner.test", "stranger.test"):
        zone.add(dest, "MX", MX("mx.good.test."))
    zone.add("ed.test", "MX", MX("mx.good.test."))
    zone.txt("ed.test", "v=spf1 -all")
    ed = ed25519.Ed25519PrivateKey.generate().public_key()
    zone.txt("default._domainkey.ed.test", "v=DKIM1; k=ed25519; t=y; p=" + base64.b64encode(
        ed.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode())
    ca, cert, key = make_ca(tmp, sorted(policies))
    server = PolicyServer(policies, cert, key)
    dns = DNSServer(zone, port=free_port(), address="127.0.0.1", logger=DNSLogger(prefix=False, logf=lambda s: None))
    dns.start_thread()
    config = tmp / "check.toml"
    config.write_text(f'[delivery]\nca_file = "{ca}"\nmta_sts_port = {server.port}\n'
                      f'[dns]\nquery_timeout = 2\nquery_attempts = 1\n')
    e = Env(dns.server.server_address[1], config, zone, server)
    e.tmp, e.ca = tmp, ca
    yield e
    server.stop()
    dns.stop()


def test_all_correct_zone_is_ok(env):
    rc, doc = env.run(GOOD)
    assert problems(doc) == set(), doc["findings"]
    assert rc == 0
    assert CODES_OK - {"dmarc-destination"} <= codes(doc, "ok")
    assert doc["spf"]["records"] == ["v=spf1 ip4:192.0.2.0/24 mx -all"]
    assert doc["spf"]["lookups"] == 1 and doc["spf"]["void_lookups"] == 0
    assert doc["dmarc"] == {"record": f"v=DMARC1; p=reject; sp=quarantine; np=reject; adkim=s; rua=mailto:dmarc@{GOOD}",
                            "policy": "reject", "org_domain": GOOD, "found_at": GOOD}
    # The policy was fetched over HTTPS from the loopback server.
    assert f"mta-sts.{GOOD}/.well-known/mta-sts.txt" in env.server.requests
    # The text form has every finding too, and the same exit status.
    rc, text = env.run(GOOD, json_out=False)
    assert rc == 0 and "mx-ok" in text and "SPF TREE" in text and "0 warning(s), 0 error(s)" in text


def test_private_addresses_warn_without_allow_private(env):
    rc, doc = env.run(GOOD, allow_private=False)
    assert problems(doc) == {("mx-private-address", "warning"), ("mta-sts-private-address", "warning")}
    assert rc == 1


def test_nameservers_from_config(env, tmp_path):
    config = tmp_path / "dns.toml"
    config.write_text(env.config.read_text().replace("[dns]\n", f'[dns]\nnameservers = ["127.0.0.1:{env.dns_port}"]\n'))
    rc, doc = env.run(GOOD, nameserver=False, config=config)
    assert rc == 0 and problems(doc) == set()


def test_eleven_lookups(env):
    rc, doc = env.run("lookups11.test")
    assert problems(doc) == {("spf-too-many-lookups", "error")}
    assert rc == 2
    assert doc["spf"]["lookups"] == 11
    tree = doc["spf"]["tree"]
    # Every include is named, the eleventh (past the limit) too.
    assert [c["domain"] for c in tree["children"]] == [f"i{i}.lookups11.test" for i in range(1, 12)]
    assert all(c["via"] == "include" and c["record"].startswith("v=spf1") for c in tree["children"])
    assert tree["total_lookups"] == 11


def test_three_void_lookups(env):
    rc, doc = env.run("void3.test")
    assert problems(doc) == {("spf-too-many-void-lookups", "error")}
    assert rc == 2
    assert doc["spf"]["void_lookups"] == 3 and doc["spf"]["lookups"] == 3


def test_two_spf_records(env):
    rc, doc = env.run("twospf.test")
    assert problems(doc) == {("spf-multiple-records", "error")}
    assert rc == 2
    assert sorted(doc["spf"]["records"]) == ["v=spf1 ip4:192.0.2.1 -all", "v=spf1 mx -all"]


def test_spf_syntax_error(env):
    rc, doc = env.run("syntax.test")
    assert problems(doc) == {("spf-syntax", "error")}
    assert rc == 2
    assert "192.0.2.300" in next(f["message"] for f in doc["findings"] if f["code"] == "spf-syntax")


def test_pass_all(env):
    rc, doc = env.run("passall.test")
    assert problems(doc) == {("spf-pass-all", "error")}
    assert rc == 2


@pytest.mark.parametrize("domain,expected,status", [
    ("weak.test", ("dkim-key-weak", "warning"), 1),
    ("short.test", ("dkim-key-too-short", "error"), 2),
    ("revoked.test", ("dkim-key-revoked", "warning"), 1),
])
def test_dkim_keys(env, domain, expected, status):
    rc, doc = env.run(domain)
    assert problems(doc) == {expected}
    assert rc == status


def test_ed25519_key_in_testing_mode(env):
    _, doc = env.run("ed.test")
    dkim = {(f["code"], f["severity"]) for f in doc["findings"] if f["check"] == "dkim"}
    assert dkim == {("dkim-key-ok", "ok"), ("dkim-testing", "warning")}
    assert "Ed25519" in next(f["message"] for f in doc["findings"] if f["code"] == "dkim-key-ok")


def test_dmarc_removed_tags(env):
    rc, doc = env.run("oldtags.test")
    assert problems(doc) == {("dmarc-removed-tag", "warning")}
    messages = [f["message"] for f in doc["findings"] if f["code"] == "dmarc-removed-tag"]
    assert len(messages) == 3
    assert [m.split("=")[0] for m in messages] == ["pct", "rf", "ri"]
    assert rc == 1


def test_dmarc_unauthorised_external_rua(env):
    rc, doc = env.run("extrua.test")
    assert problems(doc) == {("dmarc-external-unauthorized", "warning")}
    bad = [f["message"] for f in doc["findings"] if f["code"] == "dmarc-external-unauthorized"]
    assert len(bad) == 1 and "stranger.test" in bad[0]
    good = [f["message"] for f in doc["findings"] if f["code"] == "dmarc-destination"]
    assert len(good) == 1 and "partner.test" in good[0]
    assert rc == 1


def test_mta_sts_policy_misses_the_mx(env):
    rc, doc = env.run("stsmx.test")
    assert problems(doc) == {("mta-sts-mx-mismatch", "error")}
    assert rc == 2
    assert "mx.stsmx.test" in next(f["message"] for f in doc["findings"] if f["code"] == "mta-sts-mx-mismatch")


def test_lax_records(env):
    rc, doc = env.run("lax.test")
    assert problems(doc) == {
        ("spf-ptr", "warning"), ("spf-softfail-all", "warning"),
        ("dmarc-policy-none", "warning"), ("dmarc-testing", "warning"), ("dmarc-no-rua", "warning"),
        ("mta-sts-testing", "warning"), ("mta-sts-max-age-short", "warning"),
        ("tls-rpt-syntax", "error"), ("bimi-syntax", "error"), ("bimi-needs-dmarc-enforcement", "warning"),
    }
    assert rc == 2
    # The wildcard pattern covers the MX host.
    assert "mta-sts-mx" in codes(doc, "ok")
    assert doc["dmarc"]["policy"] == "none"


def test_untrusted_policy_certificate_fails_the_fetch(env, tmp_path):
    """Without the test CA the same policy cannot be fetched: the check
    verifies the certificate as delivery does."""
    config = tmp_path / "noca.toml"
    config.write_text("\n".join(line for line in env.config.read_text().splitlines() if "ca_file" not in line) + "\n")
    rc, doc = env.run(GOOD, config=config)
    assert problems(doc) == {("mta-sts-fetch-failed", "error")}
    assert rc == 2


def test_subdomain_policies(env):
    """The policy that applies: sp for an existing subdomain, np for one
    that does not exist; the organisational domain from the tree walk."""
    _, doc = env.run(f"sub.{GOOD}")
    assert doc["dmarc"]["policy"] == "quarantine" and doc["dmarc"]["org_domain"] == GOOD
    assert doc["dmarc"]["found_at"] == GOOD
    _, doc = env.run(f"nx.{GOOD}")
    assert doc["dmarc"]["policy"] == "reject" and doc["dmarc"]["org_domain"] == GOOD
    assert ("domain-not-found", "error") in problems(doc)


# ---- cross-check with checkdmarc ----

def pinned_checkdmarc(env, monkeypatch):
    checkdmarc = pytest.importorskip("checkdmarc", reason="pip install checkdmarc")
    import checkdmarc.dmarc
    import checkdmarc.spf
    import dns.resolver
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = env.dns_port
    resolver.timeout = resolver.lifetime = 2.0

    def no_other_resolver(*args, **kwargs):
        raise AssertionError("checkdmarc tried to build its own resolver (the system's)")
    # Every call below passes `resolver=`; one that built another resolver
    # (and so could reach the system's nameservers) fails the test.
    monkeypatch.setattr(dns.resolver, "Resolver", no_other_resolver)
    monkeypatch.setattr(dns.resolver, "default_resolver", resolver)
    return checkdmarc, resolver


@pytest.mark.parametrize("domain", [GOOD, "lookups11.test", "void3.test", "passall.test"])
def test_spf_counts_agree_with_checkdmarc(env, monkeypatch, domain):
    _, doc = env.run(domain)
    checkdmarc, resolver = pinned_checkdmarc(env, monkeypatch)
    record = doc["spf"]["records"][0]
    try:
        theirs = checkdmarc.spf.parse_spf_record(record, domain, ignore_too_many_lookups=True, resolver=resolver)
    except checkdmarc.spf.SPFTooManyVoidDNSLookups as e:
        # Difference: checkdmarc stops at the third void lookup (it raises
        # even with ignore_too_many_lookups), so only that count compares;
        # we go on to count every term and show the whole tree.
        assert domain == "void3.test"
        assert e.data["void_dns_lookups"] == doc["spf"]["void_lookups"] == 3
        return
    assert theirs["dns_lookups"] == doc["spf"]["lookups"], theirs
    assert theirs["void_dns_lookups"] == doc["spf"]["void_lookups"], theirs


@pytest.mark.parametrize("domain", [GOOD, "oldtags.test", "extrua.test"])
def test_dmarc_parse_agrees_with_checkdmarc(env, monkeypatch, domain):
    _, doc = env.run(domain)
    checkdmarc, resolver = pinned_checkdmarc(env, monkeypatch)
    theirs = checkdmarc.dmarc.check_dmarc(domain, resolver=resolver)
    assert theirs["record"] == doc["dmarc"]["record"], theirs
    tags = theirs["tags"]
    assert tags["p"]["value"] == doc["dmarc"]["policy"]
    ours_rua = [m.split("=", 1)[1] for m in doc["dmarc"]["record"].split("; ") if m.startswith("rua=")][0].split(",")
    assert [u["scheme"] + ":" + u["address"] for u in tags["rua"]["value"]] == ours_rua
    # Both read sp/np as p when absent, and the alignment defaults alike.
    for tag in ("sp", "np", "adkim", "aspf"):
        assert tags[tag]["value"][0] == record_tag(doc, tag, default=tags[tag]["value"])[0], tag
    assert tags["t"]["value"] == "n" and "dmarc-testing" not in codes(doc)
    # The removed tags: checkdmarc warns "Support for the pct tag was
    # removed in RFC 9989"; we give one dmarc-removed-tag per tag.
    theirs_removed = sorted(w.split(" the ")[1].split(" tag")[0] for w in theirs["warnings"] if "was removed" in w)
    ours_removed = sorted(f["message"].split("=")[0] for f in doc["findings"] if f["code"] == "dmarc-removed-tag")
    assert theirs_removed == ours_removed
    # The external destinations: both find stranger.test unauthorised.
    theirs_unauth = sorted(w.split(" ")[0] for w in theirs["warnings"] if "does not indicate" in w)
    ours_unauth = sorted(f["message"].split("@")[1].split(" ")[0] for f in doc["findings"]
                         if f["code"] == "dmarc-external-unauthorized")
    assert theirs_unauth == ours_unauth
    # Difference: checkdmarc also warns when a rua domain has no MX; every
    # destination here has one, and we leave mail routing to the sender.
    assert not [w for w in theirs["warnings"] if "MX" in w], theirs["warnings"]


def record_tag(doc: dict, tag: str, default: str) -> str:
    for part in doc["dmarc"]["record"].split(";"):
        k, _, v = part.strip().partition("=")
        if k == tag:
            return v
    if tag in ("sp", "np"):
        return doc["dmarc"]["policy"]
    return default


def test_configured_selector(env, tmp_path):
    """The selectors mailgate signs with come from --config's key store: a
    key not yet in DNS is an error; once published, it is checked."""
    config = tmp_path / "ours.toml"
    config.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\n'
                      f'[[domain]]\nname = "{GOOD}"\ndeliver = "smtp://127.0.0.1:9"\n' + env.config.read_text())
    p = subprocess.run([str(BIN), "--config", str(config), "dkim", "keygen", "--domain", GOOD, "--algorithm", "ed25519",
                        "--selector", "mgtest"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    rc, doc = env.run(GOOD, config=config)
    assert problems(doc) == {("dkim-key-missing", "error")}
    assert rc == 2
    record = "".join(p.stdout.split(" IN TXT ", 1)[1].strip().strip('"').split('" "'))
    env.zone.txt(f"mgtest._domainkey.{GOOD}", record)
    try:
        rc, doc = env.run(GOOD, config=config)
        assert problems(doc) == set() and rc == 0
        assert any(f["code"] == "dkim-key-ok" and f["message"].startswith(f"mgtest._domainkey.{GOOD}: Ed25519")
                   for f in doc["findings"])
    finally:
        del env.zone.records[f"mgtest._domainkey.{GOOD}."]
