"""`mailgate spf suggest`, `mailgate dmarc whatif` and the dashboard's
advice page, end to end.

Traffic goes through the real binary against a loopback DNS zone (dnslib):
inbound mail from several loopback source addresses (127.0.0.2, .3, ...:
the whole 127/8 is loopback), DKIM-signed by dkimpy as our domain or
spoofed; mail submitted by an authenticated user (it leaves through our
egress, `[server] public_addresses`); and DMARC aggregate reports imported
with `mailgate reports import`, naming legitimate sources (aligned DKIM
pass) and spoofers. The suggested record is then served from the same
zone and evaluated with pyspf, whose DNS is pinned to that zone (never the
system resolver): every legitimate source passes, every spoofer fails, and
the record needs at most 10 lookups (pyspf gives permerror past 10, and a
spoofer's `fail` walks the whole record). A second domain's published
record needs 11 lookups through its includes: the suggestion flattens one.
`dmarc whatif` lists exactly the failing senders and volumes sent, and
the dashboard's advice page shows the same numbers.
"""

from __future__ import annotations

import json
import smtplib
import ssl
import time

import pytest

pytest.importorskip("dkim", reason="pip install dkimpy")
pytest.importorskip("nacl.signing", reason="pip install pynacl")
pytest.importorskip("dnslib", reason="pip install dnslib")
spf = pytest.importorskip("spf", reason="pip install pyspf")

from dnslib import TXT  # noqa: E402
from dnslib.server import DNSLogger, DNSServer  # noqa: E402

from conftest import BIN, _RUNNING, MailgateServer, free_port  # noqa: E402
from loopdns import Zone, pyspf_check  # noqa: E402
from postfix import PySink  # noqa: E402
from test_dkim import hash_password  # noqa: E402
from test_inbound_auth import Keys, message, sign  # noqa: E402

OURS, FLAT = "advice.test", "flat.test"
EGRESS = "127.0.0.9"
HELO = "client.outside.test"
USER, SECRET = "app", "a long submission secret"

# Inbound (through our MX): source -> (messages, DKIM-signed as OURS).
INBOUND = {"127.0.0.2": (3, True), "127.0.0.3": (2, True), "127.0.0.4": (2, False)}
SUBMITTED = 2
# Aggregate report rows about OURS: (source, count, dkim domain and result,
# spf domain and result, dkim evaluated, spf evaluated).
REPORT_ROWS = {
    "r-big-1": [
        ("127.0.1.10", 5, (OURS, "pass"), (OURS, "fail"), "pass", "fail"),
        ("127.0.1.11", 4, (OURS, "pass"), (OURS, "fail"), "pass", "fail"),
        # The same legitimate sender once failing (a message altered on the way).
        ("127.0.1.11", 1, (OURS, "fail"), (OURS, "fail"), "fail", "fail"),
        ("127.0.1.12", 7, None, ("evil.test", "pass"), "fail", "fail"),
        ("127.0.0.2", 10, (OURS, "pass"), (OURS, "pass"), "pass", "pass"),
        # An ESP not yet set up to sign as the domain.
        ("127.0.1.20", 6, ("sendgrid.net", "pass"), ("bounces.sendgrid.net", "pass"), "fail", "fail"),
    ],
    "r-other-1": [
        ("127.0.1.13", 3, None, (OURS, "fail"), "fail", "fail"),
        ("127.0.1.10", 2, (OURS, "pass"), (OURS, "softfail"), "pass", "fail"),
    ],
}
LEGIT = {EGRESS, "127.0.0.2", "127.0.0.3", "127.0.1.10", "127.0.1.11"}
SPOOFERS = {"127.0.0.4", "127.0.1.12", "127.0.1.13"}
# dmarc whatif: every failing sender and its failing volume.
FAILING_LEGIT = {"127.0.1.11": 1, "127.0.1.20": 6}
FAILING_UNAUTH = {"127.0.0.4": 2, "127.0.1.12": 7, "127.0.1.13": 3}

