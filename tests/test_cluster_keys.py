"""Two mailgate nodes sharing DKIM keys and AUTH counters in one private
PostgreSQL (`[cluster] store`, tests/pgserver.py), black-box over TCP.

- A key generated and made active with `mailgate dkim keygen` against node
  A signs mail relayed through node B within `[cluster] poll_interval`
  (1 s here), and the signature verifies (dkimpy) against the record that
  `mailgate records` on node B prints from the store.
- AUTH failures from one address spread over both nodes (5 + 5, in
  parallel) throttle that address on both (`454 4.7.0`), where each node
  alone has seen only 5 (under the 10 that throttle); the real user from
  a clean address still logs in.
- PostgreSQL stopped: node B still signs with the cached key, AUTH still
  works (local counters), with one warning for all attempts; when it
  returns, the counters are shared again.

Debian `postgresql`; PyPI dkimpy, pynacl.
"""

from __future__ import annotations

import base64
import json
import re
import smtplib
import ssl
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

dkim = pytest.importorskip("dkim", reason="pip install dkimpy")
pytest.importorskip("nacl", reason="pip install pynacl (dkimpy needs it for Ed25519)")
pytest.importorskip("dnslib", reason="pip install dnslib")

from conftest import _RUNNING, BIN, MailgateServer  # noqa: E402
from helpers import Dialogue  # noqa: E402
from loopdns import LoopbackDns  # noqa: E402
from pgserver import PgServer  # noqa: E402
from postfix import PySink  # noqa: E402

OURS = "mg.test"
FAR = "far.test"
USER, SECRET = "app", "cluster-secret-pass"
POLL = 1
WAIT = 20.0


