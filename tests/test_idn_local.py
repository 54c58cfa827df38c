"""A local domain written as a U-label is the same domain as its A-label:
RCPT to either spelling is ours (not relay), routes to the domain's next
hop, and a `send_as` pattern in one spelling covers an address in the
other. Before, the other spelling was refused as relay or as not owned."""

from __future__ import annotations

import pytest

from helpers import Dialogue
from test_tls_auth import hashes, login, start_server, submission_tls  # noqa: F401

U = "b\u00fccher.example"             # bücher.example
A = U.encode("idna").decode()         # xn--bcher-kva.example


def local_domain(name: str, sink_port: int = 9) -> str:
    return (f'[[domain]]\nname = "{name}"\ndkim = false\n'
            f'deliver = "smtp://127.0.0.1:{sink_port}"\n')


@pytest.mark.parametrize("configured, written", [(U, A), (A, U), (U, U), (A, A.upper())])
def test_rcpt_to_either_spelling_of_a_local_idn_domain_is_ours(mailgate_factory, configured, written):
    srv = mailgate_factory("idn", extra_toml=local_domain(configured)).start()
    with Dialogue(srv.mx_port) as d:
        d.ehlo("client.test")
        utf8 = " SMTPUTF8" if not written.isascii() else ""
        assert d.cmd(f"MAIL FROM:<someone@elsewhere.test>{utf8}").code == 250
        r = d.cmd(f"RCPT TO:<user@{written}>")
        assert r.code == 250, f"{configured} configured, {written} written: {r}"
        # A look-alike of the domain is still someone else's.
        r = d.cmd("RCPT TO:<user@xn--bcher-kva.example.evil.test>")
        assert r.is_(554, "5.7.1"), r


@pytest.fixture
def idn_user_server(mailgate_factory, hashes):
    extra = (f'[[user]]\nname = "idn"\npassword = "{hashes["app"]}"\n'
             f'send_as = ["*@{U}", "*@*.{U}"]\n')
    return start_server(mailgate_factory, hashes, name="idnsend", extra=extra)


@pytest.mark.parametrize("sender, owned", [
    (f"app@{A}", True),
    (f"app@{A.upper()}", True),
    (f"app@{U}", True),
    (f"app@news.{A}", True),
    ("app@bucher.example", False),
    (f"app@{A}.evil.test", False),
])
def test_send_as_pattern_covers_both_spellings(idn_user_server, sender, owned):
    d = submission_tls(idn_user_server)
    login(d, "idn")
    utf8 = " SMTPUTF8" if not sender.isascii() else ""
    r = d.cmd(f"MAIL FROM:<{sender}>{utf8}")
    if owned:
        assert r.code == 250, f"{sender}: {r}"
    else:
        assert r.is_(553, "5.7.1"), f"{sender}: {r}"
    d.close()
