"""Message size, recipient count, line length and error-count limits, and
malformed command lines."""

import time

import pytest

from helpers import queue_id


def body_of_size(n: int) -> bytes:
    """A message of exactly n octets (headers included), lines of <= 78."""
    head = b"Subject: size\r\n\r\n"
    assert n >= len(head) + 2
    remaining = n - len(head)
    lines = []
    while remaining > 0:
        take = min(78, remaining - 2) if remaining > 80 else remaining - 2
        lines.append(b"y" * take + b"\r\n")
        remaining -= take + 2
    data = head + b"".join(lines)
    assert len(data) == n, (len(data), n)
    return data


# -- message size -------------------------------------------------------------


@pytest.mark.mailgate(limits={"max_message_size": 10000})
def test_mail_size_param_over_limit_is_552_5_3_4(server):
    with server.smtp() as d:
        d.ehlo()
        r = d.cmd("MAIL FROM:<a@sender.test> SIZE=10001")
        assert r.is_(552, "5.3.4"), r
        # No transaction was started.
        assert d.cmd("RCPT TO:<b@example.test>").code == 503
        r = d.cmd("MAIL FROM:<a@sender.test> SIZE=10000")
        assert r.is_(250, "2.1.0"), r


@pytest.mark.mailgate(limits={"max_message_size": 10000})
def test_message_data_over_limit_is_552_5_3_4_after_the_dot_and_session_continues(server):
    with server.smtp() as d:
        d.ehlo()
        r = d.transaction(body=body_of_size(10001))
        assert r.is_(552, "5.3.4"), r
        # The connection is still in sync and usable.
        assert d.cmd("NOOP").is_(250, "2.0.0")
        r = d.transaction(sender="second@sender.test", body=body_of_size(500))
        assert r.is_(250, "2.0.0"), r
    assert [m["sender"] for m in server.queue_list()] == ["second@sender.test"]


@pytest.mark.mailgate(limits={"max_message_size": 10000})
def test_message_of_exactly_the_size_limit_is_accepted(server):
    with server.smtp() as d:
        d.ehlo()
        r = d.transaction(body=body_of_size(10000))
        assert r.is_(250, "2.0.0"), r


@pytest.mark.mailgate(limits={"max_message_size": 10000})
def test_much_larger_message_is_552_and_lying_size_param_does_not_help(server):
    with server.smtp() as d:
        d.ehlo()
        r = d.transaction(body=body_of_size(300_000), mail_params="SIZE=100")
        assert r.is_(552, "5.3.4"), r
        assert d.cmd("NOOP").code == 250
    assert server.queue_list() == []


# -- recipients ---------------------------------------------------------------


def send_rcpts(d, n: int) -> list:
    d.send(b"".join(b"RCPT TO:<r%d@example.test>\r\n" % i for i in range(n)))
    return d.read_replies(n)


def test_default_recipient_limit_is_1000_and_the_next_gets_452_4_5_3(server):
    with server.smtp(timeout=30) as d:
        d.ehlo()
        assert d.cmd("MAIL FROM:<a@sender.test>").code == 250
        replies = send_rcpts(d, 1001)
        assert all(r.is_(250, "2.1.5") for r in replies[:1000]), [
            r for r in replies[:1000] if r.code != 250
        ][:3]
        assert replies[1000].is_(452, "4.5.3"), replies[1000]
        assert d.cmd("DATA").code == 354
        d.send(b"Subject: many\r\n\r\nx\r\n.\r\n")
        assert d.read_reply().code == 250
    (m,) = server.queue_list()
    assert len(m["recipients"]) == 1000


@pytest.mark.mailgate(limits={"max_recipients": 100})
def test_configured_recipient_limit_100_gives_452_4_5_3_to_the_101st(server):
    with server.smtp() as d:
        d.ehlo()
        assert d.cmd("MAIL FROM:<a@sender.test>").code == 250
        replies = send_rcpts(d, 102)
        assert all(r.code == 250 for r in replies[:100])
        assert replies[100].is_(452, "4.5.3"), replies[100]
        assert replies[101].is_(452, "4.5.3"), replies[101]
        r = d.cmd("DATA")
        assert r.code == 354
        d.send(b"Subject: many\r\n\r\nx\r\n.\r\n")
        assert d.read_reply().code == 250
        # A new transaction gets a fresh count.
        assert d.cmd("MAIL FROM:<a@sender.test>").code == 250
        assert d.cmd("RCPT TO:<more@example.test>").code == 250
    (m,) = server.queue_list()
    assert len(m["recipients"]) == 100


