"""A loopback authoritative DNS server for DNSSEC tests (dnspython).

It serves a private root zone "." signed in the test with
`dns.dnssec.sign_zone` (one ECDSA P-256 key, flags 257, so its DNSKEY is
the whole trust anchor), plus unsigned child zones delegated from it
without a DS record, which validators must find insecure. Answers carry
RRSIGs when the query sets DO; "no such name/type" answers carry the SOA
and the NSEC records that prove it. `ad=True` makes it set the AD bit on
answers from the signed zone, standing in for a validating resolver
(`dnssec = "trust-ad"`). Nothing leaves 127.0.0.1; every query is logged
in `queries`.
"""

from __future__ import annotations

import socketserver
import struct
import threading
import time

import dns.dnssec
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.zone
from cryptography.hazmat.primitives.asymmetric import ec

ROOT = dns.name.root
SOA = "@ 3600 IN SOA ns.root-servers.test. hostmaster.test. 1 3600 600 86400 300\n@ 3600 IN NS ns.root-servers.test.\nns.root-servers.test. 3600 IN A 127.0.0.1\n"


def make_key():
    private = ec.generate_private_key(ec.SECP256R1())
    dnskey = dns.dnssec.make_dnskey(private.public_key(), dns.dnssec.Algorithm.ECDSAP256SHA256, flags=257)
    return private, dnskey


class SignedWorld:
    """The root zone `records` (zone-file lines, names absolute) signed;
    `children` maps an unsigned child zone name to its lines."""

    def __init__(self, records: str, children: dict[str, str] | None = None,
                 corrupt: tuple[str, str] | None = None):
        self.private, self.dnskey = make_key()
        text = SOA + records
        for child in (children or {}):
            text += f"{child} 3600 IN NS ns.{child}\nns.{child} 3600 IN A 127.0.0.1\n"
        self.root = dns.zone.from_text(text, origin=ROOT, relativize=False, check_origin=True)
        dns.dnssec.sign_zone(self.root, keys=[(self.private, self.dnskey)], lifetime=86400 * 7)
        if corrupt:
            self._corrupt(*corrupt)
        self.children = {}
        for child, lines in (children or {}).items():
            origin = dns.name.from_text(child)
            ctext = (f"@ 3600 IN SOA ns.{child} hostmaster.{child} 1 3600 600 86400 300\n"
                     f"@ 3600 IN NS ns.{child}\nns.{child} 3600 IN A 127.0.0.1\n" + lines)
            self.children[origin] = dns.zone.from_text(ctext, origin=origin, relativize=False)

    def _corrupt(self, name: str, rtype: str) -> None:
        """Breaks the signature over one RRset: the data stays, the RRSIG
        no longer verifies (a bogus answer)."""
        node = self.root.get_node(dns.name.from_text(name))
        covered = dns.rdatatype.from_text(rtype)
        rds = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.RRSIG, covered)
        sigs = list(rds)
        rds.clear()
        for sig in sigs:
            bad = bytearray(sig.signature)
            bad[5] ^= 0xFF
            rds.add(sig.replace(signature=bytes(bad)))

    def anchor_text(self, kind: str = "DNSKEY") -> str:
        """The trust anchor file: the key itself, or its DS record."""
        if kind == "DS":
            ds = dns.dnssec.make_ds(ROOT, self.dnskey, "SHA256")
            return f". 3600 IN DS {ds.to_text()}\n"
        return f". 3600 IN DNSKEY {self.dnskey.to_text()}\n"

    # -- answering ---------------------------------------------------

    def _child_for(self, qname: dns.name.Name, qtype: int):
        for origin, zone in self.children.items():
            if qname.is_subdomain(origin) and not (qname == origin and qtype == dns.rdatatype.DS):
                return zone
        return None

    def answer(self, query: dns.message.Message, ad: bool) -> dns.message.Message:
        resp = dns.message.make_response(query)
        resp.flags |= dns.flags.AA
        q = query.question[0]
        qname, qtype = q.name, q.rdtype
        do = bool(query.ednsflags & dns.flags.DO)
        child = self._child_for(qname, qtype)
        if child is not None:
            self._answer_zone(resp, child, qname, qtype, signed=False)
            return resp
        self._answer_zone(resp, self.root, qname, qtype, signed=do)
        if ad and resp.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            resp.flags |= dns.flags.AD
        return resp

    def _rrset(self, zone, name, rdtype, covers=dns.rdatatype.NONE):
        node = zone.get_node(name)
        if node is None:
            return None
        rds = node.get_rdataset(dns.rdataclass.IN, rdtype, covers)
        if rds is None:
            return None
        rrset = dns.rrset.RRset(name, dns.rdataclass.IN, rdtype, covers)
        rrset.update(rds)
        return rrset

    def _add(self, section, zone, name, rdtype, signed):
        rrset = self._rrset(zone, name, rdtype)
        if rrset is None:
            return False
        section.append(rrset)
        if signed:
            sig = self._rrset(zone, name, dns.rdatatype.RRSIG, rdtype)
            if sig is not None:
                section.append(sig)
        return True

    def _answer_zone(self, resp, zone, qname, qtype, signed):
        origin = zone.origin
        if zone.get_node(qname) is not None:
            if self._add(resp.answer, zone, qname, qtype, signed):
                return
            # NODATA: the SOA, and the NSEC at the name listing its types.
            self._add(resp.authority, zone, origin, dns.rdatatype.SOA, signed)
            if signed:
                self._add(resp.authority, zone, qname, dns.rdatatype.NSEC, signed)
            return
        names = sorted(zone.nodes.keys())
        exists_below = any(n.is_subdomain(qname) for n in names)
        self._add(resp.authority, zone, origin, dns.rdatatype.SOA, signed)
        if not exists_below:
            resp.set_rcode(dns.rcode.NXDOMAIN)
        if not signed:
            return
        # The NSEC covering the name, and the one covering the wildcard at
        # the closest encloser (RFC 4035 §3.1.3.2); an empty non-terminal
        # needs only the first.
        covering = [max((n for n in names if n < qname), default=origin)]
        if not exists_below:
            encloser = qname.parent()
            while encloser != origin and not any(n.is_subdomain(encloser) for n in names):
                encloser = encloser.parent()
            wildcard = dns.name.from_text("*", encloser)
            covering.append(max((n for n in names if n < wildcard), default=origin))
        for n in dict.fromkeys(covering):
            self._add(resp.authority, zone, n, dns.rdatatype.NSEC, signed)


