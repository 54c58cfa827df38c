#!/usr/bin/env python3
"""A loopback DNS server for benchmarks: every name is NXDOMAIN, with a SOA
in the authority section so resolvers cache the answer (RFC 2308).

The checks then run their whole path (SPF, DMARC tree walk, DKIM) against a
DNS that answers at once and publishes nothing, like mail from a domain
without any records. Nothing leaves the machine.

Usage: bench/nxdns.py PORT    (binds 127.0.0.1:PORT, UDP, runs until killed)
"""
import socket
import struct
import sys

# The SOA: a root-zone-like record, negative TTL (minimum) one hour.
SOA_NAME = b"\x00"
SOA_RDATA = (
    b"\x02ns\x04test\x00"  # mname ns.test
    b"\x0ahostmaster\x04test\x00"  # rname hostmaster.test
    + struct.pack("!IIIII", 1, 3600, 600, 86400, 3600)
)
SOA_RR = SOA_NAME + struct.pack("!HHIH", 6, 1, 3600, len(SOA_RDATA)) + SOA_RDATA


def answer(query: bytes) -> bytes | None:
    if len(query) < 12:
        return None
    qid, flags, qdcount = struct.unpack("!HHH", query[:6])
    if flags & 0x8000 or qdcount != 1:
        return None
    # The question: labels up to the root, then type and class.
    i = 12
    while i < len(query) and query[i] != 0:
        i += 1 + query[i]
    end = i + 5
    if end > len(query):
        return None
    question = query[12:end]
    rd = flags & 0x0100
    # QR, AA, RD copied, RA, RCODE 3 (NXDOMAIN).
    out_flags = 0x8000 | 0x0400 | rd | 0x0080 | 3
    return struct.pack("!HHHHHH", qid, out_flags, 1, 0, 1, 0) + question + SOA_RR


def main() -> None:
    port = int(sys.argv[1])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", port))
    while True:
        query, peer = s.recvfrom(4096)
        reply = answer(query)
        if reply is not None:
            s.sendto(reply, peer)


if __name__ == "__main__":
    main()
