#!/usr/bin/env python3
"""A fast webhook receiver for bench/relay.sh's `hooks` side: HTTP/1.1 with
keep-alive on asyncio, answers every POST 204 without checking it, and
writes its count of POSTs to COUNTFILE every 0.2 s.

Usage: hook-sink.py PORT COUNTFILE
"""

import asyncio
import os
import sys

count = 0


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    global count
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:].strip())
            if length:
                await reader.readexactly(length)
            count += 1
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def report(path: str) -> None:
    while True:
        with open(path + ".tmp", "w") as f:
            f.write(f"{count}\n")
        os.replace(path + ".tmp", path)
        await asyncio.sleep(0.2)


async def main() -> None:
    port, path = int(sys.argv[1]), sys.argv[2]
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=512)
    async with server:
        await asyncio.gather(server.serve_forever(), report(path))


if __name__ == "__main__":
    asyncio.run(main())
