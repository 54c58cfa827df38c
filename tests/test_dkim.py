"""DKIM signing, verified independently: mail submitted through the real
binary is captured at a sink and both of its signatures (Ed25519 and
RSA-2048) are verified by dkimpy, one by one, against the key records that
`mailgate records` printed, served by a loopback DNS server (dnslib) and
fetched over UDP with dnspython. Nothing leaves 127.0.0.0/8.

Also: a changed body byte or a prepended second `From:` breaks both
signatures (oversigning); mail relayed for a foreign `From:` domain is not
signed; the output of `mailgate records` passes `named-checkzone`
(Debian `bind9-utils`).

PyPI: dkimpy, pynacl (Ed25519), dnspython, dnslib.
"""

from __future__ import annotations

import os
import re
import shutil
import smtplib
import ssl
import subprocess
import time

import pytest

dkim = pytest.importorskip("dkim", reason="pip install dkimpy")
pytest.importorskip("nacl", reason="pip install pynacl (dkimpy needs it for Ed25519)")
dns_message = pytest.importorskip("dns.message", reason="pip install dnspython")
import dns.query  # noqa: E402
import dns.rdatatype  # noqa: E402
pytest.importorskip("dnslib", reason="pip install dnslib")

from conftest import _RUNNING, MailgateServer, free_port  # noqa: E402
from helpers import Dialogue, queue_id  # noqa: E402
from loopdns import LoopbackDns  # noqa: E402
from postfix import PySink  # noqa: E402

OURS = "mg.test"          # signed: a [[domain]] without `dkim = false`
FAR = "far.test"          # a [[domain]] with `dkim = false`: the sink
SECRET = "s3cret-dkim-pass"
WAIT = 20.0

# Oversigned, per the issue: present n times, listed n+1 times in h=.
OVERSIGNED = ("from", "subject", "date", "to", "cc", "message-id", "reply-to",
              "mime-version", "content-type", "content-transfer-encoding")


# --------------------------------------------------------------- DNS


def parse_records(text: str) -> list[tuple[str, str, list[str]]]:
    """`mailgate records` lines -> (absolute name, type, TXT strings)."""
    out = []
    for line in text.splitlines():
        if not line.strip() or line.startswith((";", "$")):
            continue
        m = re.match(r"^(\S+)\s+(\d+)\s+IN\s+(\S+)\s+(.*)$", line)
        assert m, f"unparsable record line {line!r}"
        name, _ttl, rtype, rest = m.groups()
        assert name.endswith("."), f"name not absolute: {line!r}"
        strings = re.findall(r'"((?:[^"\\]|\\.)*)"', rest) if rtype == "TXT" else [rest]
        out.append((name, rtype, strings))
    return out


# --------------------------------------------------------------- servers


def domains_toml(sink: PySink, *, ours_extra: str = "") -> str:
    return (f'[[domain]]\nname = "{OURS}"\ndeliver = "{sink.url()}"\n{ours_extra}'
            f'[[domain]]\nname = "{FAR}"\ndeliver = "{sink.url()}"\ndkim = false\n')


class Env:
    """A started server, its sink, and a DNS server holding its records."""

    def __init__(self, srv: MailgateServer, sink: PySink, dns: LoopbackDns):
        self.srv, self.sink, self.dns = srv, sink, dns
        self.records_text = srv.cli("records").stdout
        self.records = parse_records(self.records_text)
        dns.resolver.load(self.records)
        self.selectors = {
            name.split("._domainkey.")[0]: "".join(strings)
            for name, rtype, strings in self.records
            if rtype == "TXT" and name.endswith(f"._domainkey.{OURS}.")
        }

    def delivered(self, marker: str) -> bytes:
        got = self.sink.wait_for(lambda m: marker.encode() in m["content"], WAIT)
        assert got, (f"message {marker} not delivered to the sink within {WAIT}s; "
                     f"queue: {self.srv.queue_list()}")
        assert len(got) == 1, f"{marker} delivered {len(got)} times"
        return got[0]["content"]


def start_env(tmp_path_factory, name: str, extra_toml: str, relay: dict | None,
              sink: PySink) -> Env:
    from conftest import BIN
    assert BIN.exists(), f"{BIN} not built (cargo build --release)"
    srv = MailgateServer(BIN, tmp_path_factory.mktemp(name), relay=relay,
                         extra_toml=extra_toml, dns_port=free_port())
    # The DNS server listens where the server's [dns] nameservers point, so
    # mailgate's own lookups (`dkim status`) are answered from it too.
    dns = LoopbackDns(srv.dns_port)
    try:
        srv.start()
    except Exception:
        dns.stop()
        raise
    return Env(srv, sink, dns)


