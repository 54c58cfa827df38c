"""A loopback DNS server for tests (dnslib): TXT records from a dict,
NXDOMAIN for every other name. Nothing leaves 127.0.0.1.

`Zone` answers records of any type from a dict (for a test's own
`DNSServer`); `pyspf_check` runs pyspf with its DNS pinned to such a
server.

`empty_dns_port()` is one process-wide server that answers SERVFAIL to
everything, which the base test config points mailgate at: lookups fail
at once, as an unreachable DNS would (delivery defers rather than
bounces), and the system resolver is never asked.
"""

from __future__ import annotations

import threading

import dns.message
import dns.query
import dns.rdatatype
from dnslib import QTYPE, RCODE, RR, TXT
from dnslib.server import BaseResolver, DNSLogger, DNSServer


class ZoneResolver(BaseResolver):
    """Answers TXT queries from a dict name -> [[string, ...], ...]."""

    def __init__(self, servfail: bool = False):
        self.txt: dict[str, list[list[bytes]]] = {}
        self.queries: list[str] = []
        self.servfail = servfail
        # Names that fail (SERVFAIL) while the rest of the zone answers.
        self.failing: set[str] = set()

    def load(self, records: list[tuple[str, str, list[str]]]) -> None:
        for name, rtype, strings in records:
            if rtype == "TXT":
                self.txt.setdefault(name.lower(), []).append([s.encode() for s in strings])

    def resolve(self, request, handler):
        reply = request.reply()
        qname = str(request.q.qname).lower()
        self.queries.append(qname)
        if self.servfail or qname in self.failing:
            reply.header.rcode = RCODE.SERVFAIL
        elif qname not in self.txt:
            reply.header.rcode = RCODE.NXDOMAIN
        elif request.q.qtype in (QTYPE.TXT, QTYPE.ANY):
            for strings in self.txt[qname]:
                reply.add_answer(RR(request.q.qname, QTYPE.TXT, rdata=TXT(strings), ttl=60))
        return reply


class Zone(BaseResolver):
    """TXT, MX and A records (dnslib rdata) from a dict; NXDOMAIN for
    unknown names."""

    def __init__(self):
        self.records: dict[str, list[tuple[str, object]]] = {}

    def add(self, name: str, rtype: str, rdata) -> None:
        # Stored as DNS asks: lower case, with the root's dot.
        self.records.setdefault(name.lower().rstrip(".") + ".", []).append((rtype, rdata))

    def txt(self, name: str, value: str) -> None:
        """A TXT record of one string, split in 255-byte chunks."""
        self.add(name, "TXT", TXT([value[i:i + 255] for i in range(0, len(value), 255)]))

    def resolve(self, request, handler):
        reply = request.reply()
        qname = str(request.q.qname).lower()
        if qname not in self.records:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        for rtype, rdata in self.records[qname]:
            if QTYPE[request.q.qtype] in (rtype, "ANY"):
                reply.add_answer(RR(request.q.qname, getattr(QTYPE, rtype), rdata=rdata, ttl=60))
        return reply


def pyspf_check(spf, port: int, ip: str, sender: str, helo: str) -> str:
    """pyspf's check_host() result for `sender` from `ip`, its DNS asked
    over UDP of the loopback server on `port` only (never the system's).
    `spf` is the imported pyspf module (tests importorskip it)."""

    def lookup(qname, qtype, strict=True, timeout=5):
        q = dns.message.make_query(qname, qtype)
        r = dns.query.udp(q, "127.0.0.1", port=port, timeout=timeout)
        out = []
        for rrset in r.answer:
            for rd in rrset:
                if rrset.rdtype == dns.rdatatype.TXT:
                    out.append(((qname, qtype), rd.strings))
                elif rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                    out.append(((qname, qtype), rd.address))
                elif rrset.rdtype == dns.rdatatype.MX:
                    out.append(((qname, qtype), (rd.preference, rd.exchange)))
        return out

    saved = spf.DNSLookup
    spf.DNSLookup = lookup
    try:
        result, _explanation = spf.check2(i=ip, s=sender, h=helo)
    finally:
        spf.DNSLookup = saved
    return result


class LoopbackDns:
    def __init__(self, port: int = 0, servfail: bool = False):
        self.resolver = ZoneResolver(servfail)
        self.server = DNSServer(self.resolver, port=port, address="127.0.0.1",
                                logger=DNSLogger(prefix=False, logf=lambda s: None))
        self.port = self.server.server.server_address[1]
        self.server.start_thread()

    def stop(self) -> None:
        self.server.stop()
        self.server.server.server_close()

    def dnsfunc(self, name, timeout=5):
        """dkimpy's TXT lookup, really over UDP to this server."""
        if isinstance(name, bytes):
            name = name.decode()
        q = dns.message.make_query(name, "TXT")
        r = dns.query.udp(q, "127.0.0.1", port=self.port, timeout=timeout)
        for rrset in r.answer:
            if rrset.rdtype == dns.rdatatype.TXT:
                return b"".join(list(rrset)[0].strings)
        return None



_EMPTY: LoopbackDns | None = None
_EMPTY_LOCK = threading.Lock()


def empty_dns_port() -> int:
    """The port of the shared empty DNS server, started on first use."""
    global _EMPTY
    with _EMPTY_LOCK:
        if _EMPTY is None:
            _EMPTY = LoopbackDns(servfail=True)
        return _EMPTY.port
