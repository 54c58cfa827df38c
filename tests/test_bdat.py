"""CHUNKING / BDAT (RFC 3030)."""

import pytest

from helpers import queue_id


def stored_length(shown: dict, body_after_headers: bytes) -> int:
    """Size the spool should report: header section (as shown) + the rest."""
    return len(shown["headers"].encode()) + len(body_after_headers)


def start_tx(d, rcpt="b@example.test"):
    d.ehlo()
    assert d.cmd("MAIL FROM:<a@sender.test>").code == 250
    assert d.cmd(f"RCPT TO:<{rcpt}>").code == 250


def test_bdat_chunks_then_last_are_one_message(server):
    part1 = b"Subject: chunked\r\nX-A: 1\r\n"
    part2 = b"\r\nfirst part of the body\r\n"
    part3 = b"second part\r\n.\r\nnot an ending in BDAT\r\n"
    with server.smtp() as d:
        start_tx(d)
        d.send(b"BDAT %d\r\n" % len(part1) + part1)
        r = d.read_reply()
        assert r.is_(250, "2.0.0") and str(len(part1)) in r.text, r
        d.send(b"BDAT %d\r\n" % len(part2) + part2)
        r = d.read_reply()
        assert r.code == 250 and str(len(part1) + len(part2)) in r.text, r
        d.send(b"BDAT %d LAST\r\n" % len(part3) + part3)
        r = d.read_reply()
        assert r.is_(250, "2.0.0"), r
        qid = queue_id(r)
        assert d.cmd("QUIT").code == 221
    shown = server.queue_show(qid)
    assert "Subject: chunked\r\nX-A: 1\r\n" in shown["headers"]
    # Everything after the header section, byte for byte (including the
    # ".\r\n" line, which BDAT does not treat specially).
    assert shown["size"] == stored_length(shown, part2 + part3)


def test_bdat_pipelined_chunks(server):
    chunks = [b"Subject: p\r\n\r\n", b"abc\r\n", b"def\r\n"]
    with server.smtp() as d:
        start_tx(d)
        wire = b"".join(b"BDAT %d\r\n" % len(c) + c for c in chunks[:-1])
        wire += b"BDAT %d LAST\r\n" % len(chunks[-1]) + chunks[-1] + b"NOOP\r\n"
        d.send(wire)
        r1, r2, r3, noop = d.read_replies(4)
        assert r1.code == 250 and r2.code == 250, (r1, r2)
        assert r3.is_(250, "2.0.0") and "queued as" in r3.text, r3
        assert noop.is_(250, "2.0.0"), noop
    assert len(server.queue_list()) == 1


def test_bdat_zero_last_ends_the_message(server):
    content = b"Subject: zero\r\n\r\nbody\r\n"
    with server.smtp() as d:
        start_tx(d)
        d.send(b"BDAT %d\r\n" % len(content) + content)
        assert d.read_reply().code == 250
        r = d.cmd("BDAT 0 LAST")
        assert r.is_(250, "2.0.0"), r
        qid = queue_id(r)
    assert server.queue_ids() == {qid}


def test_bdat_single_last_chunk_larger_than_a_read(server):
    content = b"Subject: one\r\n\r\n" + (b"y" * 78 + b"\r\n") * 2000
    with server.smtp() as d:
        start_tx(d)
        d.send(b"BDAT %d LAST\r\n" % len(content) + content)
        r = d.read_reply()
        assert r.is_(250, "2.0.0"), r
    (m,) = server.queue_list()
    assert m["size"] > len(content)


def test_bdat_without_mail_is_503_and_chunk_is_not_read_as_commands(server):
    chunk = b"MAIL FROM:<smuggler@evil.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n"
    with server.smtp() as d:
        d.ehlo()
        d.send(b"BDAT %d\r\n" % len(chunk) + chunk + b"HELP\r\n")
        r = d.read_reply()
        assert r.is_(503, "5.5.1"), r
        # Exactly one reply for the BDAT and its chunk: the next is HELP's.
        r = d.read_reply()
        assert r.code == 214, r
        # And there is no transaction: RCPT needs MAIL.
        r = d.cmd("RCPT TO:<b@example.test>")
        assert r.code == 503, r
    assert server.queue_list() == []


def test_bdat_last_without_mail_is_503_and_chunk_consumed(server):
    chunk = b"QUIT\r\n"
    with server.smtp() as d:
        d.ehlo()
        d.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk + b"NOOP\r\n")
        r = d.read_reply()
        assert r.code == 503, r
        r = d.read_reply()
        assert r.is_(250, "2.0.0"), r  # NOOP, not a 221 for the QUIT in the chunk
        assert d.is_open()


