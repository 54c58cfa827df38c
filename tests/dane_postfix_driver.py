"""Runs the DANE cases against Postfix and mailgate side by side, inside a
private network and mount namespace, and writes both verdicts per case as
JSON. `tests/test_dane_postfix.py` starts it as

    unshare --mount --net --pid --fork --mount-proc python3 THIS OUT.json

so nothing it binds is visible outside, the bind-mounted resolv.conf is
seen only here, and every process it starts (Postfix's daemons too) dies
with it: the kernel kills a PID namespace with its first process.

Inside: `lo` up; the signed test zone of `test_dane.py` (one zone holding
every case) on an authoritative server on a loopback port; Debian's
`unbound` on 127.0.0.1:53 validating it from the zone's key as
`trust-anchor-file` (stub zones to that server, nothing else reachable);
/etc/resolv.conf -> 127.0.0.1 with `options trust-ad` (glibc drops the AD
bit otherwise, and Postfix needs it); SMTP sinks on 127.0.2.N:25 (Postfix
looks up `_25._tcp` and connects to 25); a private Postfix client
(`smtp_tls_security_level = dane`, `smtp_dns_support_level = dnssec`) and
a mailgate (`dnssec = "validate"` against the authoritative server, as in
`test_dane.py`, `mx_port = 25`). Each case's recipient goes through both;
a verdict is read from Postfix's maillog and from mailgate's queue, its
TLS-RPT preview and the sinks.

It imports the certificate helpers and the sink from `test_dane.py`, the
zone from `dnssec_dns.py`, the Postfix instance from `postfix.py` and the
mailgate process from `conftest.py`; it edits none of them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import smtplib
import subprocess
import sys
import time
import traceback
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import BIN, MailgateServer  # noqa: E402
from dnssec_dns import DnssecServer, SignedWorld, wait_for  # noqa: E402
from helpers import queue_id  # noqa: E402
from postfix import PostfixInstance, scratch_dir  # noqa: E402
from test_dane import TlsSink, der, make_cert, spki_sha256, zone_for  # noqa: E402

PORT = 25
PF_FROM = "postfix@example.test"
# mailgate in both DNSSEC modes: validating itself, and trusting unbound.
MODES = {"validate": "validate@example.test", "trust-ad": "trust-ad@example.test"}


# -- the cases ----------------------------------------------------------------

def build_cases():
    """name -> case: the sink's address and certificates, and the records.
    One signed root zone holds them all; `plain.test` is an unsigned child
    and `bogus.test`'s MX signature is broken."""
    cases = {}

    def add(name, ip, records="", chain=None, key=None, starttls=True, child=None):
        cases[name] = dict(ip=ip, records=records, chain=chain, key=key, starttls=starttls, child=child)

    cert, key = make_cert("mx.good.test")
    add("good.test", "127.0.2.1", zone_for("good.test", "127.0.2.1", PORT, [f"3 1 1 {spki_sha256(cert)}"]), [cert], key)

    cert, key = make_cert("mx.bad.test")
    other, _ = make_cert("mx.bad.test")
    add("bad.test", "127.0.2.2", zone_for("bad.test", "127.0.2.2", PORT, [f"3 1 1 {spki_sha256(other)}"]), [cert], key)

    cert, key = make_cert("mx.bogus.test")
    add("bogus.test", "127.0.2.3", zone_for("bogus.test", "127.0.2.3", PORT, [f"3 1 1 {spki_sha256(cert)}"]), [cert], key)

    cert, key = make_cert("mx.plain.test")
    other, _ = make_cert("mx.plain.test")
    add("plain.test", "127.0.2.4", chain=[cert], key=key,
        child=zone_for("plain.test", "127.0.2.4", PORT, [f"3 1 1 {spki_sha256(other)}"]))

    ca, ca_key = make_cert("Test DANE CA", ca=True)
    leaf, leaf_key = make_cert("mx.chain.test", issuer=(ca, ca_key))
    ta = hashlib.sha256(der(ca)).hexdigest()
    add("chain.test", "127.0.2.5", zone_for("chain.test", "127.0.2.5", PORT, [f"2 0 1 {ta}"]), [leaf, ca], leaf_key)

    # Two more than the issue asks, cheap here: DANE-TA's name check, and
    # PKIX-only records (unusable: TLS mandatory, unauthenticated).
    leaf2, leaf2_key = make_cert("elsewhere.example", issuer=(ca, ca_key))
    add("chain2.test", "127.0.2.6", zone_for("chain2.test", "127.0.2.6", PORT, [f"2 0 1 {ta}"]), [leaf2, ca], leaf2_key)

    cert, _ = make_cert("mx.nostls.test")
    add("nostls.test", "127.0.2.7", zone_for("nostls.test", "127.0.2.7", PORT, [f"3 1 1 {spki_sha256(cert)}"]),
        starttls=False)

    cert, key = make_cert("mx.pkix.test")
    other, _ = make_cert("mx.pkix.test")
    add("pkix.test", "127.0.2.9", zone_for("pkix.test", "127.0.2.9", PORT, [f"1 1 1 {spki_sha256(other)}"]), [cert], key)
    return cases


