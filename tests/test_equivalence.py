"""Both I/O paths (the epoll reactor, and trio's own wait_readable), under
the lean socket stream and batched replies, against the plain path (memory
streams, the protocol fed one line at a time): the same input, in any
chunking, must give byte-identical output."""

from __future__ import annotations

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from eco_trio.server.config import ServerConfig
from eco_trio.server.core import Server
from eco_trio.transport.readiness import EPOLL_AVAILABLE
from eco_trio.wire.commands import command_of
from eco_trio.wire.protocol import Close, ListClients, Reply, ServerProtocol, Shutdown, Status

from .helpers import Peer, memory_peer, start_server

pieces = st.one_of(
    st.sampled_from(["hola", "hola servidor", "AYUDA", "ñandú straße", "€𝄞", "", "  x  ", "a\rb", "APAGAR"]),
    st.text(max_size=30),
)


def needs_no_server_state(text: str) -> bool:
    """LISTAR, ESTADO and DESCONEXION answer from the server's state (who
    is connected, counters, whether it shuts down), which the paths do not
    share."""
    for line in text.split("\n"):
        command = command_of(line.encode())
        if command is not None and isinstance(command[0], Shutdown | ListClients | Status):
            return False
    return True


inputs = (
    st.lists(pieces, min_size=1, max_size=20).map("\n".join).filter(needs_no_server_state).map(str.encode)
)


IO_PATHS = ["epoll", "portable"] if EPOLL_AVAILABLE else ["portable"]


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True) if a < b]


def line_by_line(data: bytes) -> bytes:
    """The plain path: the protocol fed one line at a time."""
    parser = ServerProtocol()
    out = b""
    *lines, last = data.split(b"\n")
    for line in [*[line + b"\n" for line in lines], last]:
        if not line:
            continue
        for event in parser.receive_data(line):
            if isinstance(event, Reply):
                out += event.data
    for event in parser.receive_data(b""):
        assert isinstance(event, Reply | Close)
        if isinstance(event, Reply):
            out += event.data
    return out


async def conversation(peer: Peer, chunks: list[bytes]) -> bytes:
    await peer.line()  # greeting
    try:
        for chunk in chunks:
            await peer.send(chunk)
        await peer.stream.send_eof()
    except trio.BrokenResourceError:
        pass  # APAGAR closed it under us; what came back is still compared
    return await peer.expect_eof()


@settings(max_examples=100, deadline=None)
@given(data=inputs, cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
async def test_socket_and_memory_paths_give_identical_bytes(data: bytes, cuts: list[int]) -> None:
    chunks = chunked(data, cuts)
    over_sockets = []
    async with trio.open_nursery() as nursery:
        for io in IO_PATHS:
            # No pause flushes: chunk timing on a real socket must not matter here.
            running = await start_server(nursery, pause=3600, io=io)
            async with await trio.open_tcp_stream("127.0.0.1", running.port) as stream:
                over_sockets.append(await conversation(Peer(stream), chunks))
        peer = await memory_peer(nursery, Server(ServerConfig(pause=3600)))
        over_memory = await conversation(peer, chunks)
        nursery.cancel_scope.cancel()
    for over_socket in over_sockets:
        assert over_socket == over_memory == line_by_line(data)
