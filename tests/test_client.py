"""The client: the async API over loopback, the session over memory streams."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable

import pytest
import trio
import trio.testing

import eco_trio
from eco_trio.client.core import Client, ClientUnusable, ServerRefused, open_client
from eco_trio.client.interactive import Link, run_interactive
from eco_trio.client.sessions import SessionEnd, _closing_cut, run_messages, run_piped

from .helpers import IO, Peer, start_server


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
    addresses = await nursery.start(eco_trio.serve, eco_trio.ServerConfig(host="127.0.0.1", port=0, io=IO))
    port = int(addresses[0].rsplit(":", 1)[1])
    async with eco_trio.connect("127.0.0.1", port) as conn:
        assert await conn.request("x") == "X"


def scripted(*lines: str, then_wait: bool = False) -> AsyncGenerator[bytes, None]:
    """Piped input, a line per chunk."""

    async def generate() -> AsyncGenerator[bytes, None]:
        for line in lines:
            yield (line + "\n").encode()
        if then_wait:  # input that stops coming but never ends
            await trio.sleep_forever()

    return generate()


class Screen:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)

    def write(self, batch: list[str]) -> None:
        self.lines += batch


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
    end = await run_piped(client, scripted("uno", "apagar", "never sent"), screen.write)
    assert end is SessionEnd.CLOSED
    assert screen.lines == ["HOLA, USUARIO", "UNO", "ADIOS"]


async def test_session_half_closes_at_end_of_input(nursery: trio.Nursery) -> None:
    async def server(peer: Peer) -> None:
        received = await peer.expect_eof()
        await peer.send(received.upper())
        await peer.stream.aclose()

    client = await fake_server(nursery, server)
    screen = Screen()
    assert await run_piped(client, scripted("a", "b"), screen.write) is SessionEnd.CLOSED
    assert screen.lines == ["A", "B"]


async def test_notice_shown_while_the_user_is_idle_and_session_ends(nursery: trio.Nursery) -> None:
    async def server(peer: Peer) -> None:
        await peer.send(b"AVISO: el servidor se apaga\n")
        await peer.stream.aclose()

    client = await fake_server(nursery, server)
    screen = Screen()
    end = await run_piped(client, scripted(then_wait=True), screen.write)
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
    end = await run_piped(client, scripted(then_wait=True), screen.write)
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
    end = await run_piped(client, scripted("APAGAR"), Screen().write, close_wait=3)
    assert end is SessionEnd.TIMED_OUT
    assert trio.current_time() - start == pytest.approx(3)


async def test_run_messages_prints_each_reply_and_returns_what_it_could_not_send(
    nursery: trio.Nursery,
) -> None:
    running = await start_server(nursery)
    async with eco_trio.connect("127.0.0.1", running.port) as conn:
        screen = Screen()
        unsent = await run_messages(conn, ["hola", "LISTAR", "APAGAR", "never", "sent"], screen)
    assert screen.lines[0] == "HOLA"
    assert screen.lines[1] == "CLIENTES 1"
    assert screen.lines[2].startswith("127.0.0.1:") and screen.lines[2].endswith("(tú)")
    assert screen.lines[3:] == ["ADIOS: conexión cerrada."]
    assert unsent == ["never", "sent"]


async def test_connect_raises_when_the_server_is_full(nursery: trio.Nursery) -> None:
    running = await start_server(nursery, max_clients=1)
    async with eco_trio.connect("127.0.0.1", running.port):
        with pytest.raises(ServerRefused) as refused:
            async with eco_trio.connect("127.0.0.1", running.port):
                pass
    assert refused.value.line.startswith("ERROR demasiados clientes")


async def test_connect_times_out_on_a_listener_that_never_answers(
    nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    mock_clock.autojump_threshold = 0.05  # time jumps only once everything waits
    with pytest.raises(trio.TooSlowError):
        await open_client("127.0.0.1", port, connect_timeout=3)
    await listener.aclose()


async def test_a_cancelled_request_leaves_the_client_unusable_not_out_of_step(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    async def slow_server(peer: Peer) -> None:
        while True:
            line = await peer.line(wait=100)
            await trio.sleep(1)  # every reply takes a second
            await peer.send(line.upper() + b"\n")

    client = await fake_server(nursery, slow_server)
    with trio.move_on_after(0.5):
        await client.request("uno")
    with pytest.raises(ClientUnusable, match="uno"):
        await client.request("dos")


async def test_messages_to_a_server_that_never_ends_its_lines(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """The original project's server: no newline anywhere, LISTAR's rows in
    several pieces.  Each reply still comes out on its own line."""

    async def original(peer: Peer) -> None:
        await peer.send(b"Bienvenido")
        while True:
            line = await peer.line(wait=100)
            if line == b"LISTAR":
                await peer.send(b"Clientes conectados:")
                await trio.sleep(0.01)
                await peer.send(b" 127.0.0.1:49348")
            else:
                await peer.send(b"Eco: " + line.upper())

    client = await fake_server(nursery, original)
    assert await client.receive_line() == "Bienvenido"
    assert not client.terminates_lines
    screen = Screen()
    assert await run_messages(client, ["hola", "LISTAR", "adios"], screen) == []
    assert screen.lines == ["Eco: HOLA", "Clientes conectados: 127.0.0.1:49348", "Eco: ADIOS"]


async def chunks_of(*chunks: bytes) -> AsyncGenerator[bytes, None]:
    for chunk in chunks:
        yield chunk


async def test_piped_input_is_sent_in_chunks_and_stops_after_a_closing_command(
    nursery: trio.Nursery,
) -> None:
    received: list[bytes] = []

    async def server(peer: Peer) -> None:
        await peer.send(b"HOLA\n")
        while (line := await peer.line()) != b"apagar":
            received.append(line)
            await peer.send(line.upper() + b"\n")
        await peer.send(b"ADIOS\n")
        received.append(await peer.expect_eof())  # nothing after APAGAR
        await peer.stream.aclose()

    client = await fake_server(nursery, server)
    assert await client.receive_line() == "HOLA"
    written: list[list[str]] = []
    chunks = chunks_of(b"uno\ndos\n", b"tres\napagar\nno se envia\n")
    end = await run_piped(client, chunks, written.append, close_wait=1)
    assert [line for batch in written for line in batch] == ["UNO", "DOS", "TRES", "ADIOS"]
    assert end is SessionEnd.TIMED_OUT  # this server waits for an EOF we never send after APAGAR
    assert received == [b"uno", b"dos", b"tres"]


async def test_piped_input_to_a_server_that_never_ends_its_lines_goes_line_by_line(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    async def original(peer: Peer) -> None:
        await peer.send(b"Bienvenido")
        for _ in range(3):
            await peer.send(b"Eco: " + (await peer.line(wait=100)).upper())

    client = await fake_server(nursery, original)
    assert await client.receive_line() == "Bienvenido"
    written: list[list[str]] = []
    end = await run_piped(client, chunks_of(b"uno\ndos\ntres\n"), written.append)
    assert end is SessionEnd.CLOSED
    assert written == [["Eco: UNO"], ["Eco: DOS"], ["Eco: TRES"]]


@pytest.mark.parametrize(
    ("chunk", "cut"),
    [(b"a\nb\n", None), (b"a\napagar\nb\n", 9), (b"x\n desconexion tok \ny", 20), (b"apagar ya\n", None)],
)
def test_closing_cut(chunk: bytes, cut: int | None) -> None:
    assert _closing_cut(chunk) == cut


# --- the interactive session ---------------------------------------------------------


def typed(*lines: str | None) -> Callable[[], Awaitable[str | None]]:
    """What the user types, then Ctrl-D; each line after the server had time."""
    pending = list(lines)

    async def read_line() -> str | None:
        await trio.sleep(0.5)
        return pending.pop(0) if pending else None

    return read_line


async def test_the_prompt_outlives_the_connection_and_the_next_line_reconnects(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    running = await start_server(nursery)
    connections = 0

    async def connect() -> Client | str:
        nonlocal connections
        connections += 1
        return await open_client("127.0.0.1", running.port)

    link, screen = Link(), Screen()
    end = await run_interactive(
        connect, typed("hola", "apagar ya", "otra vez", "APAGAR"), screen, link, close_wait=1
    )
    assert end is SessionEnd.CLOSED
    assert connections == 1  # "apagar ya" is an ordinary line
    link, screen = Link(), Screen()

    async def kicked_out(peer: Peer) -> None:
        await peer.send(b"HOLA\n")
        assert await peer.line() == b"uno"
        await peer.stream.aclose()  # the server goes away

    clients = [await fake_server(nursery, kicked_out)]

    async def reconnect() -> Client | str:
        if clients:
            client = clients.pop()
            client.greeting = await client.receive_line()
            return client
        return await open_client("127.0.0.1", running.port)

    end = await run_interactive(reconnect, typed("uno", "dos"), screen, link, close_wait=1)
    assert screen.lines[0] == "HOLA"
    assert screen.lines[1].startswith("[desconectado")
    assert screen.lines[2].startswith("BIENVENIDO")  # "dos" reconnected
    assert screen.lines[3] == "DOS"


async def test_a_failed_connect_is_one_line_and_the_prompt_stays(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    link, screen = Link(), Screen()

    async def connect() -> Client | str:
        return "cannot connect to 127.0.0.1:1: Connection refused"

    await run_interactive(connect, typed("hola"), screen, link)
    assert screen.lines == ["[cannot connect to 127.0.0.1:1: Connection refused]"] * 2
    assert link.prompt() == "eco (desconectado)> "


def test_the_prompt_marks_an_overdue_reply() -> None:
    now = [100.0]
    link = Link(clock=lambda: now[0])
    link.client = object()  # type: ignore[assignment]
    assert link.prompt() == "eco> "
    link.waiting_since = 100.0
    now[0] = 101.0
    assert link.prompt() == "eco> "
    now[0] = 103.4
    assert link.prompt() == "eco (sin respuesta: 3 s)> "
