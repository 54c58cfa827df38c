"""Two mailgate nodes sharing one report store in PostgreSQL
(`[cluster] store`): a private server (pgserver.PgServer), two nodes with
their own ports, data_dir and `node_id`, mail for a DMARC domain with
`rua` through both. `reports send --now` on node A, then on node B:
exactly one report reaches the sink, counting the traffic of both nodes
(the report lock and the shared `reported` marks), and node B sends
nothing. Then PostgreSQL stops for 30 s while mail goes on through both
nodes (the acceptance's outage): every message is accepted, none waits on
the database (each accept, SMTP `DATA` to `250`, stays fast throughout),
and once it is back every evaluation is in the database (the recorders'
on-disk buffers replayed), each once.

Node A starts before PostgreSQL does: a node must come up, and take mail,
with its database unreachable.
"""

from __future__ import annotations

import email
import gzip
import json
import smtplib
import time
import xml.etree.ElementTree as ET

import pytest

pytest.importorskip("dnslib", reason="pip install dnslib")

from dnslib import A, MX, TXT  # noqa: E402
from dnslib.server import DNSLogger, DNSServer  # noqa: E402

from conftest import BIN, _RUNNING, MailgateServer, free_port  # noqa: E402
from pgserver import PgServer  # noqa: E402
from postfix import PySink  # noqa: E402
from test_dmarc_reports import Zone  # noqa: E402
from test_inbound_auth import message  # noqa: E402

DOMAIN = "alpha.test"
OURS = "inbox.test"
RUA = f"dmarc@{DOMAIN}"
HELO = "client.outside.test"
# How long PostgreSQL stays away under load (the acceptance's 30 s).
OUTAGE = 30


def node(tmp, name: str, url: str, dns_port: int, sink_port: int) -> MailgateServer:
    srv = MailgateServer(BIN, tmp / name, dns_port=dns_port,
                         extra_toml=f'[[domain]]\nname = "{OURS}"\ndeliver = "smtp://127.0.0.1:9"\n'
                                    f'[reports]\norg_name = "Mailgate Test"\nfrom = "dmarc-reports@{OURS}"\n'
                                    f'[cluster]\nstore = "{url}"\nnode_id = "{name}"\n')
    text = srv.config_path.read_text().replace(f"mx_port = {srv.mx_delivery_port}", f"mx_port = {sink_port}")
    srv.config_path.write_text(text)
    return srv


def send(srv: MailgateServer, source: str, n: int, tag: str) -> list[float]:
    """`n` messages in one session; how long each took (MAIL to the `250` after DATA)."""
    took = []
    with smtplib.SMTP("127.0.0.1", srv.mx_port, local_hostname=HELO, timeout=30, source_address=(source, 0)) as s:
        for i in range(n):
            start = time.monotonic()
            # SPF passes for 127.0.0.2 and aligns: DMARC pass.
            s.sendmail(f"news@{DOMAIN}", ["bob@example.test"], message(f"News <news@{DOMAIN}>", f"{tag}-{i}"))
            took.append(time.monotonic() - start)
    return took


def count(pg: PgServer, table: str = "evaluations") -> int:
    return int(pg.sql(f"SELECT count(*) FROM {table}") or 0)


