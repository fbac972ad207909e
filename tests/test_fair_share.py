"""No single client can hold the server: bounded work per turn, bounded
output, admission in accept order, accept() errors that end nothing, and
other protocols turned away at the first line."""

from __future__ import annotations

import errno
import http.client
import logging
import os
import socket
import ssl
import tracemalloc
from collections.abc import Callable

import pytest
import trio
import trio.testing

from eco_trio.server.config import REMOTE_IDLE_TIMEOUT, ServerConfig, idle_timeout_in_force
from eco_trio.server.connection import serve_connection
from eco_trio.server.control import LISTING_PART
from eco_trio.server.core import Server
from eco_trio.wire import protocol

from .helpers import (
    GREETING_PREFIX,
    WAIT,
    Peer,
    address_of,
    listing,
    memory_peer,
    start_server,
    still_served,
)


class SinkStream(trio.abc.HalfCloseableStream):
    """The server's side of a client that never has to be waited for: what
    the server sends is counted and dropped at once, without a checkpoint,
    as when the kernel takes a whole write.  So only the connection's own
    turns let other tasks run, which is what these tests look at."""

    def __init__(self, inner: trio.abc.HalfCloseableStream) -> None:
        self.inner = inner
        self.sent = 0
        self.writes = 0
        self.replied = trio.Event()  # the first write after the greeting

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.sent += len(data)
        self.writes += 1
        if self.writes == 2:
            self.replied.set()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def sink_peer(nursery: trio.Nursery, server: Server, address: str) -> tuple[Peer, SinkStream]:
    """A connection whose replies only count bytes (see SinkStream); the
    returned peer can only send."""
    client_side, server_side = trio.testing.memory_stream_pair()
    sink = SinkStream(server_side)
    entry = server.registry.register(address, trio.current_time())
    assert entry is not None
    nursery.start_soon(serve_connection, server.control, sink, entry)
    await trio.testing.wait_all_tasks_blocked()  # greeted
    return Peer(client_side), sink


@pytest.mark.parametrize(
    ("line", "reply_size"),
    [
        (b"LISTAR", None),
        (b"AYUDA", len(protocol.encode_line(protocol.HELP))),
        (b"\xfe", len(protocol.encode_line(protocol.INVALID_UTF8))),
    ],
)
async def test_a_pipelined_flood_of_costly_lines_does_not_hold_others(
    nursery: trio.Nursery, line: bytes, reply_size: int | None
) -> None:
    """The attacker's read is answered in turns: a bystander who asks once
    the attacker's first turn is out is answered long before its last."""
    server = Server(ServerConfig(max_clients=500))
    for n in range(300):  # LISTAR's reply grows with the clients
        server.registry.register(f"10.0.0.1:{n}", 0.0)
    attacker, counted = await sink_peer(nursery, server, "127.0.0.1:1")
    bystander = await memory_peer(nursery, server, "127.0.0.1:2")
    assert (await bystander.line()).startswith(GREETING_PREFIX)
    flood = line + b"\n"
    count = 65536 // len(flood)
    await attacker.send(flood * count)
    with trio.fail_after(WAIT):
        await counted.replied.wait()
    await still_served(bystander)
    one_reply = reply_size or len(protocol.encode_lines(server.registry.listing(None, trio.current_time())))
    assert counted.sent < one_reply * count * 3 / 4, "the attacker's whole read was answered first"


