"""The client: the async API over loopback, the session over memory streams."""

from __future__ import annotations

import io
from collections.abc import AsyncGenerator, Awaitable, Callable

import pytest
import trio
import trio.testing

import eco_trio
from eco_trio.client import Client, SessionEnd, run_messages, run_session
from eco_trio.terminal import Console

from .helpers import Peer, start_server


async def test_connect_and_request(nursery: trio.Nursery) -> None:
    running = await start_server(nursery)
    async with eco_trio.connect("127.0.0.1", running.port) as conn:
        assert conn.greeting is not None and conn.greeting.startswith("BIENVENIDO")
        assert await conn.request("hola") == "HOLA"
        assert await conn.request("ñandú straße") == "ÑANDÚ STRASSE"
        listing = (await conn.request("LISTAR")).split("\n")
        assert listing[0] == "CLIENTES 1" and listing[1].endswith("(tú)")
        assert await conn.request("APAGAR") == "ADIOS: conexión cerrada."
        with pytest.raises(eco_trio.ConnectionClosed):
            await conn.request("hola")


async def test_serve_is_public_and_startable(nursery: trio.Nursery) -> None:
    addresses = await nursery.start(eco_trio.serve, eco_trio.ServerConfig(host="127.0.0.1", port=0))
    port = int(addresses[0].rsplit(":", 1)[1])
    async with eco_trio.connect("127.0.0.1", port) as conn:
        assert await conn.request("x") == "X"


def scripted(*lines: str, then_wait: bool = False) -> AsyncGenerator[str, None]:
    async def generate() -> AsyncGenerator[str, None]:
        for line in lines:
            yield line
        if then_wait:  # a user who stops typing but never presses Ctrl-D
            await trio.sleep_forever()

    return generate()


class Screen:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)


async def fake_server(nursery: trio.Nursery, script: Callable[[Peer], Awaitable[object]]) -> Client:
    """A client whose server side is run by ``script`` over memory streams."""
    client_side, server_side = trio.testing.memory_stream_pair()
    nursery.start_soon(script, Peer(server_side))
    return Client(client_side)


async def test_session_sends_lines_and_ends_after_apagar(nursery: trio.Nursery) -> None:
    async def server(peer: Peer) -> None:
        await peer.send(b"HOLA, USUARIO\n")
        assert await peer.line() == b"uno"
        await peer.send(b"UNO\n")
        assert await peer.line() == b"apagar"
        await peer.send(b"ADIOS\n")
        await peer.stream.aclose()

    client = await fake_server(nursery, server)
    screen = Screen()
    end = await run_session(client, scripted("uno", "apagar", "never sent"), screen)
    assert end is SessionEnd.CLOSED
    assert screen.lines == ["HOLA, USUARIO", "UNO", "ADIOS"]


async def test_session_half_closes_at_end_of_input(nursery: trio.Nursery) -> None:
    async def server(peer: Peer) -> None:
        received = await peer.expect_eof()
        await peer.send(received.upper())
        await peer.stream.aclose()

    client = await fake_server(nursery, server)
    screen = Screen()
    assert await run_session(client, scripted("a", "b"), screen) is SessionEnd.CLOSED
    assert screen.lines == ["A", "B"]


async def test_notice_shown_while_the_user_is_idle_and_session_ends(nursery: trio.Nursery) -> None:
    async def server(peer: Peer) -> None:
        await peer.send(b"AVISO: el servidor se apaga\n")
        await peer.stream.aclose()

    client = await fake_server(nursery, server)
    screen = Screen()
    end = await run_session(client, scripted(then_wait=True), screen)
    assert end is SessionEnd.SERVER_CLOSED
    assert screen.lines == ["AVISO: el servidor se apaga"]


async def test_server_that_never_sends_newlines(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    async def server(peer: Peer) -> None:
        await peer.send(b"BIENVENIDO")
        await trio.sleep(1)
        await peer.send(b"HOLA")
        await trio.sleep(1)
        await peer.stream.aclose()

    client = await fake_server(nursery, server)
    screen = Screen()
    end = await run_session(client, scripted(then_wait=True), screen)
    assert end is SessionEnd.SERVER_CLOSED
    assert screen.lines == ["BIENVENIDO", "HOLA"]


async def test_session_gives_up_on_a_server_that_never_closes(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    async def server(peer: Peer) -> None:
        await peer.line()
        await trio.sleep_forever()

    client = await fake_server(nursery, server)
    start = trio.current_time()
    end = await run_session(client, scripted("APAGAR"), Screen(), close_wait=3)
    assert end is SessionEnd.TIMED_OUT
    assert trio.current_time() - start == pytest.approx(3)


async def test_run_messages_prints_each_reply(nursery: trio.Nursery) -> None:
    running = await start_server(nursery)
    async with eco_trio.connect("127.0.0.1", running.port) as conn:
        screen = Screen()
        await run_messages(conn, ["hola", "LISTAR", "APAGAR", "never sent"], screen)
    assert screen.lines[0] == "HOLA"
    assert screen.lines[1].startswith("CLIENTES 1\n127.0.0.1:")
    assert screen.lines[2] == "ADIOS: conexión cerrada."
    assert len(screen.lines) == 3


def test_console_prints_above_the_prompt() -> None:
    out = io.StringIO()
    console = Console(out, prompt="eco> ")
    console.show("antes")
    console._prompting = True  # as while input() waits in its thread
    console.show("durante")
    assert out.getvalue() == "antes\n\r\x1b[2Kdurante\neco> "


async def test_console_lines_skip_blanks_and_end_at_eof() -> None:
    typed = iter(["hola", "   ", "adios"])

    def read_line(prompt: str) -> str:
        try:
            return next(typed)
        except StopIteration:
            raise EOFError from None

    console = Console(io.StringIO(), read_line=read_line)
    assert [line async for line in console.lines()] == ["hola", "adios"]
