#!/usr/bin/env python3
"""A fast webhook receiver for bench/relay.sh's `hooks` side: HTTP/1.1 with
keep-alive on an asyncio Protocol (no stream objects per request), answers
every POST 204 without checking it, and writes its count of POSTs to
COUNTFILE every 0.2 s.

It shares the benchmark machine's cores with the relay, so its own CPU per
POST is part of the "webhooks on" side's cost; relay.sh prints it.

Usage: hook-sink.py PORT COUNTFILE
"""

import asyncio
import os
import sys

count = 0
NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"


class Receiver(asyncio.Protocol):
    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.buf = bytearray()

    def data_received(self, data: bytes) -> None:
        global count
        self.buf += data
        answers = 0
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                break
            length = 0
            for line in bytes(self.buf[:end]).split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    try:
                        length = int(line[15:].strip())
                    except ValueError:
                        self.transport.close()
                        return
            if len(self.buf) < end + 4 + length:
                break
            del self.buf[: end + 4 + length]
            answers += 1
        if answers:
            count += answers
            self.transport.write(NO_CONTENT * answers)


async def report(path: str) -> None:
    while True:
        with open(path + ".tmp", "w") as f:
            f.write(f"{count}\n")
        os.replace(path + ".tmp", path)
        await asyncio.sleep(0.2)


async def main() -> None:
    port, path = int(sys.argv[1]), sys.argv[2]
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Receiver, "127.0.0.1", port, backlog=512)
    async with server:
        await asyncio.gather(server.serve_forever(), report(path))


if __name__ == "__main__":
    asyncio.run(main())
