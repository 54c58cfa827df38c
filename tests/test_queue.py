"""Accepted messages in the queue, seen through `mailgate queue ...` (the
admin API client) and the HTTP admin API."""

import json
import re
import smtplib
import time

from helpers import pending_status_ok, queue_id


def test_accepted_message_gets_250_with_queue_id(server):
    with server.smtp() as d:
        d.ehlo()
        r = d.transaction()
        assert r.is_(250, "2.0.0"), r
        qid = queue_id(r)
        assert re.fullmatch(r"[A-Za-z0-9._-]+", qid), qid


def test_accepted_message_is_listed_with_sender_recipients_status_size_age(server):
    body = b"Subject: listed\r\n\r\n" + b"x" * 500 + b"\r\n"
    t0 = time.time()
    with server.smtp() as d:
        d.ehlo()
        r = d.transaction(
            sender="alice@sender.test",
            rcpts=("bob@example.test", "carol@example.test"),
            body=body,
        )
        qid = queue_id(r)
    msgs = server.queue_list()
    assert len(msgs) == 1, msgs
    m = msgs[0]
    assert m["id"] == qid
    assert m["sender"] == "alice@sender.test"
    assert [r["address"] for r in m["recipients"]] == [
        "bob@example.test",
        "carol@example.test",
    ]
    assert all(pending_status_ok(r) for r in m["recipients"]), m
    # The size counts the stored message: our body plus the Received header.
    assert isinstance(m["size"], int) and m["size"] > len(body), m
    assert isinstance(m["age_s"], int) and 0 <= m["age_s"] <= time.time() - t0 + 2, m


def test_queue_list_json_is_one_json_document(server):
    with server.smtp() as d:
        d.ehlo()
        d.transaction()
    p = server.cli("queue", "list", "--json")
    doc = json.loads(p.stdout)  # raises if there is more than one document
    assert list(doc) == ["messages"], doc


def test_queue_list_matches_http_api(server):
    with server.smtp() as d:
        d.ehlo()
        qid = queue_id(d.transaction())
    status, text = server.http_get("/api/v1/queue")
    assert status == 200
    api_ids = [m["id"] for m in json.loads(text)["messages"]]
    assert api_ids == [qid]
    assert [m["id"] for m in server.queue_list()] == [qid]


def test_queue_show_has_headers_with_received_header_naming_queue_id(server):
    body = b"From: alice@sender.test\r\nSubject: show me\r\nX-Test: 1\r\n\r\nhello\r\n"
    with server.smtp() as d:
        d.ehlo("client.test")
        qid = queue_id(d.transaction(sender="alice@sender.test", body=body))
    shown = server.queue_show(qid)
    assert shown["id"] == qid
    assert shown["sender"] == "alice@sender.test"
    headers = shown["headers"]
    assert headers.startswith("Received: "), headers
    received = headers.split("\r\nFrom:")[0]
    assert f"id {qid}" in " ".join(received.split()), received
    assert "client.test" in received and "[127.0.0.1]" in received, received
    assert server.hostname in received, received
    assert "for <b@example.test>" in " ".join(received.split()), received
    assert "Subject: show me\r\n" in headers
    assert "X-Test: 1\r\n" in headers
    assert "hello" not in headers  # only the header section is shown
    assert shown["client"]["ip"] == "127.0.0.1"
    assert shown["client"]["helo"] == "client.test"
    assert shown["client"]["listener"] == "mx"


def test_queue_show_unknown_id_fails_with_one_line(server):
    with server.smtp() as d:
        d.ehlo()
        qid = queue_id(d.transaction())
    server.queue_delete(qid)
    p = server.cli("queue", "show", qid, "--json", check=False)
    assert p.returncode != 0, p
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_queue_delete_removes_the_message(server):
    with server.smtp() as d:
        d.ehlo()
        keep = queue_id(d.transaction(sender="keep@sender.test"))
        gone = queue_id(d.transaction(sender="gone@sender.test"))
    assert server.queue_ids() == {keep, gone}
    p = server.queue_delete(gone)
    assert p.returncode == 0
    assert server.queue_ids() == {keep}
    # Deleting it again is an error.
    p = server.queue_delete(gone, check=False)
    assert p.returncode != 0, p
    status, _ = server.http_get(f"/api/v1/queue/{gone}")
    assert status == 404


def test_queue_delete_survives_restart(server):
    with server.smtp() as d:
        d.ehlo()
        keep = queue_id(d.transaction(sender="keep@sender.test"))
        gone = queue_id(d.transaction(sender="gone@sender.test"))
    server.queue_delete(gone)
    assert server.stop() == 0
    server.start()
    assert server.queue_ids() == {keep}


