"""Every byte a client sends counts (issue 18, items 3 and 8): telnet
commands share the per-turn work and output bounds with lines; the idle
timeout counts complete lines only, so a trickle does not hold a slot; and
one address cannot take every slot."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from eco_trio.server.config import REMOTE_MAX_CLIENTS_PER_IP, ServerConfig, clients_per_ip_in_force
from eco_trio.server.core import Server
from eco_trio.wire import protocol, telnet
from eco_trio.wire.protocol import Reply, ServerProtocol

from .helpers import GREETING_PREFIX, WAIT, Peer, memory_peer, start_server, still_served

NOP = bytes((telnet.IAC, 241))
AYT = bytes((telnet.IAC, telnet.AYT))


def _work_off(parser: ServerProtocol, data: bytes) -> tuple[int, bytes]:
    """Feed one read and every turn it leads to: (turns, reply bytes)."""
    events = parser.receive_data(data)
    turns, out = 1, b""
    while True:
        out += b"".join(event.data for event in events if isinstance(event, Reply))
        if not parser.has_backlog:
            return turns, out
        events = parser.next_events()
        turns += 1


def test_a_read_full_of_telnet_commands_is_worked_off_in_turns() -> None:
    parser = ServerProtocol()
    turns, out = _work_off(parser, NOP * 32768 + b"hola\n")
    assert turns >= 65536 // protocol.TELNET_TURN_INPUT
    assert out == b"HOLA\n"  # the line after the commands, once, in order


def test_are_you_there_floods_are_not_amplified() -> None:
    """One AYT answer per turn: the reply is bounded by the turns, not the
    commands (it was 12 bytes out for each 2 in)."""
    parser = ServerProtocol()
    turns, out = _work_off(parser, AYT * 32768)
    assert out.count(telnet.AYT_REPLY) == turns
    assert len(out) <= turns * len(telnet.AYT_REPLY) <= 65536 // 40  # (was 786 KiB)


def test_option_refusals_are_bounded_by_each_turn() -> None:
    parser = ServerProtocol()
    data = bytes((telnet.IAC, telnet.DO, 1)) * 20000
    events = parser.receive_data(data)
    first = sum(len(event.data) for event in events if isinstance(event, Reply))
    assert first <= protocol.TELNET_TURN_INPUT and parser.has_backlog


async def test_a_telnet_command_flood_does_not_hold_others(nursery: trio.Nursery) -> None:
    server = Server(ServerConfig())
    attacker = await memory_peer(nursery, server, "127.0.0.1:1")
    bystander = await memory_peer(nursery, server, "127.0.0.1:2")
    assert (await attacker.line()).startswith(GREETING_PREFIX)
    assert (await bystander.line()).startswith(GREETING_PREFIX)
    entry = next(entry for entry in server.registry if entry.address == "127.0.0.1:1")
    await attacker.send(NOP * 32768)
    await bystander.send("sigo aquí\n".encode())
    assert await bystander.line() == "SIGO AQUÍ".encode()
    assert entry.protocol is not None and entry.protocol.has_backlog, "the whole flood was worked first"


async def test_a_trickle_of_bytes_does_not_defeat_the_idle_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A byte every idle-timeout minus a little is answered after the pause,
    but is not a complete line: the connection is closed on time."""
    server = Server(ServerConfig(idle_timeout=10, pause=0.1))
    slow = await memory_peer(nursery, server, "127.0.0.1:2")
    assert (await slow.line()).startswith(GREETING_PREFIX)
    start = trio.current_time()

    async def trickle() -> None:
        try:
            for _ in range(10):
                await trio.sleep(9.8)
                await slow.send(b"z")
        except trio.BrokenResourceError:
            pass

    nursery.start_soon(trickle)
    assert await slow.line(wait=60) == b"Z"  # still answered, after the pause
    notice = await slow.line(wait=60)
    assert notice.startswith(b"AVISO") and trio.current_time() - start == pytest.approx(10, abs=0.2)


async def test_complete_lines_keep_a_connection_alive(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = Server(ServerConfig(idle_timeout=10, pause=0.1))
    peer = await memory_peer(nursery, server, "127.0.0.1:2")
    assert (await peer.line()).startswith(GREETING_PREFIX)
    for _ in range(5):
        await trio.sleep(9)
        assert await peer.request(b"a") == b"A"


async def test_one_address_cannot_take_every_slot(nursery: trio.Nursery) -> None:
    running = await start_server(nursery, max_clients=10, max_clients_per_ip=2)
    async with running.peer() as first, running.peer():
        async with running.peer(greeted=False) as third:
            refusal = await third.line()
            assert refusal.startswith(b"ERROR") and "dirección".encode() in refusal
        # Another address (all of 127/8 is loopback on Linux) still gets in.
        with socket.socket() as other:
            other.settimeout(WAIT)
            try:
                other.bind(("127.0.0.2", 0))
            except OSError:
                pytest.skip("127.0.0.2 is not a local address here")
            await trio.to_thread.run_sync(other.connect, ("127.0.0.1", running.port))
            stream = trio.SocketStream(trio.socket.from_stdlib_socket(other))
            assert (await Peer(stream).line()).startswith(GREETING_PREFIX)
        await still_served(first)
    assert running.server.totals.refused["per source"] == 1


def test_per_address_limit_defaults() -> None:
    assert clients_per_ip_in_force(ServerConfig(), ["127.0.0.1:5000", "[::1]:5000"]) is None
    assert clients_per_ip_in_force(ServerConfig(), ["0.0.0.0:5000"]) == REMOTE_MAX_CLIENTS_PER_IP
    assert clients_per_ip_in_force(ServerConfig(max_clients=10), ["0.0.0.0:5000"]) == 10
    assert clients_per_ip_in_force(ServerConfig(max_clients_per_ip=0), ["0.0.0.0:5000"]) is None
    assert clients_per_ip_in_force(ServerConfig(max_clients_per_ip=3), ["127.0.0.1:1"]) == 3


def test_ipv6_clients_are_counted_by_their_64() -> None:
    from eco_trio.server.registry import Registry

    registry = Registry(10, max_per_source=2)
    assert registry.register("[2001:db8::1]:1", 0.0) is not None
    assert registry.register("[2001:db8::2]:1", 0.0) is not None
    assert registry.register("[2001:db8::ffff]:1", 0.0) is None
    assert registry.register("[2001:db8:0:1::1]:1", 0.0) is not None