def test_bdat_before_ehlo_is_503_and_chunk_consumed(server):
    chunk = b"EHLO x\r\n"
    with server.smtp() as d:
        d.send(b"BDAT %d\r\n" % len(chunk) + chunk + b"HELP\r\n")
        assert d.read_reply().code == 503
        assert d.read_reply().code == 214


def test_bdat_without_recipients_is_refused_and_chunk_consumed(server):
    chunk = b"RSET\r\n"
    with server.smtp() as d:
        d.ehlo()
        assert d.cmd("MAIL FROM:<a@sender.test>").code == 250
        d.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk + b"HELP\r\n")
        r = d.read_reply()
        assert r.code in (503, 554) and r.enhanced.startswith("5."), r
        assert d.read_reply().code == 214
    assert server.queue_list() == []


def test_data_after_bdat_is_503(server):
    chunk = b"Subject: mix\r\n\r\n"
    with server.smtp() as d:
        start_tx(d)
        d.send(b"BDAT %d\r\n" % len(chunk) + chunk)
        assert d.read_reply().code == 250
        r = d.cmd("DATA")
        assert r.is_(503, "5.5.1"), r
        # Still in the BDAT transaction: it can be finished.
        r = d.cmd("BDAT 0 LAST")
        assert r.code == 250, r
    assert len(server.queue_list()) == 1


def test_rcpt_after_bdat_is_503(server):
    chunk = b"Subject: mix\r\n\r\n"
    with server.smtp() as d:
        start_tx(d)
        d.send(b"BDAT %d\r\n" % len(chunk) + chunk)
        assert d.read_reply().code == 250
        r = d.cmd("RCPT TO:<c@example.test>")
        assert r.is_(503, "5.5.1"), r


@pytest.mark.parametrize(
    "content",
    [
        b"Subject: lf\r\n\r\nline one\nline two\r\n",
        b"Subject: cr\r\n\r\nline one\rline two\r\n",
        b"Subject: end\r\n\r\nfake\n.\nMAIL FROM:<smuggler@evil.test>\r\n",
        b"Subject: trailing cr\r\n\r\nx\r",
    ],
    ids=["bare-lf", "bare-cr", "lf-dot-lf", "trailing-cr"],
)
def test_bdat_with_bare_line_ending_is_refused(server, content):
    with server.smtp() as d:
        start_tx(d)
        d.send(b"BDAT %d LAST\r\n" % len(content) + content)
        r = d.read_reply()
        assert r.is_(550, "5.6.0"), r
        assert d.cmd("NOOP").code == 250
    assert server.queue_list() == []


@pytest.mark.parametrize(
    "first,second",
    [(b"abc\r", b"x\r\n"), (b"abc", b"\nx\r\n"), (b"abc\r", b"\r\n")],
    ids=["cr-then-text", "lf-without-cr", "cr-cr-lf"],
)
def test_bare_line_ending_split_across_bdat_chunks_is_refused(server, first, second):
    with server.smtp() as d:
        start_tx(d)
        d.send(b"BDAT %d\r\n" % len(first) + first)
        assert d.read_reply().code == 250
        d.send(b"BDAT %d LAST\r\n" % len(second) + second)
        r = d.read_reply()
        assert r.is_(550, "5.6.0"), r
    assert server.queue_list() == []


def test_crlf_split_across_bdat_chunks_is_accepted(server):
    with server.smtp() as d:
        start_tx(d)
        d.send(b"BDAT 17\r\nSubject: s\r\n\r\nab\r")
        assert d.read_reply().code == 250
        d.send(b"BDAT 1 LAST\r\n\n")
        r = d.read_reply()
        assert r.is_(250, "2.0.0"), r
    assert len(server.queue_list()) == 1


@pytest.mark.mailgate(limits={"max_message_size": 2048})
def test_bdat_over_size_limit_is_552_5_3_4(server):
    with server.smtp() as d:
        start_tx(d)
        chunk = b"Subject: big\r\n\r\n" + b"z" * 1500 + b"\r\n"
        d.send(b"BDAT %d\r\n" % len(chunk) + chunk)
        assert d.read_reply().code == 250
        d.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk + b"HELP\r\n")
        r = d.read_reply()
        assert r.is_(552, "5.3.4"), r
        assert d.read_reply().code == 214  # the chunk was consumed
    assert server.queue_list() == []


def test_bdat_with_bad_size_is_501(server):
    with server.smtp() as d:
        start_tx(d)
        r = d.cmd("BDAT ten")
        assert r.code == 501 and r.enhanced.startswith("5.5."), r
        r = d.cmd("BDAT 10 NOTLAST")
        assert r.code == 501, r
