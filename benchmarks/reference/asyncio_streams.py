"""Reference: the textbook asyncio streams server (readline / upper / write).

python benchmarks/reference/asyncio_streams.py PORT [CERT KEY]

With a certificate and key it speaks TLS (asyncio's ``ssl=`` context).
"""

from __future__ import annotations

import asyncio
import ssl
import sys

GREETING = b"BIENVENIDO (asyncio reference)\n"


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(GREETING)
    try:
        while line := await reader.readline():
            writer.write(line.upper())
            await writer.drain()
    except (ConnectionError, asyncio.LimitOverrunError, ValueError):
        pass
    finally:
        writer.close()


async def main(port: int, context: ssl.SSLContext | None) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024, ssl=context)
    print(f"listening on 127.0.0.1:{server.sockets[0].getsockname()[1]}", file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    tls = None
    if len(sys.argv) == 4:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(sys.argv[2], sys.argv[3])
    asyncio.run(main(int(sys.argv[1]), tls))
