"""Limits, bad input, faults and the guarded DESCONEXION.

Each limit test keeps a well-behaved client connected throughout and checks
it is still answered correctly after the offender is dealt with.
"""

from __future__ import annotations

import logging
import random
import socket
import struct

import pytest
import trio
import trio.testing

from eco_trio.server.config import ServerConfig, exposure_warning
from eco_trio.server.core import Server
from eco_trio.wire import protocol

from .helpers import (
    GREETING_PREFIX,
    WAIT,
    Peer,
    address_of,
    blocking_client,
    flood_until_stuck,
    listing,
    memory_peer,
    start_server,
    still_served,
)

# --- limits -------------------------------------------------------------------------


@pytest.mark.parametrize("ends_with_newline", [False, True])
async def test_over_long_line_gets_an_error_and_is_closed(
    nursery: trio.Nursery, ends_with_newline: bool
) -> None:
    running = await start_server(nursery, max_line=1024)
    async with running.peer() as good, running.peer() as offender:
        await offender.send(b"x" * 5000 + (b"\n" if ends_with_newline else b""))
        error = await offender.line()
        assert error.startswith(b"ERROR") and b"1024" in error
        assert await offender.expect_eof() == b""
        await still_served(good)


async def test_endless_line_is_cut_off(nursery: trio.Nursery) -> None:
    """1 MiB with no newline: the server answers once it passes the limit and
    closes (the protocol tests show it never buffers more than the limit)."""
    running = await start_server(nursery, max_line=64 * 1024)
    async with running.peer() as good, running.peer() as offender:

        async def push() -> None:
            try:
                for _ in range(16):
                    await offender.send(b"y" * 65536)
            except trio.BrokenResourceError:
                pass  # the server hung up on us, as it should

        async with trio.open_nursery() as pushing:
            pushing.start_soon(push)
            assert (await offender.line()).startswith(b"ERROR")
            await still_served(good)


async def test_invalid_utf8_gets_an_error_and_the_connection_stays(nursery: trio.Nursery) -> None:
    running = await start_server(nursery)
    async with running.peer() as good, running.peer() as offender:
        assert (await offender.request(b"\xff\xfe caf\xe9")).startswith(b"ERROR")
        assert await offender.request(b"hola") == b"HOLA"
        await still_served(good)


async def test_too_many_clients_and_a_slot_frees_when_one_leaves(nursery: trio.Nursery) -> None:
    running = await start_server(nursery, max_clients=2)
    async with running.peer() as good, running.peer() as leaving:
        async with running.peer(greeted=False) as extra:
            refusal = await extra.line()
            assert refusal.startswith(b"ERROR") and b"2" in refusal
            assert await extra.expect_eof() == b""
        await still_served(good)
        assert await leaving.request(b"APAGAR") == protocol.FAREWELL.encode()
        assert await leaving.expect_eof() == b""
        async with running.peer() as newcomer:  # greeted: the slot is free again
            assert await newcomer.request(b"hola") == b"HOLA"
        await still_served(good)


