"""Reference: a plain trio server (serve_tcp, receive_some, one send_all per line).

python benchmarks/reference/plain_trio.py PORT
"""

from __future__ import annotations

import sys
from functools import partial

import trio

GREETING = b"BIENVENIDO (plain trio reference)\n"


async def handle(stream: trio.SocketStream) -> None:
    buffer = b""
    try:
        await stream.send_all(GREETING)
        while data := await stream.receive_some(65536):
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                await stream.send_all(line.upper() + b"\n")
    except trio.BrokenResourceError:
        pass


async def main(port: int) -> None:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handle, port, host="127.0.0.1", backlog=1024))
        bound = listeners[0].socket.getsockname()[1]
        print(f"listening on 127.0.0.1:{bound}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]))