# -- command line framing -----------------------------------------------------


def test_command_line_of_512_octets_is_accepted(server):
    with server.smtp() as d:
        line = b"NOOP " + b"x" * 505  # + CRLF = 512 octets (RFC 5321 4.5.3.1.4)
        assert len(line) + 2 == 512
        r = d.cmd(line)
        assert r.is_(250, "2.0.0"), r


def test_command_line_of_513_octets_is_500_5_5_2_and_session_continues(server):
    with server.smtp() as d:
        d.ehlo()
        r = d.cmd(b"NOOP " + b"x" * 506)
        assert r.is_(500, "5.5.2"), r
        r = d.cmd("NOOP")
        assert r.is_(250, "2.0.0"), r
        assert d.transaction().code == 250


def test_very_long_command_line_gets_one_500_and_its_tail_is_not_executed(server):
    with server.smtp() as d:
        d.ehlo()
        # The tail of the overlong line looks like a command; it must be
        # dropped with the rest of the line.
        d.send(b"NOOP " + b"x" * 5000 + b" QUIT\r\nMAIL FROM:<a@sender.test>\r\n")
        r = d.read_reply()
        assert r.is_(500, "5.5.2"), r
        r = d.read_reply()
        assert r.is_(250, "2.1.0"), r


def test_overlong_command_line_sent_in_pieces(server):
    with server.smtp() as d:
        d.ehlo()
        for _ in range(10):
            d.send(b"z" * 300)
            time.sleep(0.01)
        d.send(b"\r\nHELP\r\n")
        r = d.read_reply()
        assert r.is_(500, "5.5.2"), r
        r = d.read_reply()
        assert r.code == 214, r


@pytest.mark.parametrize(
    "line",
    [b"NOOP\n", b"EHLO client.test\n", b"MAIL FROM:<a@sender.test>\n"],
    ids=["noop", "ehlo", "mail"],
)
def test_bare_lf_in_command_is_500_5_5_2(server, line):
    with server.smtp() as d:
        d.cmd("HELO client.test")
        d.send(line)
        r = d.read_reply()
        assert r.is_(500, "5.5.2"), r
        assert d.cmd("NOOP").is_(250, "2.0.0")
        # The bare-LF MAIL did not start a transaction.
        assert d.cmd("RCPT TO:<b@example.test>").code == 503


@pytest.mark.parametrize(
    "line",
    [b"NOOP\rX\r\n", b"MAIL FROM:<a@sender.test>\rRCPT TO:<b@example.test>\r\n", b"NO\x00OP\r\n"],
    ids=["cr-in-noop", "cr-between-commands", "nul"],
)
def test_bare_cr_or_nul_in_command_is_500_5_5_2(server, line):
    with server.smtp() as d:
        d.cmd("HELO client.test")
        d.send(line)
        r = d.read_reply()
        assert r.is_(500, "5.5.2"), r
        assert d.cmd("NOOP").is_(250, "2.0.0")
        assert d.cmd("RCPT TO:<b@example.test>").code == 503


def test_bare_lf_between_pipelined_commands_is_refused(server):
    with server.smtp() as d:
        d.ehlo()
        d.send(b"MAIL FROM:<a@sender.test>\nRCPT TO:<b@example.test>\r\n")
        r1 = d.read_reply()
        assert r1.is_(500, "5.5.2"), r1
        r2 = d.read_reply()
        assert r2.code == 503, r2  # no MAIL was accepted


# -- DATA text lines -----------------------------------------------------------


def test_text_line_of_1000_octets_is_accepted(server):
    with server.smtp() as d:
        d.ehlo()
        body = b"Subject: long\r\n\r\n" + b"a" * 998 + b"\r\n"
        r = d.transaction(body=body)
        assert r.is_(250, "2.0.0"), r


def test_text_line_over_1000_octets_is_refused_after_the_dot(server):
    with server.smtp() as d:
        d.ehlo()
        body = b"Subject: long\r\n\r\n" + b"a" * 999 + b"\r\nshort\r\n"
        r = d.transaction(body=body)
        assert 500 <= r.code < 600 and r.enhanced and r.enhanced.startswith("5."), r
        assert d.cmd("NOOP").is_(250, "2.0.0")
        assert d.transaction(sender="ok@sender.test").code == 250
    assert [m["sender"] for m in server.queue_list()] == ["ok@sender.test"]


