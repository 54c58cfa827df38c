"""The dashboard in a real browser: headless Debian chromium driven by
Playwright (never a browser Playwright downloads), against the real binary
after legitimate, spoofed, look-alike, quarantined and deferred mail went
through it (see dashboard_env.py). The test logs in with the password
form, opens every page, finds the numbers it sent, searches for the
refused spoof and reads its reason on the timeline, finds the deferred
message's last reply, and saves a screenshot of each page to
tests/artifacts/.
"""

from __future__ import annotations

import html
import json
import re
import urllib.parse
from pathlib import Path

import pytest

pytest.importorskip("dkim", reason="pip install dkimpy")
pytest.importorskip("dnslib", reason="pip install dnslib")
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")

from dashboard_env import (  # noqa: E402
    GREYLIST, HELO, IMG, NO_TLS_SENDER, OURS, PASSWORD, PTR_NAME, PTR_SOURCE, RELAY_RCPT, REPORT_FAIL, REPORT_PASS, ROUTED_RCPT,
    SCRIPT, SLOW, Http, start,
)

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e, stop = start(tmp_path_factory.mktemp("dashboard"))
    yield e
    stop()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail("Debian chromium is needed: apt-get install chromium")
    with sync_api.sync_playwright() as p:
        # Root in CI: chromium's sandbox needs user namespaces it may not have.
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield b
        b.close()


def settled(env) -> dict:
    """The overview's JSON twin once the writer has recorded the traffic."""
    def ready():
        o = env.api("/?format=json")
        t = o["today"]
        want = env.sent
        done = (t["refused"] == want["refused"] and t["quarantined"] == want["quarantined"]
                and t["accepted"] == want["accepted"] + want["quarantined"] and t["deferred"] >= 1)
        return o if done else None
    return env.wait(ready, "the overview to count the traffic sent")


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"), full_page=True)


def no_injection(page) -> None:
    """Nothing the traffic carried became markup."""
    assert page.evaluate("document.querySelectorAll('img[onerror], script').length") == 0
    html = page.content()
    assert SCRIPT not in html and "<img src=x" not in html


def test_operator_finds_what_was_sent(env, browser):
    o = settled(env)
    total = sum(env.sent.values())
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))

    # Not logged in: to the login form, and back to the page after it.
    page.goto(env.url + "/queue")
    assert "/login" in page.url
    shot(page, "login")
    page.fill("#password", "wrong")
    page.click("button[type=submit]")
    assert "Wrong password" in page.inner_text("body")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/queue$"))

    # Overview: today's numbers are the traffic sent.
    page.goto(env.url + "/")
    # The labels are upper-cased by the style sheet, which innerText reflects.
    today = page.inner_text("#today").lower()
    assert f"received\n{total}\n" in today, today
    assert f"accepted\n{env.sent['accepted'] + env.sent['quarantined']}\n" in today, today
    assert f"quarantined\n{env.sent['quarantined']}\n" in today, today
    assert f"refused\n{env.sent['refused']}" in today, today
    assert int(page.inner_text("#queue")) == o["queue_messages"] >= 1
    assert page.locator("svg.chart").count() >= 1
    no_injection(page)
    shot(page, "overview")

    # Queue: the deferred message under slow.test, with its last reply.
    page.goto(env.url + "/queue")
    row = page.locator("#qshape tr", has_text=SLOW)
    assert row.count() == 1
    assert GREYLIST in row.inner_text()
    no_injection(page)
    shot(page, "queue")
    row.locator("a").first.click()
    page.wait_for_url(re.compile(r".*/messages/[^/?]+$"))
    assert GREYLIST in page.inner_text("#recipients")
    assert GREYLIST in page.inner_text("#timeline")
    assert "deferred" in page.inner_text("#timeline")
    shot(page, "deferred-message")

    # Search for the spoof by its sender: refused, and why.
    page.goto(env.url + "/messages")
    page.fill("input[name=q]", "attacker@evil.test")
    page.click("form.search button")
    results = page.inner_text("#results")
    assert results.count("refused") == env.spoofs, results
    shot(page, "search")
    page.locator("#results a", has_text="r-").first.click()
    page.wait_for_url(re.compile(r".*/messages/r-[0-9a-f]{16}$"))
    timeline = page.inner_text("#timeline")
    assert "Refused" in timeline and "550 5.7.1" in timeline, timeline
    assert f"DMARC policy of {OURS} is p=reject" in timeline or "p=reject" in timeline, timeline
    assert "dmarc" in timeline and "fail" in timeline
    assert "127.0.0.1" in timeline and "client.outside.test" in timeline
    shot(page, "refused-message")

    # The hostile message, found by its sender, shown as text.
    page.goto(env.url + "/messages?q=eve%40none.test")
    assert SCRIPT in page.inner_text("#results")
    no_injection(page)
    page.locator("#results a").first.click()
    page.wait_for_url(re.compile(r".*/messages/[^/?]+$"))
    assert SCRIPT in page.inner_text("#summary") and IMG in page.inner_text("#summary")
    no_injection(page)
    shot(page, "hostile-message")

    # Our domain: published records, spoofing refused, the look-alike.
    page.goto(env.url + f"/domains/{OURS}")
    dns = page.inner_text("#dns")
    assert "v=DMARC1; p=reject" in dns and "v=spf1 ip4:127.0.0.1 -all" in dns and "v=TLSRPTv1" in dns, dns
    look = page.inner_text("#lookalikes")
    assert "exmaple.test" in look and OURS in look, look
    no_injection(page)
    shot(page, "domain")

    page.goto(env.url + "/tls")
    assert "TLS" in page.inner_text("h1")
    no_injection(page)
    shot(page, "tls")

    assert dialogs == [], dialogs


