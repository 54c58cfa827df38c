"""Graceful shutdown on SIGTERM and recovery of the spool after a restart or
a crash (SIGKILL)."""

import signal
import socket
import threading
import time

import pytest

from helpers import ConnectionClosed, Dialogue, pending_status_ok, queue_id


def open_data(d: Dialogue, sender="inflight@sender.test") -> None:
    d.ehlo()
    assert d.cmd(f"MAIL FROM:<{sender}>").code == 250
    assert d.cmd("RCPT TO:<b@example.test>").code == 250
    assert d.cmd("DATA").code == 354


def test_sigterm_mid_data_lets_the_transaction_finish_and_spools_it(mailgate_factory):
    srv = mailgate_factory(limits={"shutdown_grace": 20}).start()
    busy = srv.smtp()
    open_data(busy)
    busy.send(b"Subject: in flight\r\n\r\nfirst half\r\n")
    time.sleep(0.2)
    srv.signal(signal.SIGTERM)
    time.sleep(0.5)
    assert srv.running, "server exited while a transaction was in flight"
    busy.send(b"second half\r\n.\r\n")
    r = busy.read_reply()
    assert r.is_(250, "2.0.0"), r
    qid = queue_id(r)
    # After the transaction the server says goodbye.
    r = busy.read_reply()
    assert r.is_(421, "4.3.2"), r
    busy.expect_closed()
    busy.close()
    assert srv.wait(timeout=15) == 0
    srv.start()
    msgs = {m["id"]: m for m in srv.queue_list()}
    assert set(msgs) == {qid}
    assert msgs[qid]["sender"] == "inflight@sender.test"


def test_sigterm_between_rcpt_and_data_lets_the_transaction_finish(mailgate_factory):
    srv = mailgate_factory(limits={"shutdown_grace": 20}).start()
    d = srv.smtp()
    d.ehlo()
    assert d.cmd("MAIL FROM:<a@sender.test>").code == 250
    assert d.cmd("RCPT TO:<b@example.test>").code == 250
    srv.signal(signal.SIGTERM)
    time.sleep(0.3)
    assert d.cmd("DATA").code == 354
    d.send(b"Subject: x\r\n\r\nx\r\n.\r\n")
    r = d.read_reply()
    assert r.is_(250, "2.0.0"), r
    qid = queue_id(r)
    assert d.read_reply().is_(421, "4.3.2")
    d.close()
    assert srv.wait(timeout=15) == 0
    srv.start()
    assert srv.queue_ids() == {qid}


def test_idle_connection_gets_421_4_3_2_at_shutdown(mailgate_factory):
    srv = mailgate_factory().start()
    idle = srv.smtp()
    idle.ehlo()
    fresh = srv.smtp()  # not even EHLO yet
    srv.signal(signal.SIGTERM)
    for d in (idle, fresh):
        r = d.read_reply()
        assert r.is_(421, "4.3.2"), r
        d.expect_closed()
        d.close()
    assert srv.wait(timeout=15) == 0


def test_idle_and_busy_connections_at_shutdown(mailgate_factory):
    srv = mailgate_factory(limits={"shutdown_grace": 20}).start()
    busy = srv.smtp()
    open_data(busy)
    busy.send(b"Subject: x\r\n\r\npartial")
    idle = srv.smtp()
    idle.ehlo()
    srv.signal(signal.SIGTERM)
    r = idle.read_reply()
    assert r.is_(421, "4.3.2"), r
    idle.close()
    busy.send(b" rest\r\n.\r\n")
    r = busy.read_reply()
    assert r.is_(250, "2.0.0"), r
    qid = queue_id(r)
    busy.close()
    assert srv.wait(timeout=15) == 0
    srv.start()
    assert srv.queue_ids() == {qid}


def test_no_new_connections_after_sigterm(mailgate_factory):
    srv = mailgate_factory(limits={"shutdown_grace": 20}).start()
    busy = srv.smtp()
    open_data(busy)
    srv.signal(signal.SIGTERM)
    time.sleep(0.5)
    assert srv.running
    # The listener is closed: a connection is refused or gets no 220.
    try:
        with Dialogue(srv.mx_port, timeout=3) as late:
            assert late.greeting.code != 220, late.greeting
    except (ConnectionRefusedError, ConnectionClosed, ConnectionResetError):
        pass
    busy.send(b"Subject: x\r\n\r\nx\r\n.\r\n")
    assert busy.read_reply().code == 250
    busy.close()
    assert srv.wait(timeout=15) == 0


def test_shutdown_grace_expires_for_a_stalled_client(mailgate_factory):
    srv = mailgate_factory(limits={"shutdown_grace": 1}).start()
    stalled = srv.smtp()
    open_data(stalled)
    stalled.send(b"Subject: never finished\r\n\r\nhalf")
    t0 = time.monotonic()
    srv.signal(signal.SIGTERM)
    assert srv.wait(timeout=15) == 0
    assert time.monotonic() - t0 < 10
    stalled.close()
    srv.start()
    assert srv.queue_list() == []


