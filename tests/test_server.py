"""The server: connection handler over memory streams, then real loopback."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from eco_trio.server.config import ServerConfig
from eco_trio.server.core import Server
from eco_trio.server.listeners import open_listeners
from eco_trio.wire import protocol

from .helpers import (
    GREETING_PREFIX,
    IO,
    WAIT,
    Peer,
    Running,
    address_of,
    blocking_client,
    flood_until_stuck,
    listing,
    memory_peer,
    start_server,
)

# --- one connection over memory streams -----------------------------------------


async def greeted(nursery: trio.Nursery, server: Server, address: str = "127.0.0.1:40000") -> Peer:
    peer = await memory_peer(nursery, server, address)
    assert (await peer.line()).startswith(GREETING_PREFIX)
    return peer


async def test_greeting_then_uppercase(nursery: trio.Nursery) -> None:
    peer = await greeted(nursery, Server())
    assert await peer.request("ñandú straße".encode()) == "ÑANDÚ STRASSE".encode()
    assert await peer.request(b"hola servidor") == b"HOLA CLIENTE"


async def test_ayuda(nursery: trio.Nursery) -> None:
    peer = await greeted(nursery, Server())
    assert (await peer.request(b"ayuda")).startswith(b"COMANDOS:")


async def test_apagar_says_goodbye_and_closes(nursery: trio.Nursery) -> None:
    server = Server()
    peer = await greeted(nursery, server)
    assert await peer.request(b"apagar") == protocol.FAREWELL.encode()
    assert await peer.expect_eof() == b""
    assert len(server.registry) == 0


async def test_client_half_close_gets_every_answer(nursery: trio.Nursery) -> None:
    peer = await greeted(nursery, Server())
    await peer.send(b"uno\ndos\ntres")
    await peer.stream.send_eof()
    assert await peer.expect_eof() == b"UNO\nDOS\nTRES\n"


async def test_unterminated_message_answered_after_the_pause(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    peer = await greeted(nursery, Server(ServerConfig(pause=0.1)))
    start = trio.current_time()
    await peer.send(b"hola")
    assert await peer.line() == b"HOLA"
    assert trio.current_time() - start == pytest.approx(0.1)


async def test_pause_restarts_with_every_byte(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    peer = await greeted(nursery, Server(ServerConfig(pause=0.1)))
    start = trio.current_time()
    for byte in b"hola":
        await peer.send(bytes([byte]))
        await trio.sleep(0.05)
    assert await peer.line() == b"HOLA"
    assert trio.current_time() - start == pytest.approx(0.15 + 0.1)  # last byte + pause


async def test_a_character_cut_by_a_pause_comes_out_whole(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    peer = await greeted(nursery, Server())
    encoded = "año\n".encode()
    await peer.send(encoded[:2])
    await trio.sleep(0.15)  # one pause (0.1 s) has passed: the cut "ñ" waits for one more
    await peer.send(encoded[2:])
    assert await peer.line() == "AÑO".encode()


async def test_a_cut_character_is_held_only_until_the_next_pause(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    peer = await greeted(nursery, Server())
    start = trio.current_time()
    await peer.send(b"abc\xc3")
    assert await peer.line() == protocol.encode_line(protocol.INVALID_UTF8)[:-1]
    assert trio.current_time() - start == pytest.approx(0.2)  # two pauses
    assert await peer.request(b"def") == b"DEF"


async def test_listar_shows_the_requester(nursery: trio.Nursery) -> None:
    server = Server()
    other = await greeted(nursery, server, "10.0.0.1:1111")
    peer = await greeted(nursery, server, "[::1]:2222")
    assert await peer.request(b"listar") == b"CLIENTES 2"
    rows = await peer.lines(2)
    assert rows[0].startswith(b"10.0.0.1:1111 ")
    assert rows[1].startswith(b"[::1]:2222 ") and rows[1].endswith("(tú)".encode())
    assert await other.request(b"x") == b"X"


async def test_desconexion_over_memory_asks_the_server(nursery: trio.Nursery) -> None:
    server = Server()
    peer = await greeted(nursery, server)
    assert await peer.request(b"DESCONEXION") == protocol.SHUTDOWN_ACK.encode()
    assert server.shutting_down
    assert await peer.expect_eof() == b""


# --- real loopback sockets -------------------------------------------------------------


async def test_serve_reports_where_it_listens(nursery: trio.Nursery) -> None:
    addresses = await nursery.start(Server(ServerConfig(host="127.0.0.1", port=0, io=IO)).serve)
    assert len(addresses) == 1
    host, port = addresses[0].rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0


async def test_several_clients_at_once(nursery: trio.Nursery) -> None:
    running = await start_server(nursery)
    results: dict[int, list[bytes]] = {}

    async def talk(n: int) -> None:
        async with running.peer() as peer:
            await peer.send(b"".join(b"cliente %d linea %d\n" % (n, i) for i in range(50)))
            results[n] = await peer.lines(50)

    async with trio.open_nursery() as clients:
        for n in range(20):
            clients.start_soon(talk, n)
    for n in range(20):
        assert results[n] == [b"CLIENTE %d LINEA %d" % (n, i) for i in range(50)]


def local_address(peer: Peer) -> bytes:
    return address_of(peer.stream.socket)  # type: ignore[attr-defined]


async def test_listar_shows_exactly_the_connected_clients(nursery: trio.Nursery) -> None:
    running = await start_server(nursery)
    async with running.peer() as first, running.peer() as second:
        async with running.peer() as leaving:
            in_arrival_order = [local_address(p) for p in (first, second, leaving)]
            assert await listing(first) == in_arrival_order
            assert await listing(leaving) == in_arrival_order
            # The server forgets a client before it closes the connection.
            assert await leaving.request(b"APAGAR") == protocol.FAREWELL.encode()
            assert await leaving.expect_eof() == b""
        assert await listing(second) == [local_address(first), local_address(second)]


async def test_listar_marks_the_requester(nursery: trio.Nursery) -> None:
    running = await start_server(nursery)
    async with running.peer() as first, running.peer() as second:
        assert await second.request(b"LISTAR") == b"CLIENTES 2"
        rows = await second.lines(2)
        assert not rows[0].endswith("(tú)".encode())
        assert rows[1].startswith(local_address(second)) and rows[1].endswith("(tú)".encode())
        assert await first.request(b"x") == b"X"


async def test_apagar_leaves_other_clients_served(nursery: trio.Nursery) -> None:
    running = await start_server(nursery)
    async with running.peer() as staying, running.peer() as leaving:
        assert await leaving.request(b"APAGAR") == protocol.FAREWELL.encode()
        assert await leaving.expect_eof() == b""
        assert await staying.request(b"sigo aqui") == b"SIGO AQUI"


async def test_apagar_with_more_data_behind_it_still_delivers_the_goodbye(nursery: trio.Nursery) -> None:
    running = await start_server(nursery)
    async with running.peer() as peer:
        await peer.send(b"APAGAR\n" + b"ignored line\n" * 20000)
        assert await peer.line() == protocol.FAREWELL.encode()


async def test_desconexion_ends_everything_even_a_client_that_never_reads(nursery: trio.Nursery) -> None:
    running, done = await _serve_until_done(nursery, grace=0.5)
    port = running.port

    # A client that floods and never reads: the server ends up blocked
    # writing to it.
    hog = blocking_client(port)
    hog.setblocking(False)
    await trio.to_thread.run_sync(flood_until_stuck, hog)
    async with running.peer() as other, running.peer() as requester:
        start = trio.current_time()
        assert await requester.request(b"DESCONEXION") == protocol.SHUTDOWN_ACK.encode()
        assert await other.line() == protocol.SHUTDOWN_NOTICE.encode()
        assert await other.expect_eof() == b""
        assert await requester.expect_eof() == b""
        with trio.fail_after(WAIT):
            await done.wait()
        assert trio.current_time() - start < 0.5 + 1.0
    hog.close()
    with pytest.raises(ConnectionRefusedError):  # listeners are closed
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


async def _serve_until_done(nursery: trio.Nursery, **options: float) -> tuple[Running, trio.Event]:
    """A server on a free port (as start_server), and an event set once it
    has stopped."""
    server = Server(ServerConfig(host="127.0.0.1", port=0, io=IO, **options))  # type: ignore[arg-type]
    done = trio.Event()

    async def serve(*, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        await server.serve(task_status=task_status)
        done.set()

    addresses = await nursery.start(serve)
    return Running(server, int(addresses[0].rsplit(":", 1)[1])), done


async def test_beginner_blocking_client_without_newline(nursery: trio.Nursery) -> None:
    """A textbook client: send without a newline, then recv.  It must not hang."""
    running = await start_server(nursery)

    def beginner() -> tuple[bytes, bytes]:
        with blocking_client(running.port) as sock:
            greeting = sock.recv(1024)
            sock.send(b"hola")
            return greeting, sock.recv(1024)

    greeting, reply = await trio.to_thread.run_sync(beginner)
    assert greeting.startswith(GREETING_PREFIX)
    assert reply == b"HOLA\n"


async def test_port_in_use_raises(nursery: trio.Nursery) -> None:
    running = await start_server(nursery)
    with pytest.raises(OSError, match=r"127\.0\.0\.1"):
        await Server(ServerConfig(host="127.0.0.1", port=running.port)).serve()


async def test_accepted_connections_get_nodelay_and_keepalive() -> None:
    """Options are set on the listener once; accepted sockets carry them."""
    listeners = await open_listeners("127.0.0.1", 0, 8)
    with listeners[0] as listener:
        listener.setblocking(True)
        with socket.create_connection(listener.getsockname()[:2]) as _client:
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                assert accepted.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
                if hasattr(socket, "TCP_KEEPIDLE"):
                    assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 60


async def test_a_cancel_scope_only_while_a_timer_runs(nursery: trio.Nursery) -> None:
    """On the epoll path an idle connection holds no cancel scope (0.8 KiB
    and 8 µs each): its stream's interrupter wakes it at shutdown.  A
    fragment's pause timer takes a scope, and still answers the fragment;
    shutdown reaches both kinds."""
    running, done = await _serve_until_done(nursery, pause=0.3, grace=1.0)
    server = running.server
    async with running.peer() as idle, running.peer() as paused:
        assert await idle.request(b"hola") == b"HOLA"
        await paused.send(b"frag")
        await trio.testing.wait_all_tasks_blocked()  # read, and waiting out the pause
        idle_entry, paused_entry = map(server.registry.handle, server.registry.snapshot())
        assert paused_entry.scope is not None  # the pause timer
        if server.io_path == "epoll":
            assert (idle_entry.scope, idle_entry.wake is not None) == (None, True)
        else:  # trio's own waits: interrupted by cancelling a scope
            assert (idle_entry.scope is not None, idle_entry.wake) == (True, None)
        assert await paused.line() == b"FRAG"  # the pause answered it
        await trio.testing.wait_all_tasks_blocked()  # back to an unscoped read
        assert paused_entry.scope is None if server.io_path == "epoll" else paused_entry.scope is not None
        assert await idle.request(b"DESCONEXION") == protocol.SHUTDOWN_ACK.encode()
        assert await paused.line() == protocol.SHUTDOWN_NOTICE.encode()
        assert await paused.expect_eof() == b""
        with trio.fail_after(WAIT):
            await done.wait()