def test_dsn_parameters_appear_in_queue_show(server):
    with server.smtp() as d:
        d.ehlo()
        r = d.cmd("MAIL FROM:<alice@sender.test> RET=HDRS ENVID=QQ314159+2Bx")
        assert r.is_(250, "2.1.0"), r
        r = d.cmd(
            "RCPT TO:<bob@example.test> NOTIFY=SUCCESS,DELAY "
            "ORCPT=rfc822;bob+2Btag@example.test"
        )
        assert r.is_(250, "2.1.5"), r
        r = d.cmd("RCPT TO:<carol@example.test> NOTIFY=NEVER")
        assert r.is_(250, "2.1.5"), r
        r = d.cmd("RCPT TO:<dave@example.test>")
        assert r.is_(250, "2.1.5"), r
        assert d.cmd("DATA").code == 354
        d.send(b"Subject: dsn\r\n\r\nx\r\n.\r\n")
        qid = queue_id(d.read_reply())
    shown = server.queue_show(qid)
    assert str(shown["ret"]).upper() == "HDRS", shown
    assert shown["envid"] == "QQ314159+x", shown  # xtext-decoded
    bob, carol, dave = shown["recipients"]
    assert bob["address"] == "bob@example.test"
    flat = json.dumps(bob["notify"]).upper()
    assert "SUCCESS" in flat and "DELAY" in flat, bob
    assert "FAILURE" not in flat or '"FAILURE": FALSE' in flat, bob
    assert "bob+tag@example.test" in json.dumps(bob["orcpt"]), bob
    assert "rfc822" in json.dumps(bob["orcpt"]).lower(), bob
    # NOTIFY=NEVER: either spelled out or as no condition at all, and in any
    # case different from a recipient without NOTIFY (RFC 3461 default).
    never = carol["notify"]
    assert "NEVER" in json.dumps(never).upper() or (
        isinstance(never, dict) and never and not any(never.values())
    ), carol
    assert dave["notify"] != never, (carol, dave)
    assert dave["orcpt"] is None, dave


def test_null_sender_is_accepted_and_listed(server):
    with smtplib.SMTP("127.0.0.1", server.mx_port, timeout=10) as s:
        s.ehlo("client.test")
        assert s.mail("<>")[0] == 250
        assert s.rcpt("b@example.test")[0] == 250
        code, msg = s.data(b"Subject: bounce\r\n\r\nx\r\n")
        assert code == 250
        qid = queue_id(msg.decode())
    msgs = {m["id"]: m for m in server.queue_list()}
    assert msgs[qid]["sender"] in ("", "<>"), msgs[qid]


def test_duplicate_recipient_is_listed_once(server):
    with server.smtp() as d:
        d.ehlo()
        qid = queue_id(d.transaction(rcpts=("b@example.test", "b@example.test")))
    (m,) = server.queue_list()
    assert m["id"] == qid
    assert [r["address"] for r in m["recipients"]] == ["b@example.test"]


def test_metrics_count_accepted_messages(server):
    with server.smtp() as d:
        d.ehlo()
        for _ in range(3):
            assert d.transaction().code == 250
    status, text = server.http_get("/metrics")
    assert status == 200
    values = dict(
        l.split(" ", 1) for l in text.splitlines() if l and not l.startswith("#")
    )
    assert int(values["mailgate_messages_accepted_total"]) == 3
    assert int(values["mailgate_queue_messages"]) == 3
    status, text = server.http_get("/api/v1/spool")
    assert status == 200 and json.loads(text)["messages"] == 3


def test_received_header_does_not_name_recipients_when_there_are_several(server):
    with server.smtp() as d:
        d.ehlo()
        qid = queue_id(d.transaction(rcpts=("bob@example.test", "carol@example.test")))
    headers = server.queue_show(qid)["headers"]
    received = headers.split("\r\nSubject:")[0]
    assert "bob@example.test" not in received and "carol@example.test" not in received, received


def test_dot_stuffing_is_removed_before_storage(server):
    plain = b"Subject: dots\r\n.X-Dot: 1\r\n\r\n.leading dot\r\n..two dots\r\nplain\r\n"
    stuffed = b"Subject: dots\r\n..X-Dot: 1\r\n\r\n..leading dot\r\n...two dots\r\nplain\r\n"
    with server.smtp() as d:
        d.ehlo()
        qid = queue_id(d.transaction(body=stuffed))
    shown = server.queue_show(qid)
    assert "\r\n.X-Dot: 1\r\n" in shown["headers"], shown["headers"]
    assert "..X-Dot" not in shown["headers"]
    header_part = plain.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    rest = plain[len(header_part):]
    assert shown["size"] == len(shown["headers"].encode()) + len(rest), shown


def test_queue_cli_without_running_server_fails_with_one_line(server):
    assert server.stop() == 0
    p = server.cli("queue", "list", "--json", check=False)
    assert p.returncode != 0
    err = p.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert str(server.http_port) in err, err


def test_http_api_malformed_id_is_400_and_unknown_id_404(server):
    status, _ = server.http_get("/api/v1/queue/not%20an%20id")
    assert status == 400
    with server.smtp() as d:
        d.ehlo()
        qid = queue_id(d.transaction())
    server.queue_delete(qid)
    status, _ = server.http_get(f"/api/v1/queue/{qid}")
    assert status == 404


def test_concurrent_sessions_share_fsyncs_group_commit(server):
    import threading

    from helpers import Dialogue

    n = 30
    barrier = threading.Barrier(n)
    codes = []

    def client():
        with Dialogue(server.mx_port) as d:
            d.ehlo()
            d.cmd("MAIL FROM:<a@sender.test>")
            d.cmd("RCPT TO:<b@example.test>")
            assert d.cmd("DATA").code == 354
            barrier.wait(10)
            d.send(b"Subject: together\r\n\r\nx\r\n.\r\n")
            codes.append(d.read_reply().code)

    threads = [threading.Thread(target=client) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert codes == [250] * n
    status, text = server.http_get("/api/v1/spool")
    stats = json.loads(text)
    assert stats["messages"] == n
    assert stats["records"] >= n, stats
    # Durable (at least one fsync) but not one fsync per record. (A build
    # with delivery also writes status updates, so compare with records.)
    assert 1 <= stats["fsyncs"] < stats["records"], stats
    assert stats["fsyncs"] <= stats["records"] - n // 2, stats