class _Udp(socketserver.BaseRequestHandler):
    def handle(self):
        data, sock = self.request
        reply = self.server.owner.handle(data, 1232)
        if reply is not None:
            sock.sendto(reply, self.client_address)


class _Tcp(socketserver.BaseRequestHandler):
    def handle(self):
        conn = self.request
        conn.settimeout(5)
        try:
            while True:
                head = conn.recv(2)
                if len(head) < 2:
                    return
                (n,) = struct.unpack("!H", head)
                data = b""
                while len(data) < n:
                    chunk = conn.recv(n - len(data))
                    if not chunk:
                        return
                    data += chunk
                reply = self.server.owner.handle(data, 65535)
                if reply is None:
                    return
                conn.sendall(struct.pack("!H", len(reply)) + reply)
        except OSError:
            return


class _UdpServer(socketserver.ThreadingUDPServer):
    daemon_threads = True
    allow_reuse_address = True


class _TcpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class DnssecServer:
    """Serves `world` on 127.0.0.1 (UDP and TCP, one port)."""

    def __init__(self, world: SignedWorld, ad: bool = False):
        self.world = world
        self.ad = ad
        self.queries: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        # The same port for UDP and TCP: retry until both bind.
        for _ in range(50):
            self.tcp = _TcpServer(("127.0.0.1", 0), _Tcp)
            self.port = self.tcp.server_address[1]
            try:
                self.udp = _UdpServer(("127.0.0.1", self.port), _Udp)
                break
            except OSError:
                self.tcp.server_close()
        else:
            raise RuntimeError("no free port for UDP and TCP")
        for s in (self.tcp, self.udp):
            s.owner = self
            threading.Thread(target=s.serve_forever, daemon=True).start()

    def handle(self, data: bytes, limit: int) -> bytes | None:
        try:
            query = dns.message.from_wire(data)
        except Exception:
            return None
        q = query.question[0]
        with self.lock:
            self.queries.append((q.name.to_text(), dns.rdatatype.to_text(q.rdtype)))
        resp = self.world.answer(query, self.ad)
        size = min(limit, max(512, query.payload if query.edns >= 0 else 512))
        try:
            return resp.to_wire(max_size=size)
        except dns.exception.TooBig:
            # Too big for UDP: the question alone, truncated, so the
            # client asks again over TCP.
            short = dns.message.make_response(query)
            short.flags |= dns.flags.TC
            return short.to_wire()

    def stop(self) -> None:
        for s in (self.tcp, self.udp):
            s.shutdown()
            s.server_close()


def wait_for(pred, timeout: float = 20.0, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            return v
        time.sleep(step)