def test_retry_and_delete_from_the_message_page(env, browser):
    settled(env)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(env.url + "/login")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/$"))
    queued = [m for m in env.api("/api/v1/queue")["messages"]
              if any(r["address"].endswith("@" + SLOW) for r in m["recipients"])]
    assert len(queued) == 1
    qid = queued[0]["id"]
    page.goto(env.url + f"/messages/{qid}")
    page.click("#retry")
    page.wait_for_url(re.compile(r".*\?done=retry$"))
    assert "scheduled" in page.inner_text("main")
    page.click("#delete")
    page.wait_for_url(re.compile(r".*\?done=deleted$"))
    env.wait(lambda: qid not in {m["id"] for m in env.api("/api/v1/queue")["messages"]}, "the deletion")
    # Log out: the session is gone.
    page.click("header form button")
    page.wait_for_url(re.compile(r".*/login$"))
    page.goto(env.url + "/")
    assert "/login" in page.url


def test_json_twins(env):
    settled(env)
    h = Http(env.srv.http_port)
    assert h.login() == 303
    for path in ["/", "/queue", "/messages?q=attacker%40evil.test", f"/domains/{OURS}", "/tls"]:
        sep = "&" if "?" in path else "?"
        status, headers, body = h.request("GET", path + sep + "format=json")
        assert status == 200, (path, body)
        assert headers["Content-Type"].startswith("application/json"), path
        json.loads(body)
    found = json.loads(h.request("GET", "/messages?q=attacker%40evil.test&format=json")[2])["messages"]
    # The spoofs of example.test (refused) and of quarantine.test came from that sender.
    actions = sorted(m["action"] for m in found)
    assert actions == ["quarantined"] + ["refused"] * env.spoofs, actions


