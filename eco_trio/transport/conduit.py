"""What a server connection needs of its transport, whatever carries it.

A conversation reads, writes its replies, may be woken while it waits for
input, and closes either gracefully or at once.  Our socket stream and our
TLS stream do each of these natively, in their own cheapest way; any other
trio stream (a memory stream in a test, trio's own ``SocketStream`` or
``SSLStream``) gets :class:`StreamConduit`, an adapter that does them the
general way.  :func:`conduit` picks, so nothing above the transport asks
what kind of stream it holds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import trio

from eco_trio.transport.socket_stream import SocketStream
from eco_trio.transport.tls import TLSStream

Bytes = bytes | bytearray | memoryview


class Conduit(Protocol):
    """A half-closeable byte stream, plus what a server connection needs."""

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray: ...

    #: Whether :meth:`receive_nowait` can ever find data.  Where it can, a
    #: reader takes a turn (a schedule point) and then calls it, and calls
    #: ``receive_some`` only when it finds nothing.
    nowait_reads: bool

    def receive_nowait(self, max_bytes: int) -> bytes | bytearray | None:
        """What has come already, without waiting or yielding; None when
        nothing has (or the stream cannot tell: ``nowait_reads`` False)."""

    async def send_all(self, data: Bytes) -> None: ...

    def send_nowait(self, data: Bytes) -> int:
        """Send what goes without waiting or yielding (possibly nothing);
        returns how many bytes that was.  ``send_all`` sends the rest."""

    def receive_interrupter(self) -> Callable[[], None] | None:
        """A callable that makes a waiting (or the next) ``receive_some``
        raise :class:`~eco_trio.transport.socket_stream.ReceiveInterrupted`;
        None where the only way to stop a read is cancelling its scope."""

    async def send_eof(self) -> None: ...

    async def close_at_once(self) -> None:
        """Close without waiting for the peer, even in a cancelled scope."""

    async def aclose(self) -> None: ...


class StreamConduit:
    """Any trio stream as a :class:`Conduit`: every write goes through
    ``send_all``, and a read is interrupted by cancelling its scope."""

    __slots__ = ("aclose", "receive_some", "send_all", "send_eof", "stream")

    def __init__(self, stream: trio.abc.HalfCloseableStream) -> None:
        self.stream = stream
        self.receive_some = stream.receive_some
        self.send_all = stream.send_all
        self.send_eof = stream.send_eof
        self.aclose = stream.aclose

    nowait_reads = False

    def receive_nowait(self, max_bytes: int) -> None:
        return None

    def send_nowait(self, data: Bytes) -> int:
        return 0

    def receive_interrupter(self) -> None:
        return None

    async def close_at_once(self) -> None:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(self.stream)


class PrefixedStream(trio.abc.HalfCloseableStream):
    """``stream``, with ``prefix`` read first: bytes that came with
    something read before the conversation (after a PROXY header)."""

    def __init__(self, stream: trio.abc.HalfCloseableStream, prefix: bytes) -> None:
        self.stream, self._prefix = stream, prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            size = len(self._prefix) if max_bytes is None else max_bytes
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            await trio.lowlevel.checkpoint()
            return data
        return await self.stream.receive_some(max_bytes)

    async def send_all(self, data: Bytes) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()


def conduit(stream: trio.abc.HalfCloseableStream) -> Conduit:
    """``stream`` as a conduit: itself where it is one of ours."""
    if isinstance(stream, (SocketStream, TLSStream)):
        return stream
    return StreamConduit(stream)
