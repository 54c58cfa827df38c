"""The dashboard's per-node figures, browser-free: two mailgate nodes share
one private PostgreSQL report store (`[cluster] store`,
tests/pgserver.py); 3 messages go through node A and 2 through node B to
a loopback sink. The overview of either node, as JSON (`/?format=json`,
`nodes`) and as HTML (`table#nodes`), shows both nodes' figures for today
(received, accepted, delivered) and a total equal to their sum; each
node's name links to the message search filtered on that node, which
finds exactly that node's messages.
"""

from __future__ import annotations

import html
import json
import re
import time

import pytest

from conftest import _RUNNING, BIN, MailgateServer
from helpers import Dialogue
from pgserver import PgServer
from postfix import PySink

OURS = "nodes.test"
SENT = {"node-a": 3, "node-b": 2}
FIELDS = ("received", "accepted", "quarantined", "refused", "evaluated", "delivered", "deferred", "bounced")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    assert BIN.exists(), f"{BIN} not built (cargo build --release)"
    sink = PySink().start()
    pg = PgServer().start()
    nodes = {}
    try:
        for name in SENT:
            toml = (f'[[domain]]\nname = "{OURS}"\ndeliver = "{sink.url()}"\ndkim = false\n'
                    f'[cluster]\nstore = "{pg.url}"\nnode_id = "{name}"\n')
            srv = MailgateServer(BIN, tmp_path_factory.mktemp(name), relay={"trusted_networks": ["127.0.0.0/8"]},
                                 extra_toml=toml)
            nodes[name] = srv.start()
        yield nodes, sink
    finally:
        for srv in nodes.values():
            srv.stop()
            while srv in _RUNNING:
                _RUNNING.remove(srv)
        pg.stop("immediate")
        sink.stop()


def send(srv: MailgateServer, marker: str) -> None:
    msg = (f"From: Alice <alice@{OURS}>\r\nTo: bob@{OURS}\r\nSubject: {marker}\r\n"
           f"Date: Sun, 06 Dec 2026 21:00:00 +0000\r\nMessage-ID: <{marker}@{OURS}>\r\n\r\n{marker}\r\n").encode()
    with Dialogue(srv.mx_port) as d:
        assert d.ehlo("app.nodes.test").code == 250
        r = d.transaction(sender=f"alice@{OURS}", rcpts=(f"bob@{OURS}",), body=msg)
        assert r.code == 250, r
        d.cmd("QUIT")


def html_rows(page: str) -> dict[str, list[int]]:
    """`table#nodes`: node (or "total") -> its numbers, from the HTML."""
    table = re.search(r'<table id="nodes">(.*?)</table>', page, re.S)
    assert table, page[:3000]
    rows = {}
    for m in re.finditer(r'<tr (?:data-node="([^"]*)"|id="nodes-total")>(.*?)</tr>', table.group(1), re.S):
        name = html.unescape(m.group(1)) if m.group(1) is not None else "total"
        rows[name] = [int(v) for v in re.findall(r'<td class="num">(\d+)</td>', m.group(2))]
    return rows


def test_the_overview_shows_each_node_and_their_total(cluster):
    nodes, sink = cluster
    for name, n in SENT.items():
        for i in range(n):
            send(nodes[name], f"{name}-{i}")
    deadline = time.monotonic() + 30
    while len(sink.wait_for(lambda m: OURS in m["content"].decode(errors="replace"), 1)) < sum(SENT.values()):
        assert time.monotonic() < deadline, "not every message was delivered"

    def figures(srv: MailgateServer) -> dict:
        status, body = srv.http_get("/?format=json")
        assert status == 200, body
        return json.loads(body)["nodes"]

    deadline = time.monotonic() + 30
    while True:
        got = figures(nodes["node-b"])
        by = {f["node"]: f for f in got["nodes"]}
        if all(by.get(name, {}).get("delivered") == n for name, n in SENT.items()):
            break
        assert time.monotonic() < deadline, got
        time.sleep(0.3)
    for name, n in SENT.items():
        assert (by[name]["received"], by[name]["accepted"], by[name]["refused"], by[name]["delivered"]) == (n, n, 0, n), by[name]
    assert set(by) == set(SENT), f"only our two nodes: {sorted(by)}"
    for field in FIELDS:
        assert got["total"][field] == sum(f[field] for f in got["nodes"]), (field, got)
    assert got["total"]["received"] == sum(SENT.values())
    assert got["this_node"] == "node-b"

    # The same figures from the other node, in the page.
    status, page = nodes["node-a"].http_get("/")
    assert status == 200
    rows = html_rows(page)
    assert set(rows) == {"node-a", "node-b", "total"}, rows
    for name, n in SENT.items():
        assert rows[name][:4] == [n, n, 0, 0] and rows[name][5] == n, (name, rows[name])
    assert rows["total"] == [a + b for a, b in zip(rows["node-a"], rows["node-b"])], rows
    assert re.search(r'>node-a</a> \(this node\)', page), "the answering node is marked"

    # The node filter of the message search, linked from the table.
    assert '/messages?node=node-b&amp;from=' in page
    for name, n in SENT.items():
        status, body = nodes["node-a"].http_get(f"/messages?node={name}&format=json")
        assert status == 200, body
        found = json.loads(body)["messages"]
        assert sorted(m["subject"] for m in found) == [f"{name}-{i}" for i in range(n)], found