def test_refusals_before_data_have_timelines(env, browser):
    """An open-relay attempt, a refused route next to an accepted
    recipient, and a MAIL FROM refused for want of STARTTLS: each found by
    its addresses, with the reply the client got."""
    settled(env)
    h = Http(env.srv.http_port)
    assert h.login() == 303

    def found(q: str) -> list:
        status, _, body = h.request("GET", "/messages?format=json&q=" + urllib.parse.quote(q))
        assert status == 200, body
        return json.loads(body)["messages"]

    def page(event_id: str) -> str:
        status, _, body = h.request("GET", f"/messages/{event_id}")
        assert status == 200, body
        return html.unescape(body)

    relay = found(RELAY_RCPT)
    assert [m["action"] for m in relay] == ["refused"], relay
    assert re.fullmatch(r"r-[0-9a-f]{16}", relay[0]["event_id"]), relay
    assert [m["event_id"] for m in found("relay@spam.test")] == [relay[0]["event_id"]]
    assert relay[0]["event_id"] in {m["event_id"] for m in found("127.0.0.1")}
    text = page(relay[0]["event_id"])
    assert "554 5.7.1 Relay access denied" in text and env.relay_reply in text, text
    assert RELAY_RCPT in text and HELO in text and "relay@spam.test" in text
    b = browser.new_page(viewport={"width": 1280, "height": 900})
    b.goto(env.url + "/login")
    b.fill("#password", PASSWORD)
    b.click("button[type=submit]")
    b.wait_for_url(re.compile(r".*/$"))
    b.goto(env.url + f"/messages/{relay[0]['event_id']}")
    assert "Relay access denied" in b.inner_text("#timeline")
    assert "Refused at RCPT TO" in b.inner_text("#timeline")
    shot(b, "relay-refused")

    routed = found(ROUTED_RCPT)
    assert [m["action"] for m in routed] == ["accepted"], routed
    text = page(routed[0]["event_id"])
    assert "Refused recipients" in text and ROUTED_RCPT in text
    assert "550 5.7.1 Sender-specified routing refused" in text, text

    no_tls = found(NO_TLS_SENDER)
    assert [m["action"] for m in no_tls] == ["refused"], no_tls
    text = page(no_tls[0]["event_id"])
    assert "530 5.7.0" in text and env.no_tls_reply in text, text
    assert "Refused at MAIL FROM" in text


def test_reverse_names_and_received_reports(env):
    """The domain page lists the sources of the imported report with their
    reverse names (a PTR in the loopback zone); the overview and
    the domain page chart and count the imported aggregate report."""
    settled(env)
    h = Http(env.srv.http_port)
    assert h.login() == 303
    total = REPORT_PASS + REPORT_FAIL
    rate = f"{REPORT_PASS * 100 / total:.1f} %"
    row = f'<td class="num">1</td><td class="num">{total}</td><td class="num">{rate}</td>'

    d = json.loads(h.request("GET", f"/domains/{OURS}?format=json")[2])
    reported = {s["source_ip"]: s for s in d["reported_sources"]}
    assert reported[PTR_SOURCE]["reverse_name"] == PTR_NAME, reported
    assert (reported[PTR_SOURCE]["messages"], reported[PTR_SOURCE]["verdict"]) == (REPORT_PASS, "would-pass")
    assert reported["198.51.100.7"]["dmarc_pass"] == 0 and reported["198.51.100.7"]["verdict"] == "would-fail"
    assert reported[PTR_SOURCE]["reporters"] == ["receiver.test"]
    # Our own evaluations' sources: the test client, named as the resolver
    # names the loopback.
    assert {s["source_ip"] for s in d["sources"]} == {"127.0.0.1"}
    for doc in (d, json.loads(h.request("GET", "/?format=json")[2])):
        series = [s for s in doc["dmarc"] if s["domain"] == OURS]
        days = [x for x in series[0]["reported"] if x["reports"]]
        assert [(x["reports"], x["messages"], x["dmarc_pass"], x["pass_rate"]) for x in days] == \
            [(1, total, REPORT_PASS, REPORT_PASS * 100 / total)], days
        # Our own checks are a series of their own.
        assert sum(x["messages"] for x in series[0]["days"]) > 0

    for path in (f"/domains/{OURS}", "/"):
        status, _, body = h.request("GET", path)
        assert status == 200
        assert "(reports received)" in body and "(our checks)" in body, path
        assert row in body, (path, re.findall(r"<table id=\"dmarc-totals\".*?</table>", body, re.S))
    assert PTR_NAME in h.request("GET", f"/domains/{OURS}")[2]
