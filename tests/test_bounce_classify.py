"""Bounce classification, black-box through the real binary.

The corpus in tests/bounces/ holds failure replies and bounce messages in
the formats Gmail, Microsoft, Yahoo, Postfix, Exim, qmail and Exchange
document for theirs (written by us after that documentation; see
tests/bounces/README.md), each with the kind and category a mail
administrator would file it under. `mailgate bounce classify` must agree
on at least 95% of them; the test prints the accuracy and every miss.
Then a live delivery: a next hop that answers 452 4.2.2 leaves the
recipient deferred, and the queue JSON and the metrics say why.
"""

from __future__ import annotations

import json
import smtplib
import subprocess
import time
from pathlib import Path

from dashboard_env import Greylist

CORPUS = Path(__file__).parent / "bounces"


def rows(name: str) -> list[list[str]]:
    out = []
    for line in (CORPUS / name).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            fields = line.split("\t")
            assert len(fields) >= 4, f"{name}: {line!r}"
            out.append(fields)
    return out


def classify(mailgate_bin, *args: str) -> list[dict]:
    out = subprocess.run([str(mailgate_bin), "bounce", "classify", "--json", *args],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["results"]


def test_the_reply_corpus_is_classified_as_an_administrator_would(mailgate_bin):
    cases = rows("replies.tsv")
    args = [a for kind, category, reply, _src in cases for a in ("--reply", reply)]
    got = classify(mailgate_bin, *args)
    assert len(got) == len(cases)
    misses = [(kind, category, g["kind"], g["category"], g["rule"], reply)
              for (kind, category, reply, _src), g in zip(cases, got)
              if (g["kind"], g["category"]) != (kind, category)]
    accuracy = 1 - len(misses) / len(cases)
    print(f"\nreplies: {len(cases) - len(misses)}/{len(cases)} = {accuracy:.1%}")
    for m in misses:
        print("  expected %s %s, got %s %s (rule line %s): %s" % m)
    assert accuracy >= 0.95, misses
    # Every category and both kinds occur, so none is dead.
    assert {c for _, c, _, _ in cases} == {"no_such_user", "mailbox_full", "message_too_large", "policy_or_spam",
                                           "reputation_or_block", "dns", "tls", "rate_limited", "other"}
    assert {k for k, _, _, _ in cases} == {"hard", "soft"}


def test_the_bounce_message_corpus_gives_each_recipient_its_class(mailgate_bin):
    cases = rows("messages.tsv")
    files = sorted({f for f, *_ in cases})
    got = classify(mailgate_bin, *[str(CORPUS / f) for f in files])
    found = {(Path(g["file"]).name, g["recipient"] or "-"): g for g in got}
    misses = []
    for f, recipient, kind, category, _src in cases:
        g = found.get((f, recipient))
        want = (None, None) if kind == "-" else (kind, category)
        if g is None or (g["kind"], g["category"]) != want:
            misses.append((f, recipient, want, g))
    # Nothing found that the corpus does not list (a quoted original
    # message is not a second bounce).
    extra = set(found) - {(f, r) for f, r, *_ in cases}
    accuracy = 1 - len(misses) / len(cases)
    print(f"\nmessages: {len(cases) - len(misses)}/{len(cases)} = {accuracy:.1%}")
    for m in misses:
        print("  ", m)
    assert accuracy >= 0.95, misses
    assert not extra, extra
    dsn = found[("postfix-dsn.eml", "full@example.com")]
    assert dsn["format"] == "dsn" and dsn["status"] == "5.2.2" and dsn["remote_mta"] == "mx.example.com", dsn
    assert "Mailbox full" in dsn["diagnostic"], dsn


def test_hostile_bounce_messages_never_crash_the_reader(mailgate_bin, tmp_path):
    cases = {
        "empty.eml": b"",
        "binary.eml": bytes(range(256)) * 64,
        "deep.eml": b"Content-Type: multipart/report; report-type=delivery-status; boundary=a\r\n\r\n"
                    + b"--a\r\nContent-Type: multipart/mixed; boundary=a\r\n\r\n" * 2000,
        "fields.eml": b"Content-Type: multipart/report; boundary=b\r\n\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\n"
                      + b"Final-Recipient: rfc822;\r\nAction:\r\nStatus: 9.9.9.9.9\r\nDiagnostic-Code: ;;;\r\n" * 5000 + b"--b--\r\n",
        "lines.eml": b"Subject: x\r\n\r\n" + b"<a@b>:\r\n" * 50000,
    }
    for name, body in cases.items():
        (tmp_path / name).write_bytes(body)
    got = classify(mailgate_bin, *[str(tmp_path / n) for n in cases])
    assert {Path(g["file"]).name for g in got} == set(cases)


def test_a_deferred_recipient_says_why_in_the_queue_and_the_metrics(mailgate_factory):
    hop = Greylist("452 4.2.2 <full@quota.test>: Mailbox over quota")
    try:
        srv = mailgate_factory("classify", relay={"trusted_networks": ["127.0.0.1/32"]},
                               extra_toml='[[domain]]\nname = "quota.test"\ndkim = false\n'
                                          f'deliver = "smtp://127.0.0.1:{hop.port}"\n').start()
        with smtplib.SMTP("127.0.0.1", srv.mx_port, timeout=30) as s:
            s.ehlo("client.test")
            s.mail("alice@example.test")
            s.rcpt("full@quota.test")
            code, reply = s.data(b"From: alice@example.test\r\nTo: full@quota.test\r\nSubject: hi\r\n\r\nhi\r\n")
            assert code == 250, reply
        deadline = time.monotonic() + 30
        rcpt: dict = {}
        while time.monotonic() < deadline:
            msgs = srv.queue_list()
            rcpt = msgs[0]["recipients"][0] if msgs else {}
            if rcpt.get("status") == "deferred":
                break
            time.sleep(0.2)
        assert rcpt.get("classification") == {"kind": "soft", "category": "mailbox_full"}, rcpt
        status, metrics = srv.http_get("/metrics")
        assert status == 200
        line = 'mailgate_delivery_failures_total{kind="soft",category="mailbox_full"}'
        counts = [float(x.split()[-1]) for x in metrics.splitlines() if x.startswith(line)]
        assert counts and counts[0] >= 1, [x for x in metrics.splitlines() if "delivery_failures" in x][:5]
    finally:
        hop.shutdown()
        hop.server_close()
