"""A loopback DNS server for tests (dnslib): TXT records from a dict,
NXDOMAIN for every other name. Nothing leaves 127.0.0.1.

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
