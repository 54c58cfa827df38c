#!/usr/bin/env python3
"""SMTP loader for bench/queue.sh: N small messages over many parallel
connections, several messages per connection, MAIL/RCPT/DATA pipelined.

usage: queue-load.py HOST PORT N [PROCS] [CONNS_PER_PROC]
Message k comes from s{k % 100}@src.test to u{k}@dst.test, so a delete by
--sender s7@src.test matches N/100 of them. Prints "sent N seconds".
"""

import asyncio
import multiprocessing
import sys
import time

MSGS_PER_CONN = 200


def body(k: int) -> bytes:
    return (
        f"From: s{k % 100}@src.test\r\nTo: u{k}@dst.test\r\nSubject: queue bench {k}\r\n"
        f"Message-ID: <{k}@src.test>\r\n\r\nqueue bench message {k}\r\n.\r\n"
    ).encode()


async def reply(r: asyncio.StreamReader) -> str:
    while True:
        line = (await r.readline()).decode()
        if not line:
            raise ConnectionError("server closed the connection")
        if line[3:4] != "-":
            return line


async def session(host, port, ks):
    r, w = await asyncio.open_connection(host, port)
    await reply(r)
    w.write(b"EHLO loader.src.test\r\n")
    await reply(r)
    for k in ks:
        w.write(f"MAIL FROM:<s{k % 100}@src.test>\r\nRCPT TO:<u{k}@dst.test>\r\nDATA\r\n".encode())
        for want in ("250", "250", "354"):
            line = await reply(r)
            if not line.startswith(want):
                raise RuntimeError(f"message {k}: expected {want}, got {line.strip()}")
        w.write(body(k))
        line = await reply(r)
        if not line.startswith("250"):
            raise RuntimeError(f"message {k}: expected 250 after DATA, got {line.strip()}")
    w.write(b"QUIT\r\n")
    await w.drain()
    w.close()


async def proc_main(host, port, ks, conns):
    queue = [ks[i : i + MSGS_PER_CONN] for i in range(0, len(ks), MSGS_PER_CONN)]

    async def worker():
        while queue:
            # No retries: a resent batch would queue duplicates, and the
            # benchmark checks the queue holds exactly N.
            await session(host, port, queue.pop())

    await asyncio.gather(*(worker() for _ in range(conns)))


def run(args):
    host, port, ks, conns = args
    asyncio.run(proc_main(host, port, ks, conns))


def main():
    host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    procs = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    conns = int(sys.argv[5]) if len(sys.argv) > 5 else 16
    t0 = time.monotonic()
    parts = [(host, port, list(range(i, n, procs)), conns) for i in range(procs)]
    with multiprocessing.Pool(procs) as pool:
        pool.map(run, parts)
    print(f"sent {n} {time.monotonic() - t0:.2f}")


if __name__ == "__main__":
    main()
