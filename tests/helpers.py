"""Shared test helpers: a raw line peer and servers on loopback port 0.

Test rules (as in trio-websocket's suite): loopback only, port 0, virtual
time (``autojump_clock``) for timeouts over memory streams, and a
``fail_after`` bound on every wait on real sockets.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio
import trio.testing

from eco_trio.server.config import ServerConfig
from eco_trio.server.connection import serve_connection
from eco_trio.server.core import Server

#: Bound on any single wait on a real socket.
WAIT = 5.0

GREETING_PREFIX = b"BIENVENIDO"


class Peer:
    """A bare-bones line client over any trio stream: no eco_trio code, so
    server tests do not depend on the client under test."""

    def __init__(self, stream: trio.abc.HalfCloseableStream) -> None:
        self.stream = stream
        self._buffer = b""

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def line(self, wait: float = WAIT) -> bytes:
        """The next line, without its newline."""
        with trio.fail_after(wait):
            while b"\n" not in self._buffer:
                chunk = await self.stream.receive_some(65536)
                assert chunk, f"connection closed; unterminated data: {self._buffer!r}"
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    async def lines(self, count: int) -> list[bytes]:
        return [await self.line() for _ in range(count)]

    async def request(self, line: bytes) -> bytes:
        await self.send(line + b"\n")
        return await self.line()

    async def expect_eof(self) -> bytes:
        """Read to the end; return anything that came before it."""
        rest = self._buffer
        self._buffer = b""
        with trio.fail_after(WAIT):
            while chunk := await self.stream.receive_some(65536):
                rest += chunk
        return rest


@dataclass
class Running:
    server: Server
    port: int

    @asynccontextmanager
    async def peer(self, *, greeted: bool = True) -> AsyncIterator[Peer]:
        stream = await trio.open_tcp_stream("127.0.0.1", self.port)
        async with stream:
            peer = Peer(stream)
            if greeted:
                assert (await peer.line()).startswith(GREETING_PREFIX)
            yield peer


#: The I/O path the servers of this run use (nox runs the suite once per path).
IO = os.environ.get("ECO_TRIO_IO") or "auto"


async def start_server(nursery: trio.Nursery, **options: object) -> Running:
    config = ServerConfig(**{"host": "127.0.0.1", "port": 0, "io": IO, **options})  # type: ignore[arg-type]
    server = Server(config)
    addresses = await nursery.start(server.serve)
    return Running(server, int(addresses[0].rsplit(":", 1)[1]))


async def memory_peer(nursery: trio.Nursery, server: Server, address: str = "127.0.0.1:40000") -> Peer:
    """A peer talking to one connection task over an in-memory stream pair."""
    client_side, server_side = trio.testing.memory_stream_pair()
    entry = server.registry.register(address, trio.current_time())
    assert entry is not None, "the server is full"
    nursery.start_soon(serve_connection, server.control, server_side, entry)
    return Peer(client_side)


def flood_until_stuck(sock: socket.socket, line_size: int = 65536) -> None:
    """Send lines on a non-blocking socket, never reading, until the server
    has stopped reading them (sends blocked for half a second): it is then
    stuck writing replies nobody reads.  Bounded in count and time; blocking,
    so trio tests run it with ``trio.to_thread.run_sync``."""
    line = b"f" * (line_size - 1) + b"\n"
    pending = memoryview(line)
    blocked = 0
    deadline = time.monotonic() + WAIT * 2
    for _ in range(100_000):
        try:
            # A partial send must be finished, or lines would run together.
            pending = pending[sock.send(pending) :] or memoryview(line)
            blocked = 0
        except BlockingIOError:
            blocked += 1
            if blocked == 10:
                return
            assert time.monotonic() < deadline, "the server kept reading a client that never reads"
            time.sleep(0.05)
    raise AssertionError("the server kept reading a client that never reads")


async def still_served(peer: Peer) -> None:
    """The well-behaved client of a test is still answered correctly."""
    assert await peer.request("sigo aquí".encode()) == "SIGO AQUÍ".encode()


async def listing(peer: Peer) -> list[bytes]:
    """The addresses LISTAR shows, in its order."""
    header = await peer.request(b"LISTAR")
    assert header.startswith(b"CLIENTES ")
    return [row.split()[0] for row in await peer.lines(int(header.split()[1]))]


def address_of(sock: socket.socket) -> bytes:
    """A client socket's own address, as LISTAR shows it."""
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}".encode()


def blocking_client(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    return sock