def test_huge_text_line_with_fake_ending_inside_is_refused_once(server):
    with server.smtp() as d:
        d.ehlo()
        assert d.cmd("MAIL FROM:<a@sender.test>").code == 250
        assert d.cmd("RCPT TO:<b@example.test>").code == 250
        assert d.cmd("DATA").code == 354
        d.send(b"Subject: long\r\n\r\n" + b"a" * 200_000 + b"\n.\nMAIL FROM:<smuggler@evil.test>\r\n.\r\n")
        r = d.read_reply()
        assert r.code >= 500, r
        assert d.cmd("HELP").code == 214
    assert server.queue_list() == []


# -- error limit -----------------------------------------------------------------


@pytest.mark.mailgate(limits={"max_errors": 3})
def test_after_max_errors_the_next_command_gets_421_4_7_0_and_close(server):
    with server.smtp() as d:
        d.ehlo()
        for _ in range(3):
            assert d.cmd("BOGUS").code == 500
        r = d.cmd("NOOP")
        assert r.is_(421, "4.7.0"), r
        d.expect_closed()


@pytest.mark.mailgate(limits={"max_errors": 3})
def test_refused_recipients_count_as_errors(server):
    with server.smtp() as d:
        d.ehlo()
        assert d.cmd("MAIL FROM:<a@sender.test>").code == 250
        for i in range(3):
            assert d.cmd(f"RCPT TO:<b{i}@other.test>").code == 554
        r = d.cmd("RCPT TO:<b@example.test>")
        assert r.is_(421, "4.7.0"), r
        d.expect_closed()


@pytest.mark.mailgate(limits={"max_errors": 3})
def test_fewer_errors_than_the_limit_keep_the_session(server):
    with server.smtp() as d:
        d.ehlo()
        for _ in range(2):
            assert d.cmd("BOGUS").code == 500
        assert d.cmd("NOOP").is_(250, "2.0.0")
        assert d.transaction().code == 250


def test_default_error_limit_is_10(server):
    with server.smtp() as d:
        for _ in range(10):
            assert d.cmd("BOGUS").code == 500
        r = d.cmd("NOOP")
        assert r.is_(421, "4.7.0"), r
        d.expect_closed()


# -- timeouts ----------------------------------------------------------------------


@pytest.mark.mailgate(limits={"command_timeout": 1})
def test_command_timeout_sends_421_4_4_2_and_closes(server):
    with server.smtp() as d:
        d.ehlo()
        t0 = time.monotonic()
        d.sock.settimeout(10)
        r = d.read_reply()
        waited = time.monotonic() - t0
        assert r.is_(421, "4.4.2"), r
        assert 0.5 <= waited <= 5, waited
        d.expect_closed()


@pytest.mark.mailgate(limits={"command_timeout": 1})
def test_command_timeout_applies_to_each_command_not_the_session(server):
    with server.smtp() as d:
        d.ehlo()
        for _ in range(5):
            time.sleep(0.5)
            assert d.cmd("NOOP").code == 250
        assert d.transaction().code == 250


@pytest.mark.mailgate(limits={"command_timeout": 1})
def test_command_timeout_with_partial_command_line(server):
    with server.smtp() as d:
        d.ehlo()
        d.send(b"MAIL FROM:<a@sen")
        r = d.read_reply()
        assert r.is_(421, "4.4.2"), r
        d.expect_closed()


@pytest.mark.mailgate(limits={"data_timeout": 1})
def test_data_timeout_sends_421_4_4_2_and_nothing_is_queued(server):
    with server.smtp() as d:
        d.ehlo()
        assert d.cmd("MAIL FROM:<a@sender.test>").code == 250
        assert d.cmd("RCPT TO:<b@example.test>").code == 250
        assert d.cmd("DATA").code == 354
        d.send(b"Subject: slow\r\n\r\npartial")
        r = d.read_reply()
        assert r.is_(421, "4.4.2"), r
        d.expect_closed()
    assert server.queue_list() == []


# -- the error limit also covers malformed lines --------------------------------------


@pytest.mark.mailgate(limits={"max_errors": 3})
def test_error_limit_counts_bare_lf_lines(server):
    with server.smtp() as d:
        d.send(b"junk\n" * 3)
        for _ in range(3):
            assert d.read_reply().is_(500, "5.5.2")
        # The limit is reached: the next line, however framed, ends it.
        d.send(b"more junk\n")
        r = d.read_reply()
        assert r.is_(421, "4.7.0"), f"{r} after 3 errors with max_errors = 3"
        d.expect_closed()


