"""A hostile DNS server for tests, on loopback (UDP and TCP, same port):
the zone under each second-level name below `.test` behaves one way, so a
single server serves every case of issue 13's "Slow and hostile DNS":

- `ok.test`        answers at once (SPF pass for 192.0.2.1 and 127.0.0.1,
                   DMARC p=reject)
- `slow.test`      the same records, each answer 2 s late
- `slowchain.test` an SPF include chain of 10 names, each answer 2 s late
                   (20 s in all: only the check deadline ends it)
- `servfail.test`  SERVFAIL for every name
- `silent.test`    never answers (UDP or TCP)
- `tc.test`        UDP answers are truncated (TC bit, no records); TCP
                   gives the whole answer
- `tcbroken.test`  UDP truncated, and TCP connections are closed unanswered
- `huge.test`      one TXT record of 250 character-strings (~64 KB): UDP
                   truncated, TCP answers it whole
- `toolarge.test`  TXT records over 64 KiB together: TCP sends the first
                   65,535 octets of the message and closes (it cannot fit)
- `loop.test`      every name is a CNAME loop (N -> b.N -> N)
- `chain.test`     every name starts a chain of 20 CNAMEs
- `shortchain.test` a chain of 3 CNAMEs, then the records of ok.test
- `mx100.test`     100 MX records; SPF `v=spf1 mx -all`
- anything else    NXDOMAIN, with the `test.` SOA (negative TTL 60 s)

DKIM keys (`*._domainkey.*`) are NXDOMAIN in the answering zones, so a
signature's key lookup meets the zone's behaviour. Every question is
logged in `queries` as (name, type, transport).
"""

from __future__ import annotations

import socket
import struct
import threading
import time

from dnslib import CNAME, MX, QTYPE, RCODE, RR, SOA, TXT, A, DNSRecord

SPF_OK = "v=spf1 ip4:192.0.2.1 ip4:127.0.0.1 -all"
DMARC_REJECT = "v=DMARC1; p=reject"
SLOW = 2.0
CHAIN = 20
SHORT_CHAIN = 3
SOA_RR = RR("test.", QTYPE.SOA, ttl=60,
            rdata=SOA("ns.test.", "hostmaster.test.", (1, 3600, 600, 86400, 60)))


def mode_of(qname: str) -> tuple[str, str]:
    """(mode, the name relative to the mode's zone) of a query name."""
    labels = qname.rstrip(".").lower().split(".")
    if len(labels) >= 2 and labels[-1] == "test":
        return labels[-2], ".".join(labels[:-2])
    return "", qname