# -- the namespace ------------------------------------------------------------

def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=kw.pop("timeout", 30), **kw)


def setup_namespace(work: Path) -> None:
    p = run(["ip", "link", "set", "lo", "up"])
    if p.returncode != 0:
        raise RuntimeError(f"ip link set lo up: {p.stderr}")
    resolv = work / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions trust-ad\n")
    resolv.chmod(0o644)
    p = run(["mount", "--bind", str(resolv), "/etc/resolv.conf"])
    if p.returncode != 0:
        raise RuntimeError(f"bind-mounting resolv.conf: {p.stderr}")


def unbound_conf(work: Path, auth_port: int, anchor: Path, stubs: list[str]) -> str:
    """A validating unbound on 127.0.0.1:53 that knows only the test's
    server: a stub for the root and for each unsigned child (whose glue,
    127.0.0.1, would otherwise be port 53, unbound itself)."""
    lines = [
        "server:",
        "  interface: 127.0.0.1",
        "  port: 53",
        "  do-ip6: no",
        "  do-daemonize: no",
        '  chroot: ""',
        '  username: ""',
        f'  directory: "{work}"',
        f'  pidfile: "{work}/unbound.pid"',
        f'  logfile: "{work}/unbound.log"',
        "  use-syslog: no",
        "  verbosity: 1",
        "  val-log-level: 2",
        "  log-servfail: yes",
        "  access-control: 127.0.0.0/8 allow",
        # The test's server is on loopback; unbound refuses that by default.
        "  do-not-query-localhost: no",
        "  qname-minimisation: no",
        # unbound answers the RFC 6761 name `test.` itself (NXDOMAIN)
        # unless told not to; the cases live under it.
        '  local-zone: "test." nodefault',
        '  module-config: "validator iterator"',
        f'  trust-anchor-file: "{anchor}"',
        "remote-control:",
        "  control-enable: no",
    ]
    for name in stubs:
        lines += ["stub-zone:", f'  name: "{name}"', f"  stub-addr: 127.0.0.1@{auth_port}"]
    return "\n".join(lines) + "\n"


def start_unbound(work: Path, conf: str) -> subprocess.Popen:
    """Checks the config, starts unbound and waits until it answers the
    root's SOA validated (AD): the trust anchor works before any case runs."""
    path = work / "unbound.conf"
    path.write_text(conf)
    chk = run([shutil.which("unbound-checkconf") or "/usr/sbin/unbound-checkconf", str(path)])
    if chk.returncode != 0:
        raise RuntimeError(f"unbound-checkconf: {chk.stdout}{chk.stderr}")
    with open(work / "unbound.out", "ab") as out:
        proc = subprocess.Popen([shutil.which("unbound") or "/usr/sbin/unbound", "-d", "-c", str(path)],
                                stdout=out, stderr=subprocess.STDOUT)

    def validated():
        try:
            r = dns.query.udp(dns.message.make_query(".", "SOA", want_dnssec=True), "127.0.0.1", port=53, timeout=1)
        except (OSError, dns.exception.DNSException):
            return None
        return r if r.flags & dns.flags.AD else None
    if wait_for(validated, 10, 0.1) is None or proc.poll() is not None:
        log = (work / "unbound.log").read_text(errors="replace")[-3000:] if (work / "unbound.log").exists() else ""
        raise RuntimeError(f"unbound gave no validated (AD) answer for . SOA on 127.0.0.1:53:\n{log}")
    return proc


# -- Postfix --------------------------------------------------------------------

def start_postfix(work: Path) -> PostfixInstance:
    pf = PostfixInstance(work / "postfix", name="postfix-dane", main={
        "relayhost": "",
        "smtp_tls_security_level": "dane",
        "smtp_dns_support_level": "dnssec",
        "smtp_tls_loglevel": "1",
        "smtp_host_lookup": "dns",
        "smtp_address_preference": "ipv4",
        "smtp_connect_timeout": "3s",
        # The first deferral is the verdict; later tries only add lines.
        "minimal_backoff_time": "30s",
        "maximal_backoff_time": "60s",
        "queue_run_delay": "30s",
    })
    return pf.start()