# flat.test: two includes, 6 + 5 = 11 lookups.
FLAT_ROWS = {
    "r-flat-1": [
        ("127.0.2.1", 4, (FLAT, "pass"), (FLAT, "pass"), "pass", "pass"),     # in inc1's ip4
        ("127.0.9.1", 2, (FLAT, "pass"), (FLAT, "pass"), "pass", "pass"),     # in inc1's nested n1
        ("127.0.3.9", 3, (FLAT, "pass"), (FLAT, "pass"), "pass", "pass"),     # in inc2's ip4
        ("127.0.4.1", 5, None, (FLAT, "fail"), "fail", "fail"),               # spoofer
    ],
}
FLAT_LEGIT = {EGRESS, "127.0.2.1", "127.0.9.1", "127.0.3.9"}
FLAT_SPOOFERS = {"127.0.4.1", "127.0.2.9"}


def report_xml(report_id: str, org: str, domain: str, rows) -> str:
    now = int(time.time())
    records = []
    for ip, count, dkim_auth, spf_auth, dkim_eval, spf_eval in rows:
        dkim_xml = (f"<dkim><domain>{dkim_auth[0]}</domain><selector>ed</selector><result>{dkim_auth[1]}</result></dkim>"
                    if dkim_auth else "")
        records.append(
            f"<record><row><source_ip>{ip}</source_ip><count>{count}</count><policy_evaluated>"
            f"<disposition>none</disposition><dkim>{dkim_eval}</dkim><spf>{spf_eval}</spf></policy_evaluated></row>"
            f"<identifiers><header_from>{domain}</header_from></identifiers>"
            f"<auth_results>{dkim_xml}<spf><domain>{spf_auth[0]}</domain><result>{spf_auth[1]}</result></spf>"
            f"</auth_results></record>")
    return ("<?xml version=\"1.0\"?><feedback><report_metadata>"
            f"<org_name>{org}</org_name><email>noreply@{org.lower().replace(' ', '')}.test</email>"
            f"<report_id>{report_id}</report_id><date_range><begin>{now - 86400}</begin><end>{now - 60}</end></date_range>"
            f"</report_metadata><policy_published><domain>{domain}</domain><adkim>r</adkim><aspf>r</aspf>"
            f"<p>none</p><sp>none</sp><pct>100</pct></policy_published>{''.join(records)}</feedback>")


def txt(value: str) -> TXT:
    return TXT([value[i:i + 255] for i in range(0, len(value), 255)])