class HostileDns:
    def __init__(self):
        self.queries: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        self._stop = False
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(50):
            self.udp.bind(("127.0.0.1", 0))
            self.port = self.udp.getsockname()[1]
            self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                self.tcp.bind(("127.0.0.1", self.port))
                break
            except OSError:
                self.tcp.close()
                self.udp.close()
                self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.tcp.listen(64)
        self.udp.settimeout(0.2)
        self.tcp.settimeout(0.2)
        self._threads = [threading.Thread(target=self._serve_udp, daemon=True),
                         threading.Thread(target=self._serve_tcp, daemon=True)]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop = True
        for t in self._threads:
            t.join(2)
        self.udp.close()
        self.tcp.close()

    def count(self, name: str, qtype: str | None = None) -> int:
        name = name.rstrip(".").lower() + "."
        with self._lock:
            return sum(1 for n, t, _ in self.queries if n == name and (qtype is None or t == qtype))

    # -- the zone ---------------------------------------------------------

    def answer(self, request: DNSRecord, transport: str) -> bytes | None:
        """The reply to send (None: no reply; b"": close the connection)."""
        q = request.q
        qname = str(q.qname).lower()
        qtype = QTYPE[q.qtype]
        with self._lock:
            self.queries.append((qname, qtype, transport))
        mode, rel = mode_of(qname)
        reply = request.reply()
        reply.header.aa = 1
        if mode == "silent":
            return None
        if mode in ("slow", "slowchain"):
            time.sleep(SLOW)
        if mode == "servfail":
            reply.header.rcode = RCODE.SERVFAIL
            return reply.pack()
        if mode in ("tc", "tcbroken", "huge", "toolarge") and transport == "udp":
            reply.header.tc = 1
            return reply.pack()
        if mode == "tcbroken":
            return b""
        if mode == "loop":
            target = rel[2:] if rel.startswith("b.") or rel == "b" else ("b." + rel if rel else "b")
            reply.add_answer(RR(q.qname, QTYPE.CNAME, ttl=60, rdata=CNAME(f"{target}.loop.test." if target else "loop.test.")))
            return reply.pack()
        if mode in ("chain", "shortchain"):
            length = CHAIN if mode == "chain" else SHORT_CHAIN
            first = rel.split(".")[0] if rel else ""
            step = int(first[1:]) if first[:1] == "c" and first[1:].isdigit() else 0
            base = rel.split(".", 1)[1] if step and "." in rel else ("" if step else rel)
            if step < length:
                nxt = f"c{step + 1}." + (base + "." if base else "") + f"{mode}.test."
                reply.add_answer(RR(q.qname, QTYPE.CNAME, ttl=60, rdata=CNAME(nxt)))
                return reply.pack()
            rel = base
        records = self.records(mode, rel, q.qname, qtype)
        if records is None:
            reply.header.rcode = RCODE.NXDOMAIN
            reply.add_auth(SOA_RR)
        elif not records:
            reply.add_auth(SOA_RR)
        for rr in records or []:
            reply.add_answer(rr)
        return reply.pack()

    def records(self, mode: str, rel: str, qname, qtype: str) -> list | None:
        """The records of a name (None: NXDOMAIN; []: NODATA)."""
        txt = lambda *texts: [RR(qname, QTYPE.TXT, ttl=60, rdata=TXT(list(t) if isinstance(t, list) else [t])) for t in texts]
        if mode in ("ok", "slow", "tc", "shortchain"):
            if rel == "":
                return txt(SPF_OK) if qtype in ("TXT", "ANY") else []
            if rel == "_dmarc":
                return txt(DMARC_REJECT) if qtype in ("TXT", "ANY") else []
            return None
        if mode == "slowchain":
            if rel == "" or (rel.startswith("i") and rel[1:].isdigit()):
                n = int(rel[1:]) if rel else 0
                nxt = f"v=spf1 include:i{n + 1}.slowchain.test -all" if n < 10 else "v=spf1 ip4:192.0.2.1 -all"
                return txt(nxt) if qtype == "TXT" else []
            return None
        if mode == "huge":
            if rel == "" and qtype == "TXT":
                body = "v=spf1 " + " ".join(f"ip4:198.51.{i // 250}.{i % 250}" for i in range(3300))
                body += " ip4:192.0.2.1 -all"
                strings = [body[i:i + 255] for i in range(0, len(body), 255)][:250]
                assert "".join(strings) == body, len(body)
                return [RR(qname, QTYPE.TXT, ttl=60, rdata=TXT(strings))]
            return None if rel else []
        if mode == "toolarge":
            if rel == "" and qtype == "TXT":
                chunk = ["x" * 255] * 100
                return [RR(qname, QTYPE.TXT, ttl=60, rdata=TXT(chunk + [f"r{i}"])) for i in range(3)] + txt(SPF_OK)
            return None if rel else []
        if mode == "mx100":
            if rel == "":
                if qtype == "TXT":
                    return txt("v=spf1 mx -all")
                if qtype == "MX":
                    return [RR(qname, QTYPE.MX, ttl=60, rdata=MX(f"mx{i}.mx100.test.", 10)) for i in range(100)]
                return []
            if rel.startswith("mx") and rel[2:].isdigit():
                return [RR(qname, QTYPE.A, ttl=60, rdata=A(f"198.51.100.{int(rel[2:])}"))] if qtype == "A" else []
            if rel == "_dmarc":
                return txt("v=DMARC1; p=none") if qtype == "TXT" else []
            return None
        return None

    # -- transports -------------------------------------------------------

    def _serve_udp(self) -> None:
        while not self._stop:
            try:
                data, peer = self.udp.recvfrom(65535)
            except OSError:
                continue
            threading.Thread(target=self._udp_one, args=(data, peer), daemon=True).start()

    def _udp_one(self, data: bytes, peer) -> None:
        try:
            request = DNSRecord.parse(data)
            out = self.answer(request, "udp")
        except Exception:  # noqa: BLE001 - a malformed query gets no answer
            return
        # As any server: an answer over the client's UDP size is truncated.
        limit = max([512] + [rr.rclass for rr in request.ar if rr.rtype == QTYPE.OPT])
        if out and len(out) > limit:
            short = request.reply()
            short.header.aa = 1
            short.header.tc = 1
            out = short.pack()
        if out:
            try:
                self.udp.sendto(out, peer)
            except OSError:
                pass

    def _serve_tcp(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                continue
            threading.Thread(target=self._tcp_conn, args=(conn,), daemon=True).start()

    def _tcp_conn(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        try:
            while True:
                head = self._read(conn, 2)
                if head is None:
                    return
                data = self._read(conn, struct.unpack("!H", head)[0])
                if data is None:
                    return
                out = self.answer(DNSRecord.parse(data), "tcp")
                if out is None:
                    time.sleep(30)
                    return
                if out == b"":
                    return
                if len(out) > 65535:
                    # It cannot be framed: the first 65,535 octets, then close.
                    conn.sendall(struct.pack("!H", 65535) + out[:65535])
                    return
                conn.sendall(struct.pack("!H", len(out)) + out)
        except (OSError, ValueError):
            pass
        finally:
            conn.close()

    @staticmethod
    def _read(conn: socket.socket, n: int) -> bytes | None:
        buf = b""
        while len(buf) < n:
            part = conn.recv(n - len(buf))
            if not part:
                return None
            buf += part
        return buf


if __name__ == "__main__":
    import sys
    dns = HostileDns()
    print(dns.port, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        dns.stop()
        sys.exit(0)
