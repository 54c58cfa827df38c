"""The traffic and the server the dashboard tests share.

A loopback DNS zone (dnslib) where example.test (ours) publishes SPF, a
DKIM key and p=reject; quarantine.test publishes p=quarantine; exmaple.test
(a look-alike of ours) publishes everything and signs; none.test publishes
nothing. Mail goes through the real binary over SMTP:

- legitimate: signed by dkimpy as example.test, delivered to a sink;
- spoofed: From: example.test, unsigned, from an SPF-failing sender: refused (550);
- look-alike: signed exmaple.test: quarantined;
- quarantined: From: quarantine.test spoofed: quarantined;
- deferred: to slow.test, whose next hop answers 451 to every RCPT;
- hostile: a From display name, Subject and Message-ID carrying markup;
- refused before DATA: an open-relay attempt (RCPT to another domain,
  554), a transaction whose second RCPT is a sender-specified route (550)
  while its first goes through, and a MAIL FROM on the submission
  listener without STARTTLS (530).

The zone also has a PTR for 192.0.2.50, a source in that report, and a DMARC
aggregate report about example.test for today is imported with
`mailgate reports import`.

The dashboard's password is set through `mailgate user hash`.
"""

from __future__ import annotations

import http.client
import json
import re
import smtplib
import socket
import socketserver
import subprocess
import threading
import time
import urllib.parse
from collections import Counter

from dnslib import PTR, QTYPE, RR

from conftest import BIN, _RUNNING, MailgateServer, free_port
from loopdns import LoopbackDns, ZoneResolver
from postfix import PySink
from test_inbound_auth import Keys, message, sign

PASSWORD = "correct horse battery staple"
HELO = "client.outside.test"
OURS, QUAR, LOOKALIKE, NONE, SLOW = "example.test", "quarantine.test", "exmaple.test", "none.test", "slow.test"
GREYLIST = "451 4.7.1 Greylisted: please try again later"
SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(2)>'
WAIT = 30.0
PTR_NAME = "ptr-name.outside.test"
# A source in the imported report, with a PTR in the loopback zone (the
# resolver answers 127/8 itself, with localhost: RFC 6761).
PTR_SOURCE = "192.0.2.50"
RELAY_RCPT = "victim@elsewhere.test"
ROUTED_RCPT = "bob%elsewhere.test@example.test"
NO_TLS_SENDER = "anon@outside.test"
# The imported report: 40 messages passing (DKIM), 10 failing both.
REPORT_PASS, REPORT_FAIL = 40, 10


class PtrZone(ZoneResolver):
    """The loopback zone, plus PTR answers from `ptr` (arpa name -> name)."""

    def __init__(self):
        super().__init__()
        self.ptr: dict[str, str] = {}

    def resolve(self, request, handler):
        qname = str(request.q.qname).lower()
        if request.q.qtype == QTYPE.PTR and qname in self.ptr:
            reply = request.reply()
            reply.add_answer(RR(request.q.qname, QTYPE.PTR, rdata=PTR(self.ptr[qname]), ttl=60))
            return reply
        return super().resolve(request, handler)