class Env:
    pass


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("spf-suggest")
    keys = Keys(tmp)
    sink = PySink().start()
    zone = Zone()
    dns_server = DNSServer(zone, port=free_port(), address="127.0.0.1",
                           logger=DNSLogger(prefix=False, logf=lambda s: None))
    dns_server.start_thread()
    port = dns_server.server.server_address[1]
    zone.add(f"{OURS}.", "TXT", txt("v=spf1 ip4:127.0.0.2 ~all"))
    zone.add(f"_dmarc.{OURS}.", "TXT", txt("v=DMARC1; p=none"))
    zone.add(f"ed._domainkey.{OURS}.", "TXT", txt(keys.ed_record))
    zone.add("evil.test.", "TXT", txt("v=spf1 ip4:192.0.2.1 -all"))
    # flat.test: include 1 costs 1 + 5 nested, include 2 costs 1 + 4.
    inc1 = f"inc1.esp.{FLAT}"
    inc2 = f"inc2.esp.{FLAT}"
    zone.add(f"{FLAT}.", "TXT", txt(f"v=spf1 include:{inc1} include:{inc2} ~all"))
    zone.add(f"_dmarc.{FLAT}.", "TXT", txt("v=DMARC1; p=quarantine"))
    zone.add(f"{inc1}.", "TXT", txt("v=spf1 ip4:127.0.2.0/30 " + " ".join(f"include:n{i}.{inc1}" for i in range(1, 6)) + " -all"))
    for i in range(1, 6):
        zone.add(f"n{i}.{inc1}.", "TXT", txt(f"v=spf1 ip4:127.0.9.{i} -all"))
    zone.add(f"{inc2}.", "TXT", txt("v=spf1 ip4:127.0.3.8/29 " + " ".join(f"include:m{i}.{inc2}" for i in range(1, 5)) + " -all"))
    for i in range(1, 5):
        zone.add(f"m{i}.{inc2}.", "TXT", txt(f"v=spf1 ip4:127.0.8.{i} -all"))
    users = (f'[[user]]\nname = "{USER}"\npassword = "{hash_password(BIN, SECRET)}"\n'
             f'send_as = ["*@{OURS}"]\n')
    domains = "".join(f'[[domain]]\nname = "{d}"\ndkim = false\ndeliver = "{sink.url()}"\n' for d in (OURS, FLAT))
    srv = MailgateServer(BIN, tmp / "server", dns_port=port, extra_toml=domains + users)
    text = srv.config_path.read_text().replace("[server]\n", f'[server]\npublic_addresses = ["{EGRESS}"]\n', 1)
    srv.config_path.write_text(text)
    srv.start()
    e = Env()
    e.srv, e.zone, e.port, e.tmp = srv, zone, port, tmp
    send_traffic(e, keys)
    files = []
    for reports, domain in ((REPORT_ROWS, OURS), (FLAT_ROWS, FLAT)):
        for rid, rows in reports.items():
            path = tmp / f"{rid}.xml"
            path.write_text(report_xml(rid, "Big Mailbox" if "big" in rid or "flat" in rid else "Other Box", domain, rows))
            files.append(str(path))
    out = srv.cli("reports", "import", *files).stdout
    assert f"{len(files)} stored" in out, out
    # Our own evaluations reach the store within the writer's batching.
    deadline = time.monotonic() + 15
    while True:
        s = suggest(e, OURS)
        fails = {f["ip"]: f["volume"] for f in s["would_fail"]}
        if fails.get("127.0.0.4") == 2 and any(x["ip"] == EGRESS and x["volume"] >= SUBMITTED for x in s["sources"]):
            break
        assert time.monotonic() < deadline, f"the traffic never reached the store: {s}"
        time.sleep(0.3)
    yield e
    srv.stop()
    while srv in _RUNNING:
        _RUNNING.remove(srv)
    dns_server.stop()
    sink.stop()


def send_traffic(e: Env, keys) -> None:
    n = 0
    for source, (count, signed) in INBOUND.items():
        for _ in range(count):
            n += 1
            if signed:
                data, mail_from = sign(message(f"News <news@{OURS}>", f"legit-{n}"), OURS, keys, rsa=False), f"news@{OURS}"
            else:
                data, mail_from = message(f"CEO <ceo@{OURS}>", f"spoof-{n}"), "attacker@evil.test"
            with smtplib.SMTP("127.0.0.1", e.srv.mx_port, local_hostname=HELO, timeout=30,
                              source_address=(source, 0)) as s:
                s.sendmail(mail_from, [f"bob@{OURS}"], data)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", e.srv.submission_port, local_hostname="laptop.test", timeout=30) as s:
        s.starttls(context=ctx)
        s.login(USER, SECRET)
        for i in range(SUBMITTED):
            s.sendmail(f"alice@{OURS}", [f"bob@{OURS}"], message(f"Alice <alice@{OURS}>", f"submitted-{i}"))


def suggest(e: Env, domain: str) -> dict:
    return json.loads(e.srv.cli("spf", "suggest", domain, "--json").stdout)


def whatif(e: Env, domain: str, policy: str) -> dict:
    return json.loads(e.srv.cli("dmarc", "whatif", domain, "--policy", policy, "--json").stdout)


def pyspf_result(e: Env, record: str, name: str, ip: str) -> str:
    """pyspf's check_host() of `record`, served at `name` by the test
    zone; pyspf's DNS goes to that zone only."""
    e.zone.records.pop(f"{name}.", None)
    e.zone.add(f"{name}.", "TXT", txt(record))
    return pyspf_check(spf, e.port, ip, f"postmaster@{name}", HELO)