def stop_env(env: Env) -> None:
    rc = env.srv.stop()
    while env.srv in _RUNNING:
        _RUNNING.remove(env.srv)
    env.dns.stop()
    assert rc == 0, f"mailgate exited {rc} after SIGTERM"


@pytest.fixture(scope="module")
def sink():
    s = PySink().start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def relay_env(mailgate_bin, tmp_path_factory, sink):
    """Signs for trusted-network clients (127.0.0.0/8) on the mx port."""
    env = start_env(tmp_path_factory, "relay", domains_toml(sink),
                    {"trusted_networks": ["127.0.0.0/8"]}, sink)
    yield env
    stop_env(env)


def hash_password(binary, password: str) -> str:
    p = subprocess.run([str(binary), "user", "hash"], input=password + "\n",
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


@pytest.fixture(scope="module")
def submission_env(mailgate_bin, tmp_path_factory, sink):
    """No trusted networks: only an authenticated user's mail is signed;
    signatures expire (`dkim_expire`)."""
    h = hash_password(mailgate_bin, SECRET)
    users = (f'[[user]]\nname = "app"\npassword = "{h}"\n'
             f'send_as = ["*@{OURS}", "*@news.{OURS}"]\n')
    env = start_env(tmp_path_factory, "submission",
                    domains_toml(sink, ours_extra="dkim_expire = 86400\n") + users,
                    None, sink)
    yield env
    stop_env(env)


# --------------------------------------------------------------- messages


def message(marker: str, from_addr: str = f"Alice Example <alice@{OURS}>",
            size: int = 5120) -> bytes:
    head = (
        f"From: {from_addr}\r\n"
        f"To: Bob <bob@{FAR}>\r\n"
        f"Cc: carol@{FAR}\r\n"
        f"Reply-To: replies@{OURS}\r\n"
        f"Subject: DKIM check {marker} with a subject long enough that a\r\n"
        "\tclient folds it onto a second line\r\n"
        "Date: Mon, 23 Nov 2026 12:00:00 +0000\r\n"
        f"Message-ID: <{marker}@{OURS}>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "X-Unsigned: not in h=\r\n"
        "\r\n"
    )
    body = [f"Marker {marker}.", "Trailing  white space   \t", "",
            ".a line that SMTP dot-stuffs", "Grüße, 8-bit text."]
    i = 0
    while sum(len(l) + 2 for l in body) < size - len(head):
        body.append(f"line {i:04d} the quick brown fox jumps over the lazy dog  ")
        i += 1
    return head.encode() + "\r\n".join(body).encode() + b"\r\n\r\n\r\n"


def stuff(data: bytes) -> bytes:
    """SMTP dot-stuffing (Dialogue.transaction sends the body as it is)."""
    out = data.replace(b"\r\n.", b"\r\n..")
    return b"." + out if out.startswith(b".") else out


def relay_send(env: Env, msg: bytes, sender: str) -> str:
    with Dialogue(env.srv.mx_port) as d:
        assert d.ehlo("app.mg.test").code == 250
        r = d.transaction(sender=sender, rcpts=(f"bob@{FAR}",), body=stuff(msg))
        assert r.code == 250, r
        d.cmd("QUIT")
    return queue_id(r)


def signatures(content: bytes) -> list[dict[str, str]]:
    """The DKIM-Signature fields, in order, as tag dicts (b= unfolded)."""
    head = content.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    fields = re.split(r"\r\n(?![ \t])", head)
    out = []
    for f in fields:
        name, _, value = f.partition(":")
        if name.strip().lower() != "dkim-signature":
            continue
        value = re.sub(r"\s+", " ", value.replace("\r\n", ""))
        tags = {}
        for part in value.split(";"):
            if "=" in part:
                k, v = part.split("=", 1)
                tags[k.strip()] = v.strip()
        tags["b"] = re.sub(r"\s", "", tags.get("b", ""))
        tags["bh"] = re.sub(r"\s", "", tags.get("bh", ""))
        out.append(tags)
    return out


def verify_with_reason(env: Env, content: bytes, idx: int) -> tuple[bool, str]:
    """dkimpy's verdict on signature `idx` and its log (or exception)."""
    import io
    import logging
    buf = io.StringIO()
    log = logging.getLogger(f"dkimpy-{idx}-{time.monotonic_ns()}")
    log.propagate = False
    log.addHandler(logging.StreamHandler(buf))
    log.setLevel(logging.DEBUG)
    try:
        ok = dkim.DKIM(content, logger=log, minkey=1024).verify(idx=idx, dnsfunc=env.dns.dnsfunc)
        return bool(ok), buf.getvalue()
    except dkim.DKIMException as e:
        return False, f"{buf.getvalue()}\n{type(e).__name__}: {e}"


def verify_each(env: Env, content: bytes) -> tuple[dict[str, bool], dict[str, str]]:
    """dkimpy's verdict per signature, keyed by a=, each index verified
    separately; and the reasons."""
    verdicts, reasons = {}, {}
    for idx, tags in enumerate(signatures(content)):
        key = tags.get("a", f"idx{idx}")
        verdicts[key], reasons[key] = verify_with_reason(env, content, idx)
    return verdicts, reasons


def mailgate_verify(env: Env, content: bytes) -> dict[str, str]:
    """mailgate's own verifier (`mailgate verify --json`) on the captured
    message, against the same loopback DNS: DKIM result per a=."""
    import json
    p = subprocess.run(
        [str(env.srv.binary), "--config", str(env.srv.config_path), "verify", "--ip", "127.0.0.1",
         "--helo", "client.test", "--mail-from", f"alice@{OURS}", "--nameserver", f"127.0.0.1:{env.dns.port}",
         "--json", "-"], input=content, capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return {d["algorithm"]: d["result"] for d in json.loads(p.stdout)["dkim"]}


OWN_PASS = {"ed25519-sha256": "pass", "rsa-sha256": "pass"}
BOTH_VALID = {"ed25519-sha256": True, "rsa-sha256": True}
BOTH_INVALID = {"ed25519-sha256": False, "rsa-sha256": False}


def assert_signed_and_valid(env: Env, content: bytes, t0: float, t1: float,
                            expire: int | None = None) -> list[dict[str, str]]:
    sigs = signatures(content)
    assert len(sigs) == 2, f"expected 2 DKIM-Signature fields, got {sigs}"
    assert sorted(s.get("a") for s in sigs) == ["ed25519-sha256", "rsa-sha256"], sigs
    for s in sigs:
        assert s.get("d") == OURS, s
        assert s.get("c") == "relaxed/relaxed", s
        assert s.get("s") in env.selectors, (s, env.selectors)
        assert "l" not in s, f"l= must never be set: {s}"
        assert "t" in s and t0 - 5 <= int(s["t"]) <= t1 + 5, (s, t0, t1)
        if expire is None:
            assert "x" not in s, s
        else:
            assert int(s["x"]) == int(s["t"]) + expire, s
        record = env.selectors[s["s"]]
        want_k = "ed25519" if s["a"] == "ed25519-sha256" else "rsa"
        assert f"k={want_k};" in record.replace(" ", ""), (s["s"], record)
        names = [n.strip().lower() for n in s["h"].split(":")]
        head = content.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
        for name in OVERSIGNED:
            present = len(re.findall(rf"^{re.escape(name)}\s*:", head, re.I | re.M))
            assert present >= 1, f"test message lacks {name}"
            assert names.count(name) == present + 1, f"{name} not oversigned: h={s['h']}"
        assert "x-unsigned" not in names, s["h"]
    queries_before = len(env.dns.resolver.queries)
    for idx, s in enumerate(sigs):
        ok, why = verify_with_reason(env, content, idx)
        assert ok, (f"dkimpy rejects signature {idx} (a={s['a']}, s={s['s']}): {why}\n"
                    f"--- message ---\n{content[:3000].decode('utf-8', 'replace')}")
    asked = env.dns.resolver.queries[queries_before:]
    for s in sigs:
        assert f"{s['s']}._domainkey.{OURS}." in asked, (
            f"dkimpy did not fetch {s['s']}'s key from the loopback DNS: {asked}")
    # And mailgate's own verifier agrees.
    assert mailgate_verify(env, content) == OWN_PASS
    return sigs


# --------------------------------------------------------------- tests


def test_trusted_relay_both_signatures_verify_with_dkimpy(relay_env):
    env = relay_env
    assert len(env.selectors) == 2, f"expected 2 DKIM records in `mailgate records`:\n{env.records_text}"
    status = env.srv.cli("dkim", "status", "--json").stdout
    import json
    keys = [k for k in json.loads(status)["keys"] if k["domain"] == OURS]
    assert {k["selector"] for k in keys} == set(env.selectors), (keys, env.selectors)
    assert {k["algorithm"] for k in keys} == {"ed25519", "rsa2048"}, keys
    assert all(k["state"] == "active" for k in keys), keys
    # mailgate's own check finds the records in our DNS (it queries it).
    assert all(k.get("dns_matches") is True for k in keys), keys

    t0 = time.time()
    relay_send(env, message("relay-1"), f"alice@{OURS}")
    t1 = time.time()
    content = env.delivered("relay-1")
    assert_signed_and_valid(env, content, t0, t1)
    # dkimpy's own top-level API agrees (it checks the first signature).
    assert dkim.verify(content, dnsfunc=env.dns.dnsfunc)


def test_subdomain_from_is_signed_for_the_parent_domain(relay_env):
    env = relay_env
    t0 = time.time()
    relay_send(env, message("relay-sub", from_addr=f"News <news@lists.{OURS}>"), f"news@lists.{OURS}")
    content = env.delivered("relay-sub")
    assert_signed_and_valid(env, content, t0, time.time())


def test_authenticated_submission_is_signed_and_verifies(submission_env):
    env = submission_env
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    msg = message("submit-1", from_addr=f"App <app@news.{OURS}>")
    t0 = time.time()
    with smtplib.SMTP("127.0.0.1", env.srv.submission_port, timeout=15) as s:
        s.ehlo("client.test")
        s.starttls(context=ctx)
        s.ehlo("client.test")
        s.login("app", SECRET)
        refused = s.sendmail(f"app@news.{OURS}", [f"bob@{FAR}"], msg)
        assert refused == {}, refused
    t1 = time.time()
    content = env.delivered("submit-1")
    assert_signed_and_valid(env, content, t0, t1, expire=86400)
    # Authenticated submission skips the inbound checks: no verdict added.
    assert b"Authentication-Results" not in content and b"X-Mailgate-" not in content


def test_unauthenticated_inbound_mail_is_not_signed(submission_env):
    """Control for the test above: the same server signs nothing for a
    client that is neither authenticated nor trusted."""
    env = submission_env
    with Dialogue(env.srv.mx_port) as d:
        assert d.ehlo("outside.test").code == 250
        r = d.transaction(sender="x@outside.test", rcpts=(f"bob@{FAR}",),
                          body=stuff(message("inbound-1")))
        assert r.code == 250, r
    content = env.delivered("inbound-1")
    assert signatures(content) == [], "inbound mail must not carry our signature"
    # ...and is checked instead.
    assert b"Authentication-Results: mx.example.test;" in content


def test_one_changed_body_byte_breaks_both_signatures(relay_env):
    env = relay_env
    relay_send(env, message("tamper-body"), f"alice@{OURS}")
    content = env.delivered("tamper-body")
    ok, why = verify_each(env, content)
    assert ok == BOTH_VALID, why
    # A header outside h= added on the way keeps both valid (the failures
    # below are about what was changed, not about re-reading the message).
    ok, why = verify_each(env, b"X-Added-Later: fine\r\n" + content)
    assert ok == BOTH_VALID, why

    head_end = content.index(b"\r\n\r\n") + 4
    pos = content.index(b"quick brown", head_end) + 2   # the 'i' of "quick"
    tampered = bytearray(content)
    tampered[pos] ^= 0x01                              # 'i' -> 'h'
    tampered = bytes(tampered)
    assert len(tampered) == len(content) and tampered != content
    ok, why = verify_each(env, tampered)
    assert ok == BOTH_INVALID, why
    assert all("body hash mismatch" in w for w in why.values()), why
    assert mailgate_verify(env, tampered) == {"ed25519-sha256": "fail", "rsa-sha256": "fail"}


def test_prepended_second_from_breaks_both_signatures(relay_env):
    env = relay_env
    relay_send(env, message("tamper-from"), f"alice@{OURS}")
    content = env.delivered("tamper-from")
    ok, why = verify_each(env, content)
    assert ok == BOTH_VALID, why
    forged = b"From: CEO <ceo@attacker.test>\r\n" + content
    ok, why = verify_each(env, forged)
    assert ok == BOTH_INVALID, f"a prepended From: must break both signatures: {why}"
    assert "pass" not in mailgate_verify(env, forged).values()
    assert not any("body hash mismatch" in w for w in why.values()), why
    # Likewise a second Subject: (also oversigned).
    ok, why = verify_each(env, b"Subject: urgent wire transfer\r\n" + content)
    assert ok == BOTH_INVALID, f"a prepended Subject: must break both signatures: {why}"


@pytest.mark.parametrize("from_addr", ["someone@elsewhere.test", f"spoof@evil{OURS}",
                                       f"x@{OURS}.evil.test"])
def test_foreign_from_domain_is_not_signed(relay_env, from_addr):
    env = relay_env
    marker = "foreign-" + re.sub(r"\W", "-", from_addr)
    relay_send(env, message(marker, from_addr=from_addr), from_addr)
    content = env.delivered(marker)
    sigs = signatures(content)
    assert not [s for s in sigs if s.get("d", "").lower().rstrip(".") == OURS], sigs
    assert sigs == [], f"no DKIM-Signature expected for From: {from_addr}: {sigs}"


# --------------------------------------------------------------- zone syntax


_bind_error: str | None = None


def named_checkzone() -> str:
    """`named-checkzone`, installing Debian's bind9-utils if it is missing."""
    global _bind_error
    path = shutil.which("named-checkzone") or (
        "/usr/sbin/named-checkzone" if os.path.exists("/usr/sbin/named-checkzone") else None)
    if path:
        return path
    if _bind_error is None:
        _bind_error = ""
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        try:
            p = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "bind9-utils"],
                               env=env, capture_output=True, text=True, timeout=300)
            if p.returncode != 0:
                subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=300)
                p = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                                    "bind9-utils"], env=env, capture_output=True, text=True, timeout=300)
            if p.returncode != 0:
                _bind_error = f"apt-get install bind9-utils failed: {p.stderr.strip()[-300:]}"
        except (OSError, subprocess.SubprocessError) as e:
            _bind_error = f"cannot install bind9-utils: {e}"
    path = shutil.which("named-checkzone")
    if not path:
        pytest.skip(_bind_error or "named-checkzone missing (Debian package bind9-utils)")
    return path