async def test_idle_timeout_closes_a_slowloris_but_not_an_active_client(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = Server(ServerConfig(idle_timeout=10, pause=0.1))
    good = await memory_peer(nursery, server, "127.0.0.1:1")
    slow = await memory_peer(nursery, server, "127.0.0.1:2")
    assert (await good.line()).startswith(GREETING_PREFIX)
    assert (await slow.line()).startswith(GREETING_PREFIX)
    start = trio.current_time()

    async def trickle() -> None:
        """A byte every 50 ms, faster than the pause: never a whole line."""
        try:
            for _ in range(1000):
                await slow.send(b"z")
                await trio.sleep(0.05)
        except trio.BrokenResourceError:
            pass

    async def chat() -> None:
        for _ in range(10):
            await still_served(good)
            await trio.sleep(3)

    nursery.start_soon(trickle)
    nursery.start_soon(chat)
    notice = await slow.line(wait=60)
    assert notice.startswith(b"AVISO") and b"10 s" in notice
    assert trio.current_time() - start == pytest.approx(10, abs=0.2)
    assert await slow.expect_eof() == b""
    await trio.sleep(15)  # the active client outlives several idle periods
    await still_served(good)
    assert [entry.address for entry in server.registry] == ["127.0.0.1:1"]


async def test_slow_reader_is_cut_off_and_others_are_not_slowed(nursery: trio.Nursery) -> None:
    running = await start_server(nursery, send_timeout=0.5)
    async with running.peer() as good:
        hog = blocking_client(running.port)
        hog.setblocking(False)
        await trio.lowlevel.wait_readable(hog)
        assert hog.recv(1024).startswith(GREETING_PREFIX)  # registered by now
        cut_off = False
        with trio.fail_after(WAIT * 3):
            # Push lines and never read: the server's replies back up until
            # it gives up on us.  Bounded by count and by time.
            line = b"w" * 65535 + b"\n"
            pending = memoryview(line)
            for _ in range(4000):
                try:
                    pending = pending[hog.send(pending) :] or memoryview(line)
                    continue
                except BlockingIOError:
                    # The server stopped reading us (it cannot write to us):
                    # meanwhile everyone else is served.
                    await still_served(good)
                    await trio.sleep(0.1)
                except OSError:
                    pass  # reset: the server closed us
                if address_of(hog) not in await listing(good):
                    cut_off = True
                    break
        assert cut_off
        hog.close()
        await still_served(good)


async def test_abrupt_disconnects_leave_no_trace(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    """Open and kill many connections in random states while a good client
    keeps talking; LISTAR must end up showing only the survivors."""
    caplog.set_level(logging.INFO, logger="eco_trio")
    running = await start_server(nursery)
    rng = random.Random(1234)
    survivors: list[socket.socket] = []

    def reset(sock: socket.socket) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    async def victim(n: int) -> None:
        sock = blocking_client(running.port)
        sock.setblocking(False)
        action = rng.choice(["idle", "mid_line", "unread_replies", "half_close", "big_then_gone", "greeting"])
        try:
            if action == "mid_line":
                sock.send("a medio ñ".encode()[:-1])
            elif action == "unread_replies":
                sock.send(b"hola\n" * 2000)
            elif action == "half_close":
                sock.send(b"adios")
                sock.shutdown(socket.SHUT_WR)
            elif action == "big_then_gone":
                sock.send(b"z" * 60000 + b"\n" + b"q" * 60000)
            elif action == "greeting":
                await trio.sleep(0.01)
        except BlockingIOError:
            pass
        await trio.sleep(rng.random() * 0.05)
        if n % 5 == 0 and action != "half_close":  # a half-close ends it cleanly
            survivors.append(sock)
        elif rng.random() < 0.5:
            reset(sock)
        else:
            sock.close()

    async with running.peer() as good:
        async with trio.open_nursery() as victims:
            for n in range(100):
                victims.start_soon(victim, n)
                if n % 10 == 0:
                    await still_served(good)
        expected = [address_of(sock) for sock in survivors]
        with trio.fail_after(WAIT):
            while True:  # the server notices closes asynchronously
                rows = await listing(good)
                if sorted(rows[1:]) == sorted(expected):
                    break
                # The server notices each close in its own time: once every
                # task is blocked, it has noticed all it can.
                await trio.testing.wait_all_tasks_blocked(0.01)
        assert rows[0] == address_of(good.stream.socket)  # type: ignore[attr-defined]
        await still_served(good)
    for sock in survivors:
        sock.close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]


# --- DESCONEXION guarded ------------------------------------------------------------


async def greeted(nursery: trio.Nursery, server: Server, address: str) -> Peer:
    peer = await memory_peer(nursery, server, address)
    assert (await peer.line()).startswith(GREETING_PREFIX)
    return peer


@pytest.mark.parametrize("attempt", [b"DESCONEXION", b"DESCONEXION incorrecto", b"desconexion SECRETO"])
async def test_token_required_and_checked(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture, attempt: bytes
) -> None:
    caplog.set_level(logging.DEBUG)
    server = Server(ServerConfig(token="secreto"))
    peer = await greeted(nursery, server, "127.0.0.1:9")
    reply = await peer.request(attempt)
    assert reply.startswith(b"ERROR") and b"token" in reply
    assert not server.shutting_down
    await still_served(peer)
    assert await peer.request(b"DESCONEXION secreto") == protocol.SHUTDOWN_ACK.encode()
    assert server.shutting_down
    assert "secreto" not in caplog.text


async def test_without_token_only_loopback_may_shut_down(nursery: trio.Nursery) -> None:
    server = Server()
    remote = await greeted(nursery, server, "192.0.2.7:4000")
    reply = await remote.request(b"DESCONEXION")
    assert reply.startswith(b"ERROR") and b"--token" in reply
    assert not server.shutting_down
    local = await greeted(nursery, server, "[::1]:4001")
    assert await local.request(b"DESCONEXION") == protocol.SHUTDOWN_ACK.encode()
    assert server.shutting_down


async def test_remote_shutdown_can_be_disabled(nursery: trio.Nursery) -> None:
    server = Server(ServerConfig(remote_shutdown=False, token="t"))
    peer = await greeted(nursery, server, "127.0.0.1:9")
    assert (await peer.request(b"DESCONEXION t")).startswith(b"ERROR")
    assert not server.shutting_down
    await still_served(peer)


def test_exposure_warning() -> None:
    assert exposure_warning(["127.0.0.1:5000", "[::1]:5000"], ServerConfig()) is None
    assert exposure_warning(["0.0.0.0:5000"], ServerConfig(token="t", idle_timeout=60)) is None
    assert exposure_warning(["0.0.0.0:5000"], ServerConfig(remote_shutdown=False, idle_timeout=60)) is None
    warning = exposure_warning(["192.0.2.1:5000"], ServerConfig())
    assert warning is not None and "token=" in warning and "300 s" in warning
    warning = exposure_warning(["0.0.0.0:5000"], ServerConfig(token="t", idle_timeout=0))
    assert warning is not None and "never closed" in warning and "token=" not in warning


async def test_shutdown_with_a_stuck_client_ends_at_the_grace_deadline(nursery: trio.Nursery) -> None:
    server = Server(ServerConfig(host="127.0.0.1", port=0, grace=0.3))
    done = trio.Event()

    async def run(*, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        await server.serve(task_status=task_status)
        done.set()

    port = int((await nursery.start(run))[0].rsplit(":", 1)[1])
    hog = blocking_client(port)
    hog.setblocking(False)
    await trio.to_thread.run_sync(flood_until_stuck, hog)
    start = trio.current_time()
    server.shutdown()
    with trio.fail_after(WAIT):
        await done.wait()
    assert 0.3 <= trio.current_time() - start < 0.3 + 1.0
    hog.close()


async def test_refusals_are_logged_at_most_once_a_second(
    nursery: trio.Nursery, mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Real sockets, frozen clock: time moves only when the test says."""
    running = await start_server(nursery, max_clients=1)
    async with running.peer():
        for _ in range(50):
            async with running.peer(greeted=False) as extra:
                assert (await extra.line()).startswith(b"ERROR")
        refusals = [r for r in caplog.records if "refused" in r.getMessage()]
        assert len(refusals) == 1 and "(1 since the last report)" in refusals[0].getMessage()
        mock_clock.jump(1.5)  # within a second, the rest of the burst is reported
        await trio.testing.wait_all_tasks_blocked()
        refusals = [r for r in caplog.records if "refused" in r.getMessage()]
        assert len(refusals) == 2 and "(49 since the last report)" in refusals[1].getMessage()
        async with running.peer(greeted=False) as extra:
            assert (await extra.line()).startswith(b"ERROR")
    running.server.shutdown()  # and a count still pending is reported at shutdown
    for _ in range(3):  # the frozen clock moves only here: through the grace period
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(1)
    await trio.testing.wait_all_tasks_blocked()
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 3 and "(1 since the last report)" in refusals[2].getMessage()