def test_suggested_record_passes_the_legitimate_and_fails_spoofers(env):
    s = suggest(env, OURS)
    record = s["record"]
    assert record.startswith("v=spf1 ") and record.endswith(" -all"), record
    assert s["lookups"] <= 10
    # Neighbours both legitimate merge; nothing widens to a spoofer.
    assert "ip4:127.0.0.2/31" in record and "ip4:127.0.1.10/31" in record and f"ip4:{EGRESS}" in record, record
    for ip in LEGIT:
        assert pyspf_result(env, record, f"suggested.{OURS}", ip) == "pass", (ip, record)
    for ip in SPOOFERS | {"127.0.1.20", "127.0.0.5", "127.0.1.14"}:
        assert pyspf_result(env, record, f"suggested.{OURS}", ip) == "fail", (ip, record)
    sources = {x["ip"]: x for x in s["sources"]}
    assert set(sources) == LEGIT, sources
    assert sources["127.0.1.10"]["volume"] == 7 and sources["127.0.1.10"]["dkim_aligned"]
    assert sources["127.0.1.11"]["volume"] == 5
    assert sources["127.0.0.2"]["volume"] == 13
    assert sources["127.0.0.3"]["volume"] == 2
    assert sources[EGRESS]["volume"] == SUBMITTED and "egress" in sources[EGRESS]["evidence"]
    assert sources["127.0.1.10"]["covered_by"] == "ip4:127.0.1.10/31"
    assert all(set(x) >= {"ip", "volume", "dkim_aligned", "ptr", "covered_by"} for x in s["sources"])
    fails = {f["ip"]: f for f in s["would_fail"]}
    assert set(fails) == SPOOFERS | {"127.0.1.20"}, fails
    assert {ip: fails[ip]["volume"] for ip in SPOOFERS} == {"127.0.0.4": 2, "127.0.1.12": 7, "127.0.1.13": 3}
    assert all(fails[ip]["likely"] == "spoofer" for ip in SPOOFERS), fails
    assert fails["127.0.1.20"]["likely"] == "unknown" and "SendGrid" in fails["127.0.1.20"]["reason"]
    # The text output says the same, for an admin.
    text = env.srv.cli("spf", "suggest", OURS).stdout
    assert record in text and "127.0.1.12" in text and "spoofer" in text, text


def test_includes_over_ten_lookups_are_flattened(env):
    s = suggest(env, FLAT)
    record = s["record"]
    assert s["lookups"] <= 10, s
    includes = {i["include"]: i for i in s["includes"]}
    assert includes[f"inc1.esp.{FLAT}"]["lookups"] == 6 and includes[f"inc2.esp.{FLAT}"]["lookups"] == 5, includes
    assert includes[f"inc1.esp.{FLAT}"]["action"] == "flattened" and includes[f"inc2.esp.{FLAT}"]["action"] == "kept"
    assert f"include:inc2.esp.{FLAT}" in record and f"include:inc1.esp.{FLAT}" not in record, record
    assert s["lookups"] == 5
    assert any("flattened" in w and "refresh" in w for w in s["warnings"]), s["warnings"]
    for ip in FLAT_LEGIT:
        assert pyspf_result(env, record, f"suggested.{FLAT}", ip) == "pass", (ip, record)
    for ip in FLAT_SPOOFERS:
        assert pyspf_result(env, record, f"suggested.{FLAT}", ip) == "fail", (ip, record)
    sources = {x["ip"]: x for x in s["sources"]}
    assert FLAT_LEGIT <= set(sources), sources
    assert sources["127.0.3.9"]["covered_by"] == f"include:inc2.esp.{FLAT}"
    assert sources["127.0.2.1"]["covered_by"].startswith(f"include:inc1.esp.{FLAT} (flattened")
    assert [f["ip"] for f in s["would_fail"]] == ["127.0.4.1"]
    # The published record itself is over the limit: pyspf agrees.
    assert pyspf_result(env, f"v=spf1 include:inc1.esp.{FLAT} include:inc2.esp.{FLAT} -all",
                        f"published.{FLAT}", "127.0.4.1") == "permerror"


