"""Our lean socket stream against trio's own stream conformance checks."""

from __future__ import annotations

import random
import socket
from collections.abc import Callable, Iterator

import pytest
import trio
import trio.testing

from eco_trio.transport.readiness import EPOLL_AVAILABLE, Readiness, open_readiness
from eco_trio.transport.socket_stream import (
    CANCEL_POINT_EVERY,
    ReceiveInterrupted,
    SendTimeout,
    SocketStream,
)

from .helpers import WAIT


class CheckpointingStream(SocketStream):
    """trio's checks require send_all and receive_some to always checkpoint;
    ours skip the cancel point when the kernel takes everything at once, or
    when a read need not wait (documented, and tested below).  Add it back
    here so the rest of the contract is checked on the real class."""

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint_if_cancelled()
        return await super().receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        await super().send_all(data)
        await trio.lowlevel.cancel_shielded_checkpoint()


@pytest.fixture(params=["epoll", "portable"])
def reactor(request: pytest.FixtureRequest) -> Iterator[Readiness]:
    """Every stream test runs over both I/O paths."""
    if request.param == "epoll" and not EPOLL_AVAILABLE:
        pytest.skip("the epoll path needs Linux")
    with open_readiness(request.param) as readiness:
        yield readiness


def make_pair(
    reactor: Readiness, cls: type[SocketStream] = CheckpointingStream
) -> tuple[SocketStream, SocketStream]:
    a, b = socket.socketpair()
    return cls(a, reactor), cls(b, reactor)


def clog(*streams: SocketStream) -> None:
    """Fill each stream's send buffer (and its peer's receive buffer)."""
    for stream in streams:
        for _ in range(10_000):  # bounded: kernel buffers are a few MiB at most
            try:
                stream.socket.send(b"x" * 65536)
            except BlockingIOError:
                break


async def test_conforms_to_trio_half_closeable_stream(reactor: Readiness) -> None:
    async def stream_maker() -> tuple[SocketStream, SocketStream]:
        return make_pair(reactor)

    async def clogged_stream_maker() -> tuple[SocketStream, SocketStream]:
        left, right = make_pair(reactor)
        for stream in (left, right):
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        clog(left, right)
        return left, right

    await trio.testing.check_half_closeable_stream(stream_maker, clogged_stream_maker)


async def test_send_all_does_not_yield_when_the_kernel_takes_it(reactor: Readiness) -> None:
    left, right = make_pair(reactor, SocketStream)
    async with left, right:
        with trio.testing.assert_no_checkpoints():
            await left.send_all(b"hola\n")
        assert await right.receive_some() == b"hola\n"


async def test_send_timeout_breaks_a_stream_nobody_reads(
    reactor: Readiness, autojump_clock: trio.testing.MockClock
) -> None:
    a, b = socket.socketpair()
    stream, _never_read = SocketStream(a, reactor, send_timeout=2.0), b
    start = trio.current_time()
    with pytest.raises(SendTimeout):
        await stream.send_all(b"x" * 10_000_000)
    assert trio.current_time() - start == pytest.approx(2.0)
    await stream.aclose()
    b.close()


async def test_errors_become_broken_resource(reactor: Readiness) -> None:
    a, b = socket.socketpair()
    stream = SocketStream(a, reactor)
    b.send(b"unread")
    b.close()  # the peer is gone: sending to it fails with EPIPE

    async def keep_talking() -> None:
        for _ in range(100):
            await stream.receive_some()
            await stream.send_all(b"x" * 65536)

    with pytest.raises(trio.BrokenResourceError):
        await keep_talking()
    await stream.aclose()


async def test_reactor_stream_moves_bulk_data_in_full_reads(
    nursery: trio.Nursery, reactor: Readiness
) -> None:
    """Reads that fill the buffer leave data behind: the stream reads again
    before it waits, and nothing is lost or reordered."""
    a, b = socket.socketpair()
    sender, receiver = SocketStream(a, reactor), SocketStream(b, reactor)
    payload = bytes(range(256)) * 8192  # 2 MiB

    async def send() -> None:
        await sender.send_all(payload)
        await sender.send_eof()

    nursery.start_soon(send)
    received = bytearray()
    with trio.fail_after(10):
        while chunk := await receiver.receive_some(4096):
            received += chunk
    assert received == payload
    assert await receiver.receive_some(10) == b""  # EOF stays EOF
    await sender.aclose()
    await receiver.aclose()


async def test_reactor_close_wakes_a_waiting_reader(reactor: Readiness) -> None:
    a, b = socket.socketpair()
    stream = SocketStream(a, reactor)
    outcome: list[BaseException] = []

    async def reader() -> None:
        try:
            await stream.receive_some()
        except trio.ClosedResourceError as exc:
            outcome.append(exc)

    async with trio.open_nursery() as inner:
        inner.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        await stream.aclose()
    assert len(outcome) == 1
    b.close()