def test_records_output_is_a_valid_zone(relay_env, tmp_path):
    env = relay_env
    checker = named_checkzone()
    assert "$ORIGIN ." in env.records_text, env.records_text
    # A zone for OURS: SOA and NS first, then the output verbatim (its
    # `$ORIGIN .` and absolute names).
    zone = (
        f"$ORIGIN {OURS}.\n$TTL 3600\n"
        f"@ IN SOA ns1.{OURS}. hostmaster.{OURS}. 1 3600 600 86400 300\n"
        f"@ IN NS ns1.{OURS}.\nns1 IN A 127.0.0.1\n"
        + env.records_text
    )
    path = tmp_path / f"{OURS}.zone"
    path.write_text(zone)
    p = subprocess.run([checker, "-k", "fail", "-n", "fail", "-D", "-o", "-", OURS, str(path)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, f"named-checkzone rejected the zone:\n{p.stdout}\n{p.stderr}\n--- zone ---\n{zone}"
    # What BIND read is what we served: every DKIM TXT record, joined.
    dumped: dict[str, str] = {}
    for line in p.stdout.splitlines():
        m = re.match(r"^(\S+)\s+\d+\s+IN\s+TXT\s+(.*)$", line)
        if m and "._domainkey." in m.group(1):
            dumped[m.group(1).lower()] = "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', m.group(2)))
    want = {f"{s}._domainkey.{OURS}.": v for s, v in env.selectors.items()}
    assert dumped == want, f"named-checkzone read {dumped}, mailgate records printed {want}"
    # The MX and the mail-policy records are there too.
    assert re.search(rf"^{re.escape(OURS)}\.\s+\d+\s+IN\s+MX\s+10\s+\S+\.$", p.stdout, re.M), p.stdout
    for name in (f"_dmarc.{OURS}.", f"_mta-sts.{OURS}.", f"_smtp._tls.{OURS}."):
        assert re.search(rf"^{re.escape(name)}\s+\d+\s+IN\s+TXT\s", p.stdout, re.M), (name, p.stdout)
