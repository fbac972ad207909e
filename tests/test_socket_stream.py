"""Our lean socket stream against trio's own stream conformance checks."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from eco_trio.socket_stream import SendTimeout, SocketStream


class CheckpointingStream(SocketStream):
    """trio's checks require send_all to always checkpoint; ours skips it when
    the kernel takes everything at once (documented).  Add it back here so
    the rest of the contract is checked on the real class."""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        await super().send_all(data)
        await trio.lowlevel.cancel_shielded_checkpoint()


def make_pair(cls: type[SocketStream] = CheckpointingStream) -> tuple[SocketStream, SocketStream]:
    a, b = socket.socketpair()
    return cls(a), cls(b)


async def stream_maker() -> tuple[SocketStream, SocketStream]:
    return make_pair()


async def clogged_stream_maker() -> tuple[SocketStream, SocketStream]:
    left, right = make_pair()
    for stream in (left, right):
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    while True:
        try:
            left.socket.send(b"x" * 65536)
        except BlockingIOError:
            break
    while True:
        try:
            right.socket.send(b"x" * 65536)
        except BlockingIOError:
            break
    return left, right


async def test_conforms_to_trio_half_closeable_stream() -> None:
    await trio.testing.check_half_closeable_stream(stream_maker, clogged_stream_maker)


async def test_send_all_does_not_yield_when_the_kernel_takes_it() -> None:
    left, right = make_pair(SocketStream)
    async with left, right:
        with trio.testing.assert_no_checkpoints():
            await left.send_all(b"hola\n")
        assert await right.receive_some() == b"hola\n"


async def test_send_timeout_breaks_a_stream_nobody_reads(autojump_clock: trio.testing.MockClock) -> None:
    a, b = socket.socketpair()
    stream, _never_read = SocketStream(a, send_timeout=2.0), b
    start = trio.current_time()
    with pytest.raises(SendTimeout):
        await stream.send_all(b"x" * 10_000_000)
    assert trio.current_time() - start == pytest.approx(2.0)
    await stream.aclose()
    b.close()


async def test_errors_become_broken_resource() -> None:
    a, b = socket.socketpair()
    stream = SocketStream(a)
    b.send(b"unread")
    b.close()  # the peer is gone: sending to it fails with EPIPE

    async def keep_talking() -> None:
        for _ in range(100):
            await stream.receive_some()
            await stream.send_all(b"x" * 65536)

    with pytest.raises(trio.BrokenResourceError):
        await keep_talking()
    await stream.aclose()