@pytest.mark.skipif(not EPOLL_AVAILABLE, reason="the epoll reactor needs Linux")
@pytest.mark.parametrize("readers", [1, 3])
async def test_closing_the_reactor_wakes_leader_and_followers(readers: int) -> None:
    from eco_trio.transport.reactor import Reactor  # epoll: Linux only

    reactor = Reactor()
    pairs = [socket.socketpair() for _ in range(readers)]
    streams = [SocketStream(a, reactor) for a, _ in pairs]
    woken: list[BaseException] = []

    async def reader(stream: SocketStream) -> None:
        try:
            await stream.receive_some()
        except trio.ClosedResourceError as exc:
            woken.append(exc)

    async with trio.open_nursery() as nursery:
        for stream in streams:
            nursery.start_soon(reader, stream)
        await trio.testing.wait_all_tasks_blocked()
        reactor.close()
    assert len(woken) == readers
    for stream, (_, b) in zip(streams, pairs, strict=True):
        await stream.aclose()
        b.close()


async def test_many_readers_share_one_leader(reactor: Readiness) -> None:
    """Edges for followers are handed over by the leader; leadership passes
    on when the leader's own socket fires."""
    pairs = [socket.socketpair() for _ in range(20)]
    streams = [SocketStream(a, reactor) for a, _ in pairs]
    got: dict[int, bytes] = {}

    async def reader(n: int) -> None:
        got[n] = await streams[n].receive_some()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            for n in range(20):
                nursery.start_soon(reader, n)
            await trio.testing.wait_all_tasks_blocked()
            for n in (0, 19, 7, 3, *range(20)):  # leader and followers, in any order
                if n not in got:
                    pairs[n][1].send(b"%d" % n)
                    await trio.testing.wait_all_tasks_blocked()
    assert got == {n: b"%d" % n for n in range(20)}
    for stream, (_, b) in zip(streams, pairs, strict=True):
        await stream.aclose()
        b.close()


async def test_a_cancelled_receive_loses_no_data(reactor: Readiness) -> None:
    a, b = socket.socketpair()
    stream = SocketStream(a, reactor)
    b.send(b"hola")
    await trio.testing.wait_all_tasks_blocked()  # data there before anyone waits
    with trio.CancelScope() as scope:
        scope.cancel()
        await stream.receive_some()
    with trio.fail_after(5):
        assert await stream.receive_some() == b"hola"
    await stream.aclose()
    b.close()


async def test_a_read_that_need_not_wait_lets_others_run_and_still_gets_cancelled(reactor: Readiness) -> None:
    """A busy socket never makes its reader wait, so the read takes a bare
    turn (no cancel point) and a full checkpoint every CANCEL_POINT_EVERY
    reads: a cancellation reaches a connection whose client keeps sending,
    and finds the data it did not read still there."""
    a, b = socket.socketpair()
    stream = SocketStream(a, reactor)
    b.send(b"x" * 4 * CANCEL_POINT_EVERY)  # never drained by one-byte reads
    turns = 0  # the other task's

    async def count_turns() -> None:
        nonlocal turns
        while True:
            turns += 1
            await trio.lowlevel.checkpoint()

    assert await stream.receive_some(1) == b"x"  # from now on it tries recv first
    reads = 1
    async with trio.open_nursery() as nursery:
        nursery.start_soon(count_turns)
        await trio.lowlevel.checkpoint()  # count_turns is running
        before = turns
        with trio.CancelScope() as scope:
            scope.cancel()
            for _ in range(3 * CANCEL_POINT_EVERY):  # bounded: fails rather than spins
                assert await stream.receive_some(1) == b"x"
                reads += 1
        nursery.cancel_scope.cancel()
    assert turns - before >= reads - 2  # the other task had a turn per read
    assert reads <= CANCEL_POINT_EVERY  # the scope's cancellation got through
    with trio.fail_after(WAIT):
        assert await stream.receive_some() == b"x" * (4 * CANCEL_POINT_EVERY - reads)
    await stream.aclose()
    b.close()


# --- interrupting a read ----------------------------------------------------------------


@pytest.mark.parametrize("role", ["leader", "follower", "checkpoint"])
async def test_an_interrupted_read_raises_and_loses_nothing(reactor: Readiness, role: str) -> None:
    """What a server's shutdown does to each idle connection on the epoll
    path, instead of cancelling a scope per connection: the read under way
    (whether its task watches the epoll, waits behind the one that does, or
    is about to try recv) raises ReceiveInterrupted, and the next read
    gets the data that came meanwhile."""

    def interrupter_of(stream: SocketStream) -> Callable[[], None] | None:
        return stream.receive_interrupter()

    pairs = [socket.socketpair() for _ in range(2)]
    first, second = (SocketStream(a, reactor) for a, _ in pairs)
    if not reactor.interrupts:
        assert interrupter_of(first) is None  # trio's waits are interrupted by a cancel scope
        for stream, (_, b) in zip((first, second), pairs, strict=True):
            await stream.aclose()
            b.close()
        return
    target = first if role == "leader" else second
    if role == "checkpoint":
        pairs[1][1].send(b"x")
        assert await second.receive_some() == b"x"  # now it tries recv before it waits
    outcome: list[str] = []

    async def read(stream: SocketStream, name: str) -> None:
        try:
            outcome.append(f"{name}: {(await stream.receive_some()).decode()}")
        except ReceiveInterrupted:
            outcome.append(f"{name}: interrupted")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read, first, "first")
        await trio.testing.wait_all_tasks_blocked()  # first leads
        nursery.start_soon(read, second, "second")
        if role != "checkpoint":
            await trio.testing.wait_all_tasks_blocked()  # second follows
        interrupt = interrupter_of(target)
        assert interrupt is not None
        interrupt()
        await trio.testing.wait_all_tasks_blocked()
        assert outcome == [f"{'first' if target is first else 'second'}: interrupted"]
        for _, b in pairs:
            b.send(b"y")
    other = "second" if target is first else "first"
    assert f"{other}: y" in outcome  # the other read went on, undisturbed
    with trio.fail_after(WAIT):
        assert await target.receive_some() == b"y"  # the data that came meanwhile
    for stream, (_, b) in zip((first, second), pairs, strict=True):
        await stream.aclose()
        b.close()


