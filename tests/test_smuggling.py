"""SMTP smuggling battery.

Only CRLF.CRLF ends DATA. For every malformed "ending" below, the client
sends a first message, the fake ending, then a complete smuggled transaction
(MAIL/RCPT/DATA/content/CRLF.CRLF) inside the same DATA. The server must
answer exactly once after the data (a 550 5.6.0 refusal, or one 250 that
takes everything as one message), never queue two messages, and never queue
the smuggled sender.
"""

import time

import pytest

SMUGGLER = "smuggler@evil.test"

FIRST = b"From: a@sender.test\r\nSubject: first\r\n\r\nfirst body"
SMUGGLED = (
    b"MAIL FROM:<" + SMUGGLER.encode() + b">\r\n"
    b"RCPT TO:<victim@example.test>\r\n"
    b"DATA\r\n"
    b"From: ceo@example.test\r\nSubject: smuggled\r\n\r\nsmuggled body\r\n"
)

# (id, fake ending, whether a single 250 is an acceptable answer because the
# ending is valid content that must simply be kept as part of the message)
ENDINGS = [
    ("lf-dot-lf", b"\n.\n", False),
    ("cr-dot-cr", b"\r.\r", False),
    ("lf-dot-crlf", b"\n.\r\n", False),
    ("crlf-dot-lf", b"\r\n.\n", False),
    ("crlf-nul-dot-crlf", b"\r\n\x00.\r\n", False),
    ("crlf-dot-cr", b"\r\n.\r", False),
    ("cr-dot-crlf", b"\r.\r\n", False),
    ("lf-dot-cr", b"\n.\r", False),
    ("crlf-dot-nul-crlf", b"\r\n.\x00\r\n", False),
    ("crlf-dot-cr-crlf", b"\r\n.\r\r\n", False),
    ("cr-crlf-dot-cr-crlf", b"\r\r\n.\r\r\n", False),
    ("lf-lf-dot-lf-lf", b"\n\n.\n\n", False),
    ("crlf-dot-lf-crlf", b"\r\n.\n\r\n", False),
    ("cr-cr-dot-cr-cr", b"\r\r.\r\r", False),
    ("crlf-dot-space-crlf", b"\r\n. \r\n", True),
    ("crlf-dot-tab-crlf", b"\r\n.\t\r\n", True),
    ("crlf-dot-dot-crlf", b"\r\n..\r\n", True),
    ("crlf-space-dot-crlf", b"\r\n .\r\n", True),
]


def send_smuggling_attempt(d, ending: bytes, split: str) -> None:
    first = FIRST + ending
    rest = SMUGGLED + b".\r\n"
    if split == "one-write":
        d.send(first + rest)
    elif split == "after-fake-ending":
        d.send(first)
        time.sleep(0.1)
        d.send(rest)
    elif split == "byte-by-byte-ending":
        d.send(FIRST)
        for b in ending:
            time.sleep(0.02)
            d.send(bytes([b]))
        time.sleep(0.05)
        d.send(rest)
    else:
        raise ValueError(split)


@pytest.mark.parametrize("split", ["one-write", "after-fake-ending", "byte-by-byte-ending"])
@pytest.mark.parametrize("ending,may_accept", [e[1:] for e in ENDINGS], ids=[e[0] for e in ENDINGS])
def test_fake_data_ending_does_not_smuggle_a_second_message(server, ending, may_accept, split):
    with server.smtp() as d:
        d.ehlo()
        assert d.cmd("MAIL FROM:<a@sender.test>").code == 250
        assert d.cmd("RCPT TO:<b@example.test>").code == 250
        assert d.cmd("DATA").code == 354
        send_smuggling_attempt(d, ending, split)
        r = d.read_reply()
        if may_accept:
            assert r.is_(550, "5.6.0") or r.is_(250, "2.0.0"), r
        else:
            assert r.is_(550, "5.6.0"), r
        # Exactly one reply after the data: the next one answers HELP.
        nxt = d.cmd("HELP")
        assert nxt.code == 214, f"extra reply after the data: {nxt}; {d.dump()}"
        assert d.cmd("QUIT").code == 221
    msgs = server.queue_list()
    assert len(msgs) <= 1, msgs
    assert all(m["sender"] != SMUGGLER for m in msgs), msgs
    if r.code == 250:
        (m,) = msgs
        assert m["sender"] == "a@sender.test"
        assert [x["address"] for x in m["recipients"]] == ["b@example.test"]
        # The smuggled text stayed inside the one message.
        assert m["size"] > len(FIRST) + len(SMUGGLED)
    else:
        assert msgs == []


def test_fake_ending_then_rset_and_quit_inside_data_are_content(server):
    # Commands after a fake ending are content: RSET/QUIT there must not act.
    with server.smtp() as d:
        d.ehlo()
        assert d.cmd("MAIL FROM:<a@sender.test>").code == 250
        assert d.cmd("RCPT TO:<b@example.test>").code == 250
        assert d.cmd("DATA").code == 354
        d.send(b"Subject: x\r\n\r\nbody\n.\nQUIT\r\n")
        time.sleep(0.2)
        assert d.is_open(), "QUIT inside DATA content closed the connection"
        d.send(b"more\r\n.\r\n")
        r = d.read_reply()
        assert r.is_(550, "5.6.0"), r
        assert d.cmd("NOOP").is_(250, "2.0.0")
    assert server.queue_list() == []


def test_refused_smuggling_attempt_leaves_session_usable(server):
    with server.smtp() as d:
        d.ehlo()
        assert d.cmd("MAIL FROM:<a@sender.test>").code == 250
        assert d.cmd("RCPT TO:<b@example.test>").code == 250
        assert d.cmd("DATA").code == 354
        d.send(FIRST + b"\n.\n" + SMUGGLED + b".\r\n")
        assert d.read_reply().is_(550, "5.6.0")
        # No transaction is left over: RCPT needs a new MAIL.
        assert d.cmd("RCPT TO:<b@example.test>").code == 503
        r = d.transaction(sender="clean@sender.test")
        assert r.code == 250, r
    assert [m["sender"] for m in server.queue_list()] == ["clean@sender.test"]


def test_well_formed_pipelined_second_message_is_not_smuggling(server):
    # Control case: with a real CRLF.CRLF both messages are legitimate, which
    # shows the battery above would see a second message if there were one.
    with server.smtp() as d:
        d.ehlo()
        assert d.cmd("MAIL FROM:<a@sender.test>").code == 250
        assert d.cmd("RCPT TO:<b@example.test>").code == 250
        assert d.cmd("DATA").code == 354
        d.send(FIRST + b"\r\n.\r\n" + SMUGGLED + b".\r\n")
        replies = d.read_replies(5)
        assert [r.code for r in replies] == [250, 250, 250, 354, 250], replies
    senders = sorted(m["sender"] for m in server.queue_list())
    assert senders == sorted(["a@sender.test", SMUGGLER])