def wait_count(pg: PgServer, want: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    got = -1
    while time.monotonic() < deadline:
        try:
            got = count(pg)
        except Exception:  # the schema may not exist yet
            got = -1
        if got >= want:
            return got
        time.sleep(0.2)
    return got


def report_counts(msg: bytes) -> int:
    m = email.message_from_bytes(msg)
    for part in m.walk():
        if part.get_content_type() == "application/gzip":
            root = ET.fromstring(gzip.decompress(part.get_payload(decode=True)))
            return sum(int(c.text) for c in root.iter() if c.tag.endswith("count"))
    raise AssertionError("no application/gzip part in the report message")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cluster-store")
    sink = PySink().start()
    zone = Zone()
    dns = DNSServer(zone, port=free_port(), address="127.0.0.1", logger=DNSLogger(prefix=False, logf=lambda s: None))
    dns.start_thread()
    zone.add(f"{DOMAIN}.", "TXT", TXT(["v=spf1 ip4:127.0.0.2 -all"]))
    zone.add(f"_dmarc.{DOMAIN}.", "TXT", TXT([f"v=DMARC1; p=none; rua=mailto:{RUA}"]))
    zone.add(f"{DOMAIN}.", "MX", MX("mx.sink.test."))
    zone.add("mx.sink.test.", "A", A("127.0.0.1"))
    pg = PgServer()
    port = dns.server.server_address[1]
    a = node(tmp, "node-a", pg.url, port, sink.port)
    b = node(tmp, "node-b", pg.url, port, sink.port)
    try:
        # Node A comes up with PostgreSQL not yet running.
        a.start()
        send(a, "127.0.0.2", 3, "early")
        pg.start()
        b.start()
        yield pg, a, b, sink
    finally:
        for srv in (a, b):
            srv.stop()
            while srv in _RUNNING:
                _RUNNING.remove(srv)
        pg.stop("immediate")
        dns.stop()
        sink.stop()


def test_one_report_counts_both_nodes_and_records_survive_an_outage(cluster):
    pg, a, b, sink = cluster
    send(a, "127.0.0.2", 7, "a")
    send(b, "127.0.0.2", 5, "b")
    total = 3 + 7 + 5
    # Node A's early mail was buffered on disk and replayed.
    assert wait_count(pg, total, 20) == total, a.log_text()[-3000:]
    nodes = dict(line.split("|") for line in pg.sql("SELECT node, count(*) FROM messages GROUP BY node").splitlines())
    assert nodes == {"node-a": "10", "node-b": "5"}, nodes

    sent_a = json.loads(a.cli("reports", "send", "--now", "--json").stdout)["sent"]
    sent_b = b.cli("reports", "send", "--now", "--json")
    assert sent_b.returncode == 0
    assert json.loads(sent_b.stdout)["sent"] == [], "node B finds nothing left to report"
    dmarc = [s for s in sent_a if s["kind"] == "dmarc" and s["domain"] == DOMAIN]
    assert len(dmarc) == 1 and dmarc[0]["messages"] == total, sent_a
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with sink.lock:
            got = [m for m in sink.messages if f"<{RUA}>" in m["rcpts"]]
        if got:
            break
        time.sleep(0.1)
    time.sleep(1)
    with sink.lock:
        got = [m for m in sink.messages if f"<{RUA}>" in m["rcpts"]]
    assert len(got) == 1, f"{len(got)} reports for {DOMAIN}"
    assert report_counts(got[0]["content"]) == total

    # PostgreSQL goes away for 30 s under load: mail is still accepted, at
    # once.
    pg.stop()
    start = time.monotonic()
    sent = 0
    took: list[float] = []
    while time.monotonic() - start < OUTAGE:
        took += send(a, "127.0.0.2", 4, f"out-a-{sent}")
        took += send(b, "127.0.0.2", 4, f"out-b-{sent}")
        sent += 8
        time.sleep(0.5)
    outage = time.monotonic() - start
    pg.start()
    took.sort()
    median, worst = took[len(took) // 2], took[-1]
    print(f"outage {outage:.1f} s: {sent} messages accepted, accept median {median * 1000:.0f} ms, max {worst * 1000:.0f} ms")
    assert outage >= OUTAGE
    # Dozens of messages every few seconds, none held up by the database:
    # nothing on the accept path waits for it (a connect attempt alone
    # would take its 2 s timeout).
    assert sent >= 8 * OUTAGE / 2, sent
    assert median < 0.5 and worst < 1.5, f"accept median {median:.3f} s, max {worst:.3f} s"
    want = total + sent
    assert wait_count(pg, want, 25) == want, (b.log_text()[-3000:])
    # Written once: no batch replayed twice.
    time.sleep(1)
    assert count(pg) == want
    assert "buffering on disk" in a.log_text()