@pytest.mark.parametrize("policy", ["quarantine", "reject"])
def test_whatif_lists_the_failing_senders_and_volumes(env, policy):
    w = whatif(env, OURS, policy)
    assert (w["domain"], w["policy"], w["days"]) == (OURS, policy, 30)
    got = {(x["ip"], x["class"]): x["volume"] for x in w["senders"]}
    want = {**{(ip, "legitimate"): v for ip, v in FAILING_LEGIT.items()},
            **{(ip, "unauthenticated"): v for ip, v in FAILING_UNAUTH.items()}}
    assert got == want, w["senders"]
    assert all(x["reason"] for x in w["senders"])
    assert w["failing"] == sum(want.values())
    assert w["legitimate_failing"] == sum(FAILING_LEGIT.values())
    sent = sum(c for c, _ in INBOUND.values()) + SUBMITTED + sum(r[1] for r in REPORT_ROWS["r-big-1"] + REPORT_ROWS["r-other-1"])
    assert w["messages"] == sent
    assert [p["policy"] for p in w["plan"]] == ["none", "quarantine", "reject"]
    assert all(p["criterion"] for p in w["plan"])
    assert w["plan"][0]["status"] == "done" and w["plan"][1]["status"] == "not yet"
    text = env.srv.cli("dmarc", "whatif", OURS, "--policy", policy).stdout
    assert "127.0.1.12" in text and "p=reject" in text and "legitimate" in text.lower(), text


def test_whatif_refuses_an_unknown_policy(env):
    p = env.srv.cli("dmarc", "whatif", OURS, "--policy", "none", check=False)
    assert p.returncode != 0 and "quarantine or reject" in p.stderr


def test_dashboard_advice_page_shows_the_same_numbers(env):
    status, body = env.srv.http_get(f"/domains/{OURS}/advice?format=json")
    assert status == 200, body
    page = json.loads(body)
    cli = suggest(env, OURS)
    assert page["spf"]["record"] == cli["record"] and page["spf"]["lookups"] == cli["lookups"]
    strip = lambda xs, keys: sorted(tuple(x[k] for k in keys) for x in xs)  # noqa: E731
    assert strip(page["spf"]["sources"], ("ip", "volume", "covered_by")) == strip(cli["sources"], ("ip", "volume", "covered_by"))
    assert strip(page["spf"]["would_fail"], ("ip", "volume", "likely")) == strip(cli["would_fail"], ("ip", "volume", "likely"))
    for policy in ("quarantine", "reject"):
        w = whatif(env, OURS, policy)
        assert page[policy]["policy"] == policy
        assert strip(page[policy]["senders"], ("ip", "volume", "class")) == strip(w["senders"], ("ip", "volume", "class"))
    # The published records, checked as `mailgate check` checks them.
    p = env.srv.cli("check", OURS, "--json", check=False)
    assert p.returncode in (0, 1, 2), p.stderr
    checked = json.loads(p.stdout)
    verdicts = lambda doc: sorted((f["check"], f["severity"], f["code"]) for f in doc["findings"])  # noqa: E731
    assert page["check"]["domain"] == OURS and verdicts(page["check"]) == verdicts(checked)
    assert page["check"]["spf"]["lookups"] == checked["spf"]["lookups"]
    status, html = env.srv.http_get(f"/domains/{OURS}/advice")
    assert status == 200 and cli["record"] in html and "127.0.1.12" in html and "What if p=reject" in html
    assert 'id="check-findings"' in html and all(f["code"] in html for f in checked["findings"])
    status, domain_page = env.srv.http_get(f"/domains/{OURS}")
    assert status == 200 and f'href="/domains/{OURS}/advice"' in domain_page
    # Same authentication as every page, and only for our domains.
    assert env.srv.http_get(f"/domains/{OURS}/advice?format=json", token="")[0] == 401
    assert env.srv.http_get("/domains/elsewhere.test/advice?format=json")[0] == 404