def hash_password(password: str) -> str:
    p = subprocess.run([str(BIN), "user", "hash"], input=password + "\n", capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


class Cluster:
    def __init__(self, pg: PgServer, sink: PySink, dns: LoopbackDns, a: MailgateServer, b: MailgateServer):
        self.pg, self.sink, self.dns, self.a, self.b = pg, sink, dns, a, b


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    assert BIN.exists(), f"{BIN} not built (cargo build --release)"
    sink = PySink().start()
    pg = PgServer().start()
    # One loopback DNS for both nodes: where a rotated key gets published.
    dns = LoopbackDns()
    users = f'[[user]]\nname = "{USER}"\npassword = "{hash_password(SECRET)}"\nsend_as = ["*@{OURS}"]\n'
    nodes = []
    try:
        for node in ("node-a", "node-b"):
            toml = (f'[[domain]]\nname = "{OURS}"\ndeliver = "{sink.url()}"\n'
                    f'[[domain]]\nname = "{FAR}"\ndeliver = "{sink.url()}"\ndkim = false\n'
                    + users +
                    f'[cluster]\nstore = "{pg.url}"\nnode_id = "{node}"\npoll_interval = {POLL}\n'
                    '[dkim]\ndns_check_interval = 1\n')
            srv = MailgateServer(BIN, tmp_path_factory.mktemp(node), relay={"trusted_networks": ["127.0.0.0/8"]},
                                 extra_toml=toml, dns_port=dns.port)
            nodes.append(srv.start())
        yield Cluster(pg, sink, dns, nodes[0], nodes[1])
    finally:
        codes = []
        for srv in nodes:
            codes.append(srv.stop())
            while srv in _RUNNING:
                _RUNNING.remove(srv)
        pg.stop("immediate")
        dns.stop()
        sink.stop()
    assert codes == [0, 0], f"nodes exited {codes} after SIGTERM:\n" + "\n".join(n.log_text()[-3000:] for n in nodes)


# --------------------------------------------------------------- signing


def send(node: MailgateServer, marker: str) -> None:
    msg = (f"From: Alice <alice@{OURS}>\r\nTo: bob@{FAR}\r\nSubject: cluster {marker}\r\n"
           f"Date: Sun, 06 Dec 2026 18:00:00 +0000\r\nMessage-ID: <{marker}@{OURS}>\r\n\r\n"
           f"Marker {marker}.\r\n").encode()
    with Dialogue(node.mx_port) as d:
        assert d.ehlo("app.mg.test").code == 250
        r = d.transaction(sender=f"alice@{OURS}", rcpts=(f"bob@{FAR}",), body=msg)
        assert r.code == 250, r
        d.cmd("QUIT")


def delivered(c: Cluster, marker: str) -> bytes:
    got = c.sink.wait_for(lambda m: marker.encode() in m["content"], WAIT)
    assert got, f"{marker} not delivered within {WAIT}s"
    return got[0]["content"]


def selectors(content: bytes) -> set[str]:
    head = content.split(b"\r\n\r\n", 1)[0].decode(errors="replace").replace("\r\n ", " ").replace("\r\n\t", " ")
    return {m.group(1) for line in head.split("\r\n") if line.lower().startswith("dkim-signature:")
            for m in [re.search(r"\bs=([^;\s]+)", line)] if m}


def records_of(node: MailgateServer) -> dict[str, str]:
    """`mailgate records`: selector -> TXT value, for our domain."""
    out = {}
    for line in node.cli("records").stdout.splitlines():
        m = re.match(rf"^(\S+)\._domainkey\.{re.escape(OURS)}\.\s+\d+\s+IN\s+TXT\s+(.*)$", line)
        if m:
            out[m.group(1)] = "".join(re.findall(r'"([^"]*)"', m.group(2)))
    return out


def test_both_nodes_start_with_the_same_keys(cluster):
    ra, rb = records_of(cluster.a), records_of(cluster.b)
    assert len(ra) == 2 and ra == rb, f"node A {ra} / node B {rb}"
    keys = cluster.pg.sql(f"SELECT count(*) FROM cluster_dkim_keys WHERE domain = '{OURS}'")
    assert keys == "2", "one generation of keys for the cluster, not one per node"
    send(cluster.a, "first-a")
    send(cluster.b, "first-b")
    assert selectors(delivered(cluster, "first-a")) == selectors(delivered(cluster, "first-b")) == set(ra)


def test_a_key_made_on_node_a_signs_on_node_b_within_the_poll_interval(cluster):
    out = cluster.a.cli("dkim", "keygen", "--domain", OURS, "--algorithm", "ed25519", "--selector", "shared1").stdout
    assert "shared1._domainkey" in out, out
    t0 = time.monotonic()
    seen, n = set(), 0
    while "shared1" not in seen and time.monotonic() - t0 < POLL + 5:
        n += 1
        send(cluster.b, f"after-keygen-{n}")
        seen = selectors(delivered(cluster, f"after-keygen-{n}"))
    took = time.monotonic() - t0
    assert "shared1" in seen, f"node B still signs with {seen} {took:.1f}s after the key was made on node A"
    print(f"node B signed with node A's new key after {took:.2f}s (poll interval {POLL}s)")
    # The signature verifies against the record node B prints from the store.
    record = records_of(cluster.b)["shared1"]
    content = delivered(cluster, f"after-keygen-{n}")
    lookups = []

    def dns(name, timeout=5):
        lookups.append(name)
        return record.encode() if name.startswith(b"shared1._domainkey.") else None

    verifier = dkim.DKIM(content)
    ok = any(verifier.verify(idx=i, dnsfunc=dns) for i in range(len(selectors(content))))
    assert ok, f"no signature verified; looked up {lookups}"


def test_a_key_rotated_on_node_a_signs_on_node_b(cluster):
    out = cluster.a.cli("dkim", "rotate", "--domain", OURS, "--algorithm", "rsa2048").stdout
    m = re.search(rf"^(\S+)\._domainkey\.{re.escape(OURS)}\. IN TXT (.*)$", out, re.M)
    assert m, out
    selector, strings = m.group(1), re.findall(r'"([^"]*)"', m.group(2))
    before = {k["selector"]: k["state"] for k in json.loads(cluster.b.cli("dkim", "status", "--json").stdout)["keys"]}
    assert before[selector] == "pending", before
    old_rsa = [s for s, st in before.items() if st == "active" and s.endswith("r")]
    # Published: the rotation check (one node) activates it; node B follows.
    cluster.dns.resolver.load([(f"{selector}._domainkey.{OURS}.", "TXT", strings)])
    t0 = time.monotonic()
    seen, n = set(), 0
    while selector not in seen and time.monotonic() - t0 < 1 + POLL + 6:
        n += 1
        send(cluster.b, f"after-rotate-{n}")
        seen = selectors(delivered(cluster, f"after-rotate-{n}"))
    assert selector in seen, f"node B signs with {seen}, not the rotated key {selector}"
    print(f"node B signed with the key rotated on node A {time.monotonic() - t0:.2f}s after it was published")
    assert not set(old_rsa) & seen, f"the replaced RSA key {old_rsa} still signs"
    activated = [line for srv in (cluster.a, cluster.b) for line in srv.log_text().splitlines()
                 if "DKIM key active" in line and selector in line]
    assert len(activated) == 1, f"the key was activated once, by one node: {activated}"
    after = {k["selector"]: k["state"] for k in json.loads(cluster.a.cli("dkim", "status", "--json").stdout)["keys"]}
    assert after[selector] == "active" and all(after[s] == "retiring" for s in old_rsa), after
    # And the signature verifies against the published record.
    content = delivered(cluster, f"after-rotate-{n}")
    ok = [dkim.DKIM(content).verify(idx=i, dnsfunc=cluster.dns.dnsfunc) for i in range(len(seen))]
    assert any(ok), ok


# --------------------------------------------------------------- AUTH


def login(node: MailgateServer, source: str, password: str) -> int:
    """The reply code to AUTH PLAIN from `source` on the submission port."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", node.submission_port, timeout=30, source_address=(source, 0)) as s:
        s.ehlo("client.test")
        s.starttls(context=ctx)
        s.ehlo("client.test")
        token = base64.b64encode(f"\0{USER}\0{password}".encode()).decode()
        code, _ = s.docmd("AUTH", f"PLAIN {token}")
        return code


def test_auth_failures_over_both_nodes_throttle_on_both(cluster):
    guesser, clean = "127.0.6.1", "127.0.6.2"
    t0 = time.monotonic()
    # 5 failures on each node, in parallel: each node alone would allow
    # 10 before throttling.
    with ThreadPoolExecutor(10) as pool:
        codes = list(pool.map(lambda i: login(cluster.a if i % 2 else cluster.b, guesser, f"guess{i}"), range(10)))
    assert codes == [535] * 10, codes
    assert login(cluster.a, guesser, SECRET) == 454, "throttled on node A, even with the right password"
    assert login(cluster.b, guesser, SECRET) == 454, "and on node B"
    assert login(cluster.b, clean, SECRET) == 235, "the real user from a clean address still logs in"
    print(f"AUTH over two nodes: {time.monotonic() - t0:.1f}s")


# --------------------------------------------------------------- database down


def test_database_down_signing_and_auth_go_on(cluster):
    cluster.pg.stop("fast")
    try:
        send(cluster.b, "pg-down")
        assert "shared1" in selectors(delivered(cluster, "pg-down")), "node B signs with its cached keys"
        codes = [login(cluster.b, "127.0.6.3", SECRET) for _ in range(2)]
        codes.append(login(cluster.b, "127.0.6.4", "wrong"))
        assert codes == [235, 235, 535], codes
        time.sleep(POLL + 0.5)
        send(cluster.b, "pg-down-2")
        assert "shared1" in selectors(delivered(cluster, "pg-down-2"))
        log = cluster.b.log_text()
        warned = log.count("counting on this node only")
        assert warned == 1, f"one warning for all attempts, not {warned}"
        assert "signing with the DKIM keys loaded last" in log
    finally:
        cluster.pg.start()
    # Back: after the retry delay the counters are shared again.
    time.sleep(5.5)
    assert login(cluster.b, "127.0.6.5", SECRET) == 235
    deadline = time.monotonic() + 5
    while "counters are shared across nodes again" not in cluster.b.log_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "counters are shared across nodes again" in cluster.b.log_text()