async def test_a_long_listing_is_sent_in_parts_with_others_served_between(nursery: trio.Nursery) -> None:
    server = Server(ServerConfig(max_clients=10 * LISTING_PART))
    for n in range(8 * LISTING_PART):
        server.registry.register(f"10.0.0.1:{n}", 0.0)
    asker, counted = await sink_peer(nursery, server, "127.0.0.1:1")
    bystander = await memory_peer(nursery, server, "127.0.0.1:2")
    assert (await bystander.line()).startswith(GREETING_PREFIX)
    greeting = counted.sent
    await asker.send(b"LISTAR\n")
    with trio.fail_after(WAIT):
        await counted.replied.wait()
    first_part = counted.sent - greeting
    await still_served(bystander)
    whole = len(protocol.encode_lines(server.registry.listing(None, trio.current_time())))
    assert first_part < whole / 2, "the listing was built and sent whole"
    # And the whole listing, in order, over a stream that can be read:
    reader = await memory_peer(nursery, server, "127.0.0.1:3")
    assert (await reader.line()).startswith(GREETING_PREFIX)
    header = await reader.request(b"LISTAR")
    assert header == f"CLIENTES {8 * LISTING_PART + 3}".encode()
    rows = await reader.lines(8 * LISTING_PART + 3)
    assert rows[0].startswith(b"10.0.0.1:0 ") and rows[-1].endswith(" (tú)".encode())


async def test_a_client_that_does_not_read_is_not_read_either(nursery: trio.Nursery) -> None:
    """Backpressure instead of buffering: the server stops taking a flood of
    commands from a client that takes none of its replies, and holds at most
    one turn of output for it."""
    running = await start_server(nursery, send_timeout=WAIT * 4)
    hog = socket.create_connection(("127.0.0.1", running.port))
    hog.setblocking(False)
    sent = 0
    flood = b"AYUDA\n" * 10_000
    with trio.fail_after(WAIT):
        while True:
            try:
                sent += hog.send(flood)
            except BlockingIOError:
                await trio.sleep(0.2)  # give the server time to read, if it still does
                try:
                    sent += hog.send(flood)
                except BlockingIOError:
                    break
    assert sent < 20 * 1024 * 1024  # the server stopped reading: the kernel holds the rest
    async with running.peer() as good:
        await still_served(good)
    hog.close()


async def test_an_idle_connection_keeps_no_batch_alive(nursery: trio.Nursery) -> None:
    """After answering a 60 KiB batch, what a waiting connection holds is far
    below the batch it answered (it used to hold about twice the batch)."""
    server = Server()
    batch = ("x" * 99 + "\n").encode() * 600
    peers = []
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(20):
            peer = await memory_peer(nursery, server, f"127.0.0.1:{n}")
            assert (await peer.line()).startswith(GREETING_PREFIX)
            await peer.send(batch)
            assert len(await peer.lines(600)) == 600
            peers.append(peer)
        await trio.testing.wait_all_tasks_blocked()
        per_connection = (tracemalloc.get_traced_memory()[0] - before) / 20
    finally:
        tracemalloc.stop()
    assert per_connection < 16 * 1024, per_connection


# --- admission -----------------------------------------------------------------------


async def test_a_connection_storm_admits_the_first_comers_in_order(nursery: trio.Nursery) -> None:
    running = await start_server(nursery, max_clients=10)
    # Connected back to back before the server runs at all: the kernel queues
    # them in this order, and that order is the one to honour.
    socks = [socket.create_connection(("127.0.0.1", running.port)) for _ in range(200)]
    try:
        for sock in socks:
            sock.setblocking(False)
        firsts = []
        with trio.fail_after(WAIT):
            for sock in socks:
                await trio.lowlevel.wait_readable(sock)
                firsts.append(sock.recv(200))
        assert [first[:10] for first in firsts] == [b"BIENVENIDO"] * 10 + [b"ERROR dema"] * 190
        reader = Peer(trio.SocketStream(trio.socket.from_stdlib_socket(socks[0])))
        assert await listing(reader) == [address_of(sock) for sock in socks[:10]]
    finally:
        for sock in socks:
            sock.close()


def open_fds() -> int | None:
    """This process's open descriptors, where /proc tells."""
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None