def test_sigint_is_a_graceful_shutdown_too(mailgate_factory):
    srv = mailgate_factory().start()
    with srv.smtp() as d:
        d.ehlo()
        qid = queue_id(d.transaction())
    srv.signal(signal.SIGINT)
    assert srv.wait(timeout=15) == 0
    srv.start()
    assert srv.queue_ids() == {qid}


def test_clean_restart_keeps_the_queue(mailgate_factory):
    srv = mailgate_factory().start()
    ids = set()
    with srv.smtp() as d:
        d.ehlo()
        for i in range(5):
            ids.add(queue_id(d.transaction(sender=f"s{i}@sender.test")))
    before = {m["id"]: m for m in srv.queue_list()}
    assert srv.stop() == 0
    # The state on disk at the stop, which a delivery attempt may have
    # changed after the first listing, must come back unchanged.
    srv.start()
    after = {m["id"]: m for m in srv.queue_list()}
    assert set(after) == ids
    srv.stop()
    srv.start()
    again = {m["id"]: m for m in srv.queue_list()}
    for qid in ids:
        assert after[qid]["sender"] == before[qid]["sender"]
        assert [r["address"] for r in after[qid]["recipients"]] == [r["address"] for r in before[qid]["recipients"]]
        assert after[qid]["size"] == before[qid]["size"]
        for a, b in zip(after[qid]["recipients"], again[qid]["recipients"]):
            assert (a["status"], a["attempts"], a["last_reply"]) == (b["status"], b["attempts"], b["last_reply"])


def send_many(port: int, n: int, tag: str, out: list, errors: list) -> None:
    try:
        with Dialogue(port) as d:
            d.ehlo()
            for i in range(n):
                r = d.transaction(
                    sender=f"{tag}-{i}@sender.test",
                    body=b"Subject: %s %d\r\n\r\n" % (tag.encode(), i) + (b"x" * 70 + b"\r\n") * 30,
                )
                assert r.code == 250, r
                out.append((queue_id(r), f"{tag}-{i}@sender.test"))
    except Exception as e:  # reported by the test
        errors.append(e)


def test_all_accepted_messages_are_listed_after_sigkill_and_restart(mailgate_factory):
    srv = mailgate_factory().start()
    accepted: list = []
    errors: list = []
    threads = [
        threading.Thread(target=send_many, args=(srv.mx_port, 10, f"t{k}", accepted, errors))
        for k in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(accepted) == 40
    srv.kill()
    srv.start()
    msgs = {m["id"]: m for m in srv.queue_list()}
    missing = {qid for qid, _ in accepted} - set(msgs)
    assert not missing, f"lost after SIGKILL: {missing}"
    for qid, sender in accepted:
        assert msgs[qid]["sender"] == sender
        assert [r["address"] for r in msgs[qid]["recipients"]] == ["b@example.test"]
        assert all(pending_status_ok(r) for r in msgs[qid]["recipients"]), msgs[qid]
    shown = srv.queue_show(accepted[0][0])
    assert f"id {accepted[0][0]}" in " ".join(shown["headers"].split())


def test_sigkill_during_concurrent_traffic_loses_no_acknowledged_message(mailgate_factory):
    srv = mailgate_factory().start()
    accepted: list = []
    stop = threading.Event()

    def client(tag):
        try:
            with Dialogue(srv.mx_port, timeout=5) as d:
                d.ehlo()
                i = 0
                while not stop.is_set():
                    assert d.cmd(f"MAIL FROM:<{tag}-{i}@sender.test>").code == 250
                    assert d.cmd("RCPT TO:<b@example.test>").code == 250
                    assert d.cmd("DATA").code == 354
                    d.send(b"Subject: %d\r\n\r\n" % i + (b"y" * 70 + b"\r\n") * 15 + b".\r\n")
                    r = d.read_reply()
                    if r.code == 250:
                        accepted.append(queue_id(r))
                    i += 1
        except (OSError, ConnectionClosed, AssertionError):
            pass  # the server was killed under us

    threads = [threading.Thread(target=client, args=(f"c{k}",)) for k in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    srv.kill()
    stop.set()
    for t in threads:
        t.join(10)
    assert accepted, "no message was accepted before the kill"
    srv.start()
    listed = srv.queue_ids()
    missing = set(accepted) - listed
    assert not missing, f"{len(missing)} of {len(accepted)} acknowledged messages lost: {sorted(missing)[:5]}"


def test_partial_message_at_sigkill_is_not_listed_after_restart(mailgate_factory):
    srv = mailgate_factory().start()
    with srv.smtp() as d:
        d.ehlo()
        done = queue_id(d.transaction(sender="done@sender.test"))
    partial = srv.smtp()
    open_data(partial, sender="partial@sender.test")
    partial.send(b"Subject: half\r\n\r\nhalf")
    time.sleep(0.2)
    srv.kill()
    partial.close()
    srv.start()
    msgs = srv.queue_list()
    assert [m["id"] for m in msgs] == [done]
    assert [m["sender"] for m in msgs] == ["done@sender.test"]