def postfix_inject(pf: PostfixInstance, rcpts: list[str]) -> None:
    with smtplib.SMTP("127.0.0.1", pf.port, timeout=20) as s:
        for r in rcpts:
            s.sendmail(PF_FROM, [r], f"From: {PF_FROM}\r\nTo: {r}\r\nSubject: dane via postfix\r\n\r\nhello\r\n")


STATUS = re.compile(r"postfix/\w+\[\d+\]: \w+: to=<([^>]+)>, relay=([^,]+), .*?dsn=([\d.]+), status=(\w+) \((.*)\)$", re.M)


def postfix_verdicts(pf: PostfixInstance, cases: dict) -> dict:
    log = pf.maillog()
    out = {}
    for name in cases:
        rcpt = f"bob@{name}"
        first = next((m for m in STATUS.finditer(log) if m.group(1) == rcpt), None)
        host = f"mx.{name}["
        tls = [l.split("postfix/smtp", 1)[-1] for l in log.splitlines()
               if host in l and ("TLS connection established" in l or "TLSA" in l or "certificate" in l.lower()
                                 or "verification" in l)]
        kinds = sorted({k for k in ("Verified", "Trusted", "Untrusted", "Anonymous")
                        if any(l.split(": ", 1)[-1].startswith(f"{k} TLS connection") for l in tls)})
        out[name] = {
            "outcome": None if first is None else {"sent": "delivered"}.get(first.group(4), first.group(4)),
            "relay": None if first is None else first.group(2),
            "dsn": None if first is None else first.group(3),
            "reason": None if first is None else first.group(5),
            "tls": kinds,
            "lines": tls[:6],
        }
    return out


# -- mailgate -------------------------------------------------------------------

def start_mailgate(work: Path, mode: str, nameserver: str, anchor: Path) -> MailgateServer:
    """`validate` asks the authoritative server and checks the signatures
    itself (as `test_dane.py` does); `trust-ad` asks unbound, the resolver
    Postfix uses, and believes its AD bit."""
    srv = MailgateServer(BIN, work / f"mailgate-{mode}", dns_port=0, relay={"trusted_networks": ["127.0.0.0/8"]},
                         hostname=f"{mode}.mailgate.test")
    text = srv.config_path.read_text()
    text = text.replace('nameservers = ["127.0.0.1:0"]', f'nameservers = ["{nameserver}"]')
    assert nameserver in text, text
    text, n = re.subn(r"(?m)^mx_port = \d+$", f"mx_port = {PORT}", text)
    assert n == 1, text
    dns = f'dnssec = "{mode}"\n' + (f'trust_anchor = "{anchor}"\n' if mode == "validate" else "")
    text = text.replace("[dns]\n", "[dns]\n" + dns, 1)
    # The first deferral is the verdict: no retry within the run.
    text = text.replace("[delivery]\n", "[delivery]\nretry_initial = 30\nretry_max = 60\nconnect_timeout = 3\ncommand_timeout = 10\n", 1)
    srv.config_path.write_text(text)
    return srv.start()


def mailgate_send(srv: MailgateServer, sender: str, rcpt: str) -> str:
    with srv.smtp() as d:
        d.ehlo()
        assert d.cmd(f"MAIL FROM:<{sender}>").code == 250
        r = d.cmd(f"RCPT TO:<{rcpt}>")
        assert r.code == 250, r
        assert d.cmd("DATA").code == 354
        d.send(f"From: {sender}\r\nTo: {rcpt}\r\nSubject: dane via mailgate\r\n\r\nhello\r\n.\r\n".encode())
        return queue_id(d.read_reply())


def mailgate_state(srv: MailgateServer, qid: str):
    """('left-queue', None) once the message left the queue (delivered if
    the sink has it), ('deferred', recipient) after a failed attempt,
    else None."""
    try:
        m = srv.queue_show(qid)
    except AssertionError:
        return ("left-queue", None)
    for r in m.get("recipients") or []:
        if r.get("status") == "deferred" and (r.get("attempts") or 0) >= 1:
            return ("deferred", r)
        if r.get("status") in ("delivered", "sent"):
            return ("delivered", r)
    return None


def tlsa_results(srv: MailgateServer, domain: str) -> dict:
    """The domain's TLS-RPT preview by policy type (`tlsa`, `sts`,
    `no-policy-found`): successful sessions and failure result types."""
    status, text = srv.http_get(f"/api/v1/reports/preview/{domain}")
    if status != 200:
        return {"preview": status}
    body = json.loads(text).get("tlsrpt")
    report = json.loads(body) if body else {}
    out = {}
    for p in report.get("policies", []):
        kind = p["policy"]["policy-type"]
        e = out.setdefault(kind, {"success": 0, "failures": []})
        e["success"] += p.get("summary", {}).get("total-successful-session-count", 0)
        e["failures"] += [d["result-type"] for d in p.get("failure-details", [])]
    return out