async def test_refused_connections_are_closed_at_once(nursery: trio.Nursery) -> None:
    """A refusal holds no descriptor: right after a storm, the server holds
    one per admitted client and none per refused one."""
    running = await start_server(nursery, max_clients=10)
    fds_before = open_fds()
    socks = [socket.create_connection(("127.0.0.1", running.port)) for _ in range(300)]
    try:
        with trio.fail_after(WAIT):
            for sock in socks[10:]:
                sock.setblocking(False)
                await trio.lowlevel.wait_readable(sock)
                assert sock.recv(200).startswith(b"ERROR")
                await trio.lowlevel.wait_readable(sock)
                assert sock.recv(200) == b""  # closed, not lingering
        if fds_before is not None:
            await trio.testing.wait_all_tasks_blocked()
            server_fds = (open_fds() or 0) - fds_before - len(socks)
            assert server_fds <= 10 + 2
    finally:
        for sock in socks:
            sock.close()


@pytest.mark.parametrize(
    "error",
    [errno.EPERM, errno.ECONNABORTED, errno.EHOSTUNREACH, errno.ETIMEDOUT, errno.EMFILE, errno.ENOBUFS],
)
async def test_accept_errors_never_end_the_server(
    nursery: trio.Nursery,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    error: int,
) -> None:
    running = await start_server(nursery)
    # The server accepts through the socket's own _accept (socket.accept()
    # minus its per-socket enum conversions).
    real_accept: Callable[[socket.socket], tuple[int, object]] = socket.socket._accept  # type: ignore[attr-defined]
    failures = [error, error, error]

    def failing_accept(self: socket.socket) -> tuple[int, object]:
        if failures:
            raise OSError(failures.pop(), os.strerror(error))
        return real_accept(self)

    monkeypatch.setattr(socket.socket, "_accept", failing_accept)
    async with running.peer() as good:
        await still_served(good)
    assert not failures
    reports = [r for r in caplog.records if os.strerror(error) in r.getMessage()]
    assert len(reports) == 1 and "since the last report" in reports[0].getMessage()


# --- other protocols -------------------------------------------------------------------


async def test_an_http_request_is_closed_unanswered_and_logged(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    running = await start_server(nursery)

    def post() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", running.port, timeout=WAIT)
        try:
            connection.request("POST", "/", body=b"\nDESCONEXION\n", headers={"Content-Type": "text/plain"})
            with pytest.raises((http.client.HTTPException, ConnectionError)):
                connection.getresponse()
        finally:
            connection.close()

    await trio.to_thread.run_sync(post)
    assert not running.server.shutting_down
    async with running.peer() as good:
        await still_served(good)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "HTTP" in r.getMessage()]
    assert len(warnings) == 1 and "127.0.0.1:" in warnings[0].getMessage()


async def test_a_tls_client_on_the_plain_port_gets_a_clean_close(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "eco_trio.server")
    running = await start_server(nursery)

    def handshake() -> None:
        context = ssl.create_default_context()
        with (
            socket.create_connection(("127.0.0.1", running.port), timeout=WAIT) as raw,
            pytest.raises((ssl.SSLError, ConnectionError)),
            context.wrap_socket(raw, server_hostname="localhost"),
        ):
            pass

    await trio.to_thread.run_sync(handshake)
    async with running.peer() as good:
        await still_served(good)
    records = [r.getMessage() for r in caplog.records if "spoke TLS" in r.getMessage()]
    assert len(records) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_idle_timeout_defaults_to_off_on_loopback_and_on_beyond_it() -> None:
    loopback, beyond = ["127.0.0.1:5000", "[::1]:5000"], ["0.0.0.0:5000"]
    assert idle_timeout_in_force(ServerConfig(), loopback) is None
    assert idle_timeout_in_force(ServerConfig(), beyond) == REMOTE_IDLE_TIMEOUT
    assert idle_timeout_in_force(ServerConfig(idle_timeout=0), beyond) is None
    assert idle_timeout_in_force(ServerConfig(idle_timeout=7), loopback) == 7