# --- closing from another task ------------------------------------------------------


async def _read_until_closed(stream: SocketStream, outcome: dict[SocketStream, str]) -> None:
    try:
        while await stream.receive_some(65536):
            pass
        outcome[stream] = "eof"
    except trio.ClosedResourceError:
        outcome[stream] = "closed"


async def _send_that_has_to_wait(stream: SocketStream, peer: socket.socket) -> None:
    """A send_all that fills the buffers and waits for the peer to drain
    them, so the stream goes through its waiting send path."""
    peer.setblocking(False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream.send_all, b"w" * (4 << 20))
        received = 0
        while received < 4 << 20:
            await trio.lowlevel.wait_readable(peer)
            received += len(peer.recv(1 << 20))


@pytest.mark.parametrize("seed", range(60))
async def test_close_from_another_task_wakes_the_reader_and_a_reused_fd_works(
    reactor: Readiness, seed: int
) -> None:
    """trio's Stream contract: closing a stream wakes a task blocked in
    receive_some with ClosedResourceError.  Randomized over the states a
    reader can be in (leader, follower, after a send that waited), with the
    fd number reused by a new socket right after each close: the new one
    must neither be refused as busy nor lose its first data."""
    rng = random.Random(seed)
    outcome: dict[SocketStream, str] = {}
    pairs = [socket.socketpair() for _ in range(rng.randint(1, 5))]
    streams = [SocketStream(a, reactor) for a, _ in pairs]
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            for stream in streams:
                nursery.start_soon(_read_until_closed, stream, outcome)
            await trio.testing.wait_all_tasks_blocked()
            for stream, (_, peer) in zip(streams, pairs, strict=True):
                if rng.random() < 0.5:
                    await _send_that_has_to_wait(stream, peer)
            await trio.testing.wait_all_tasks_blocked()
            doomed = rng.sample(streams, rng.randint(1, len(streams)))
            for stream in doomed:
                fd = stream.socket.fileno()
                stream.close()
                for _ in range(rng.randint(0, 2)):
                    await trio.lowlevel.checkpoint()
                new, new_peer = socket.socketpair()
                if new.fileno() != fd and new_peer.fileno() == fd:
                    new, new_peer = new_peer, new  # reuse the number on our side
                fresh = SocketStream(new, reactor)
                new_peer.send(b"first")
                assert await fresh.receive_some(100) == b"first"
                fresh.close()
                new_peer.close()
            await trio.testing.wait_all_tasks_blocked()
            assert {outcome.get(stream) for stream in doomed} == {"closed"}
            for stream in streams:
                stream.close()
    for _, peer in pairs:
        peer.close()


@pytest.mark.skipif(not EPOLL_AVAILABLE, reason="the epoll reactor needs Linux")
async def test_the_leaders_spin_adapts_to_what_it_finds() -> None:
    """Before sleeping, the leader looks again up to its patience times:
    a spin that ends in sleep halves it (down to 1), a spin that finds an
    event raises it by one (up to MAX_PATIENCE)."""
    from eco_trio.transport.reactor import MAX_PATIENCE, Reactor

    a, b = socket.socketpair()
    with Reactor() as reactor, a, b:
        stream = SocketStream(a, reactor)
        start = reactor.patience
        received: list[bytes] = []

        async def read_once() -> None:
            received.append(await stream.receive_some())

        # Nobody writes while the leader spins: each wait ends in sleep.
        for expected in (start // 2, start // 4, max(1, start // 8), 1, 1):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_once)
                await trio.testing.wait_all_tasks_blocked()  # asleep: the spin is over
                assert reactor.patience == expected
                b.send(b"x")
        # A write that comes while the leader spins: the spin paid.  (From
        # a patience the checkpoints below cannot outlast.)
        reactor.patience = MAX_PATIENCE - 2
        for step in range(1, 4):
            before = reactor.patience
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_once)
                # Long enough for the reader to find nothing and lead (two
                # turns), short of its patience: then the write comes.
                for _ in range(6):
                    await trio.lowlevel.checkpoint()
                b.send(b"y")
            assert reactor.patience == min(MAX_PATIENCE, before + 1), step
        assert received == [b"x"] * 5 + [b"y"] * 3
