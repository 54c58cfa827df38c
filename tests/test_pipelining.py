"""PIPELINING (RFC 2920): commands sent in one write get their replies in order."""

from helpers import queue_id


def test_whole_transaction_in_one_write_gets_replies_in_order(server):
    with server.smtp() as d:
        d.send(
            b"EHLO client.test\r\n"
            b"MAIL FROM:<a@sender.test>\r\n"
            b"RCPT TO:<b@example.test>\r\n"
            b"RCPT TO:<c@example.test>\r\n"
            b"DATA\r\n"
            b"Subject: pipelined\r\n\r\nbody\r\n.\r\n"
            b"QUIT\r\n"
        )
        ehlo, mail, r1, r2, data, dot, quit_ = d.read_replies(7)
        assert ehlo.code == 250 and "PIPELINING" in ehlo.text, ehlo
        assert mail.is_(250, "2.1.0"), mail
        assert r1.is_(250, "2.1.5"), r1
        assert r2.is_(250, "2.1.5"), r2
        assert data.code == 354, data
        assert dot.is_(250, "2.0.0"), dot
        assert quit_.code == 221, quit_
        d.expect_closed()
        qid = queue_id(dot)
    (m,) = server.queue_list()
    assert m["id"] == qid
    assert [r["address"] for r in m["recipients"]] == ["b@example.test", "c@example.test"]


def test_two_transactions_pipelined_in_one_write(server):
    with server.smtp() as d:
        d.ehlo()
        d.send(
            b"MAIL FROM:<first@sender.test>\r\n"
            b"RCPT TO:<b@example.test>\r\n"
            b"DATA\r\n"
            b"Subject: one\r\n\r\n1\r\n.\r\n"
            b"MAIL FROM:<second@sender.test>\r\n"
            b"RCPT TO:<c@example.test>\r\n"
            b"DATA\r\n"
            b"Subject: two\r\n\r\n2\r\n.\r\n"
            b"QUIT\r\n"
        )
        replies = d.read_replies(9)
        codes = [r.code for r in replies]
        assert codes == [250, 250, 354, 250, 250, 250, 354, 250, 221], replies
        first, second = queue_id(replies[3]), queue_id(replies[7])
        assert first != second
    msgs = {m["id"]: m for m in server.queue_list()}
    assert set(msgs) == {first, second}
    assert msgs[first]["sender"] == "first@sender.test"
    assert [r["address"] for r in msgs[first]["recipients"]] == ["b@example.test"]
    assert msgs[second]["sender"] == "second@sender.test"
    assert [r["address"] for r in msgs[second]["recipients"]] == ["c@example.test"]


def test_pipelined_refused_recipient_keeps_reply_order(server):
    with server.smtp() as d:
        d.ehlo()
        d.send(
            b"MAIL FROM:<a@sender.test>\r\n"
            b"RCPT TO:<x@other.test>\r\n"
            b"RCPT TO:<b@example.test>\r\n"
            b"RCPT TO:<y@other.test>\r\n"
            b"DATA\r\n"
        )
        mail, bad1, good, bad2, data = d.read_replies(5)
        assert mail.code == 250
        assert bad1.is_(554, "5.7.1"), bad1
        assert good.is_(250, "2.1.5"), good
        assert bad2.is_(554, "5.7.1"), bad2
        assert data.code == 354, data
        d.send(b"Subject: x\r\n\r\nx\r\n.\r\n")
        r = d.read_reply()
        assert r.code == 250
    (m,) = server.queue_list()
    assert [r["address"] for r in m["recipients"]] == ["b@example.test"]


def test_pipelined_data_after_all_recipients_refused_does_not_eat_commands(server):
    # RFC 2920 §3.1: if every RCPT failed, DATA is refused and the content the
    # client already sent is read as commands, so it must not create mail.
    with server.smtp() as d:
        d.ehlo()
        d.send(
            b"MAIL FROM:<a@sender.test>\r\n"
            b"RCPT TO:<x@other.test>\r\n"
            b"DATA\r\n"
            b"NOOP\r\n"
        )
        mail, rcpt, data, noop = d.read_replies(4)
        assert mail.code == 250
        assert rcpt.code == 554
        assert data.code in (503, 554), data
        assert noop.is_(250, "2.0.0"), noop
    assert server.queue_list() == []


def test_pipelined_commands_split_across_odd_write_boundaries(server):
    stream = (
        b"EHLO client.test\r\nMAIL FROM:<a@sender.test>\r\nRCPT TO:<b@example.test>\r\n"
        b"DATA\r\nSubject: split\r\n\r\nline\r\n.\r\nQUIT\r\n"
    )
    with server.smtp() as d:
        import time

        for i in range(0, len(stream), 7):
            d.send(stream[i : i + 7])
            time.sleep(0.002)
        replies = d.read_replies(6)
        assert [r.code for r in replies] == [250, 250, 250, 354, 250, 221], replies
    assert len(server.queue_list()) == 1