# -- main -------------------------------------------------------------------------

def main(out_path: Path) -> int:
    result: dict = {"cases": {}, "logs": {}}
    work = scratch_dir("mailgate-danepf-")
    procs = []
    pf = dns_server = None
    mgs: dict[str, MailgateServer] = {}
    sinks = {}
    t0 = time.monotonic()
    try:
        setup_namespace(work)
        cases = build_cases()
        records = "".join(c["records"] for c in cases.values())
        children = {f"{n}.": c["child"] for n, c in cases.items() if c["child"]}
        signed = SignedWorld(records, children=children, corrupt=("bogus.test.", "MX"))
        dns_server = DnssecServer(signed)
        anchor = work / "anchor.key"
        anchor.write_text(signed.anchor_text("DNSKEY"))
        anchor.chmod(0o644)
        procs.append(start_unbound(work, unbound_conf(work, dns_server.port, anchor, ["."] + list(children))))
        result["unbound"] = "validating on 127.0.0.1:53"

        for name, c in cases.items():
            sinks[name] = TlsSink(c["ip"], PORT, work, chain=c["chain"], key=c["key"], starttls=c["starttls"])

        pf = start_postfix(work)
        mgs = {"validate": start_mailgate(work, "validate", f"127.0.0.1:{dns_server.port}", anchor),
               "trust-ad": start_mailgate(work, "trust-ad", "127.0.0.1:53", anchor)}

        postfix_inject(pf, [f"bob@{n}" for n in cases])
        qids = {(mode, n): mailgate_send(srv, MODES[mode], f"bob@{n}") for mode, srv in mgs.items() for n in cases}

        def postfix_done():
            v = postfix_verdicts(pf, cases)
            return v if all(x["outcome"] for x in v.values()) else None

        def mailgate_states():
            return {k: mailgate_state(mgs[k[0]], q) for k, q in qids.items()}

        pv = wait_for(postfix_done, 40, 0.25) or postfix_verdicts(pf, cases)
        ms = wait_for(lambda: (lambda st: st if all(st.values()) else None)(mailgate_states()), 40, 0.25) \
            or mailgate_states()
        for name in cases:
            sink = sinks[name]

            def sink_tls(sender):
                return [m.get("tls") for m in sink.messages if f"<{sender}>" in m.get("from", "")]
            entry = {"postfix": dict(pv[name], sink_tls=sink_tls(PF_FROM)), "sink_connections": sink.connections}
            for mode, srv in mgs.items():
                state = ms.get((mode, name))
                outcome = state[0] if state else None
                if outcome == "left-queue" and sink_tls(MODES[mode]):
                    outcome = "delivered"
                entry[f"mailgate {mode}"] = {
                    "outcome": outcome,
                    "reason": (state[1] or {}).get("last_reply") if state and state[1] else None,
                    "tlsrpt": tlsa_results(srv, name),
                    "sink_tls": sink_tls(MODES[mode]),
                }
            result["cases"][name] = entry
        result["seconds"] = round(time.monotonic() - t0, 1)
    except Exception:
        result["error"] = traceback.format_exc()
    finally:
        if pf is not None:
            result["logs"]["postfix"] = pf.maillog()[-12000:]
        for mode, srv in mgs.items():
            result["logs"][f"mailgate {mode}"] = srv.log_text()[-8000:]
        if (work / "unbound.log").exists():
            result["logs"]["unbound"] = (work / "unbound.log").read_text(errors="replace")[-6000:]
        if dns_server is not None:
            result["dns_queries"] = len(dns_server.queries)
        for mode, srv in mgs.items():
            try:
                srv.stop()
            except Exception as e:  # the namespace ends anyway; say so
                result.setdefault("cleanup", []).append(f"mailgate {mode} stop: {e}")
        if pf is not None:
            pf.stop()
        for p in procs:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        for s in sinks.values():
            s.stop()
        if dns_server is not None:
            dns_server.stop()
        out_path.write_text(json.dumps(result, indent=1))
        shutil.rmtree(work, ignore_errors=True)
    return 0


def init(out_path: Path) -> int:
    """PID 1 of the namespace: runs `main` in a child and reaps every
    orphan meanwhile (Postfix's master daemonizes and is re-parented
    here; unreaped, it would linger as a zombie that `postfix stop` waits
    for). When `main` ends, this returns, and the kernel kills whatever is
    left in the namespace."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = main(out_path)
        finally:
            os._exit(code)
    while True:
        try:
            child, status = os.wait()
        except ChildProcessError:
            return 1
        if child == pid:
            return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    out = Path(sys.argv[1])
    sys.exit(init(out) if os.getpid() == 1 else main(out))