@pytest.mark.mailgate(limits={"max_errors": 3})
def test_error_limit_counts_overlong_lines(server):
    with server.smtp() as d:
        d.send((b"x" * 600 + b"\r\n") * 3)
        for _ in range(3):
            assert d.read_reply().is_(500, "5.5.2")
        d.send(b"y" * 600 + b"\r\n")
        r = d.read_reply()
        assert r.is_(421, "4.7.0"), f"{r} after 3 errors with max_errors = 3"
        d.expect_closed()


@pytest.mark.mailgate(limits={"max_errors": 5})
def test_endless_lf_only_junk_is_cut_off(server):
    # A peer shovelling LF-terminated junk (another protocol) must be
    # disconnected after max_errors errors, not answered forever.
    with server.smtp() as d:
        d.sock.settimeout(3)
        try:
            d.send(b"junk line\n" * 200)
        except OSError:
            pass
        replies = []
        try:
            while True:
                replies.append(d.read_reply())
        except Exception:
            pass
        assert replies, "no reply at all"
        assert len(replies) <= 6, f"{len(replies)} replies to 200 junk lines with max_errors = 5"
        assert replies[-1].is_(421, "4.7.0"), replies[-1]


# -- malformed DATA content ------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"Subject: x\r\n\r\nbare\nlf\r\n",
        b"Subject: x\r\n\r\nbare\rcr\r\n",
        b"Subject: x\r\n\r\nnul\x00byte\r\n",
        b"Subject: x\nX-Bare: lf-in-headers\r\n\r\nbody\r\n",
    ],
    ids=["bare-lf", "bare-cr", "nul", "bare-lf-in-header"],
)
def test_malformed_data_content_is_refused_550_5_6_0(server, body):
    with server.smtp() as d:
        d.ehlo()
        r = d.transaction(body=body)
        assert r.is_(550, "5.6.0"), r
        assert d.cmd("NOOP").is_(250, "2.0.0")
    assert server.queue_list() == []


@pytest.mark.mailgate(limits={"data_timeout": 1})
def test_data_timeout_applies_inside_a_bdat_chunk(server):
    with server.smtp() as d:
        d.ehlo()
        assert d.cmd("MAIL FROM:<a@sender.test>").code == 250
        assert d.cmd("RCPT TO:<b@example.test>").code == 250
        d.send(b"BDAT 100 LAST\r\nonly ten..")
        r = d.read_reply()
        assert r.is_(421, "4.4.2"), r
        d.expect_closed()
    assert server.queue_list() == []


@pytest.mark.mailgate(limits={"max_recipients": 100})
def test_recipients_beyond_the_limit_do_not_end_the_session(server):
    # RFC 5321 4.5.3.1.10: 452 for too many recipients tells the client to
    # send the rest in a later transaction; the transaction in progress must
    # still go through. (Postfix does not count these as errors either,
    # see smtpd_recipient_overshoot_limit.)
    with server.smtp() as d:
        d.ehlo()
        assert d.cmd("MAIL FROM:<list@sender.test>").code == 250
        replies = send_rcpts(d, 111)
        assert all(r.code == 250 for r in replies[:100])
        over = [(r.code, r.enhanced) for r in replies[100:]]
        assert over == [(452, "4.5.3")] * 11, f"replies past the limit: {[str(r) for r in replies[100:]]}"
        r = d.cmd("DATA")
        assert r.code == 354, f"DATA after 11 overshooting recipients: {r}"
        d.send(b"Subject: list\r\n\r\nx\r\n.\r\n")
        r = d.read_reply()
        assert r.is_(250, "2.0.0"), r
    (m,) = server.queue_list()
    assert len(m["recipients"]) == 100


@pytest.mark.mailgate(limits={"max_message_size": 10000})
def test_mail_size_param_of_20_digits_is_552_not_a_syntax_error(server):
    # RFC 1870: size-value ::= 1*20DIGIT; a value that does not fit our
    # integers is still a valid SIZE, just far too big.
    with server.smtp() as d:
        d.ehlo()
        r = d.cmd("MAIL FROM:<a@sender.test> SIZE=99999999999999999999")
        assert r.is_(552, "5.3.4"), r