class Greylist(socketserver.ThreadingTCPServer):
    """An SMTP server that answers every RCPT with `reply` (a 451 unless
    told otherwise)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, reply: str = GREYLIST):
        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                self.wfile.write(b"220 greylist.test ESMTP\r\n")
                for line in self.rfile:
                    verb = line[:4].upper()
                    if verb in (b"EHLO", b"HELO"):
                        self.wfile.write(b"250 greylist.test\r\n")
                    elif verb == b"RCPT":
                        self.wfile.write(reply.encode() + b"\r\n")
                    elif verb == b"QUIT":
                        self.wfile.write(b"221 bye\r\n")
                        return
                    else:
                        self.wfile.write(b"250 ok\r\n")

        super().__init__(("127.0.0.1", 0), Handler)
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()


class Http:
    """A small HTTP client that keeps cookies and never follows redirects."""

    def __init__(self, port: int):
        self.port = port
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, body: dict | None = None, headers: dict | None = None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        h = dict(headers or {})
        if self.cookies:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        data = None
        if body is not None:
            data = urllib.parse.urlencode(body)
            h["Content-Type"] = "application/x-www-form-urlencoded"
        c.request(method, path, body=data, headers=h)
        r = c.getresponse()
        text = r.read().decode(errors="replace")
        for v in r.headers.get_all("Set-Cookie") or []:
            name, _, rest = v.partition("=")
            value = rest.split(";", 1)[0]
            if "Max-Age=0" in v:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        c.close()
        return r.status, r.headers, text

    def login(self, password: str = PASSWORD) -> int:
        status, _, page = self.request("GET", "/login")
        assert status == 200, page
        csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        status, headers, _ = self.request("POST", "/login", {"password": password, "csrf": csrf, "next": "/"})
        return status

    def csrf(self, path: str = "/") -> str:
        status, _, page = self.request("GET", path)
        assert status == 200, page
        return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


class Env:
    def __init__(self, srv, sink, greylist, keys):
        self.srv, self.sink, self.greylist, self.keys = srv, sink, greylist, keys
        self.url = f"http://127.0.0.1:{srv.http_port}"
        self.sent: Counter = Counter()
        # Refused at the end of DATA by DMARC, from attacker@evil.test.
        self.spoofs = 0
        self.ids: dict[str, str] = {}

    def send(self, mail_from: str, data: bytes, rcpt: str = f"bob@{OURS}") -> tuple[int, str]:
        with smtplib.SMTP("127.0.0.1", self.srv.mx_port, local_hostname=HELO, timeout=30) as s:
            try:
                s.sendmail(mail_from, [rcpt], data)
                return 250, ""
            except smtplib.SMTPDataError as e:
                return e.smtp_code, e.smtp_error.decode(errors="replace")

    def api(self, path: str):
        status, body = self.srv.http_get(path)
        assert status == 200, (path, status, body)
        return json.loads(body)

    def wait(self, pred, what: str, timeout: float = WAIT):
        deadline = time.monotonic() + timeout
        while True:
            got = pred()
            if got:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.2)


def hostile_message() -> bytes:
    quoted = (SCRIPT + IMG).replace('"', '\\"')
    return (f"From: \"{quoted}\" <eve@{NONE}>\r\nTo: bob@{OURS}\r\n"
            f"Subject: {SCRIPT} {IMG}\r\nDate: Mon, 23 Nov 2026 12:00:00 +0000\r\n"
            f"Message-ID: <{SCRIPT}{IMG}@{NONE}>\r\n\r\nHello.\r\n").encode()


def send_traffic(e: Env) -> None:
    k = e.keys
    for i in range(3):
        data = sign(message(f"News <news@{OURS}>", f"legit-{i}"), OURS, k, rsa=False)
        assert e.send(f"news@{OURS}", data) == (250, "")
        e.sent["accepted"] += 1
    for i in range(2):
        code, text = e.send("attacker@evil.test", message(f"CEO <ceo@{OURS}>", f"spoof-{i}"))
        assert code == 550, (code, text)
        e.sent["refused"] += 1
        e.spoofs += 1
    e.spoof_reply = text
    data = sign(message(f"CEO <ceo@{LOOKALIKE}>", "lookalike-0"), LOOKALIKE, k, rsa=False)
    assert e.send(f"ceo@{LOOKALIKE}", data) == (250, "")
    e.sent["quarantined"] += 1
    assert e.send("attacker@evil.test", message(f"Billing <billing@{QUAR}>", "quarantined-0")) == (250, "")
    e.sent["quarantined"] += 1
    data = sign(message(f"News <news@{OURS}>", "deferred-0"), OURS, k, rsa=False)
    assert e.send(f"news@{OURS}", data, rcpt=f"carol@{SLOW}") == (250, "")
    e.sent["accepted"] += 1
    assert e.send(f"eve@{NONE}", hostile_message()) == (250, "")
    e.sent["accepted"] += 1
    send_refusals(e)


def send_refusals(e: Env) -> None:
    """Transactions refused at RCPT TO and MAIL FROM."""
    with smtplib.SMTP("127.0.0.1", e.srv.mx_port, local_hostname=HELO, timeout=30) as s:
        s.ehlo()
        code, text = s.mail("relay@spam.test")
        assert code == 250, (code, text)
        code, text = s.rcpt(RELAY_RCPT)
        assert code == 554, (code, text)
        e.relay_reply = text.decode()
    e.sent["refused"] += 1
    with smtplib.SMTP("127.0.0.1", e.srv.mx_port, local_hostname=HELO, timeout=30) as s:
        s.ehlo()
        assert s.mail("routing@spam.test")[0] == 250
        assert s.rcpt(f"bob@{OURS}")[0] == 250
        code, text = s.rcpt(ROUTED_RCPT)
        assert code == 550, (code, text)
        e.routed_reply = text.decode()
        code, _ = s.data(message(f"Routing <routing@{NONE}>", "routed-0"))
        assert code == 250
    e.sent["accepted"] += 1
    with smtplib.SMTP("127.0.0.1", e.srv.submission_port, local_hostname=HELO, timeout=30) as s:
        s.ehlo()
        code, text = s.mail(NO_TLS_SENDER)
        assert code == 530, (code, text)
        e.no_tls_reply = text.decode()
    e.sent["refused"] += 1


def dmarc_report(begin: int) -> bytes:
    """A DMARC aggregate report about our domain, as another receiver sends it."""
    def record(ip: str, count: int, result: str) -> str:
        return (f"<record><row><source_ip>{ip}</source_ip><count>{count}</count><policy_evaluated>"
                f"<disposition>none</disposition><dkim>{result}</dkim><spf>fail</spf></policy_evaluated></row>"
                f"<identifiers><header_from>{OURS}</header_from></identifiers><auth_results>"
                f"<dkim><domain>{OURS}</domain><selector>ed</selector><result>{result}</result></dkim>"
                f"<spf><domain>{OURS}</domain><scope>mfrom</scope><result>fail</result></spf></auth_results></record>")
    return ("<?xml version=\"1.0\"?>\n<feedback><report_metadata><org_name>receiver.test</org_name>"
            "<email>dmarc@receiver.test</email><report_id>dash-1</report_id>"
            f"<date_range><begin>{begin}</begin><end>{begin + 86399}</end></date_range></report_metadata>"
            f"<policy_published><domain>{OURS}</domain><adkim>r</adkim><aspf>r</aspf><p>reject</p></policy_published>"
            + record(PTR_SOURCE, REPORT_PASS, "pass") + record("198.51.100.7", REPORT_FAIL, "fail")
            + "</feedback>\n").encode()


def start(tmp) -> tuple[Env, callable]:
    keys = Keys(tmp)
    sink = PySink().start()
    greylist = Greylist()
    dns = LoopbackDns(free_port())
    zone = PtrZone()
    zone.ptr["50.2.0.192.in-addr.arpa."] = PTR_NAME + "."
    dns.resolver = zone
    dns.server.server.resolver = zone
    records = [
        ("evil.test.", "TXT", ["v=spf1 ip4:192.0.2.1 -all"]),
        (f"{OURS}.", "TXT", ["v=spf1 ip4:127.0.0.1 -all"]),
        (f"_dmarc.{OURS}.", "TXT", [f"v=DMARC1; p=reject; rua=mailto:dmarc@{OURS}"]),
        (f"_smtp._tls.{OURS}.", "TXT", [f"v=TLSRPTv1; rua=mailto:tls@{OURS}"]),
        (f"ed._domainkey.{OURS}.", "TXT", [k for k in [keys.ed_record]]),
        (f"_dmarc.{QUAR}.", "TXT", ["v=DMARC1; p=quarantine"]),
        (f"{LOOKALIKE}.", "TXT", ["v=spf1 ip4:127.0.0.1 -all"]),
        (f"_dmarc.{LOOKALIKE}.", "TXT", ["v=DMARC1; p=reject"]),
        (f"ed._domainkey.{LOOKALIKE}.", "TXT", [keys.ed_record]),
    ]
    dns.resolver.load(records)
    quarantine = tmp / "quarantine"
    srv = MailgateServer(BIN, tmp / "server", dns_port=dns.port,
                         policy={"quarantine": f"maildir:{quarantine}"},
                         extra_toml=f'[[domain]]\nname = "{SLOW}"\ndkim = false\n'
                                    f'deliver = "smtp://127.0.0.1:{greylist.port}"\n')
    hashed = subprocess.run([str(BIN), "user", "hash"], input=PASSWORD + "\n", capture_output=True,
                            text=True, timeout=60, check=True).stdout.strip()
    text = srv.config_path.read_text()
    text = text.replace('deliver = "smtp://127.0.0.1:9"', f'deliver = "{sink.url()}"')
    text = text.replace("[http]\n", f'[http]\nadmin_password = "{hashed}"\n', 1)
    srv.config_path.write_text(text)
    srv.start()
    e = Env(srv, sink, greylist, keys)
    send_traffic(e)
    report = tmp / "receiver.test!example.test.xml"
    report.write_bytes(dmarc_report(int(time.time()) // 86400 * 86400))
    out = srv.cli("reports", "import", str(report)).stdout
    assert out.startswith("stored"), out

    def stop():
        srv.stop()
        while srv in _RUNNING:
            _RUNNING.remove(srv)
        dns.stop()
        sink.stop()
        greylist.shutdown()
        greylist.server_close()

    return e, stop
