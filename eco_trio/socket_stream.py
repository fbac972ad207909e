"""A lean trio Stream over a plain non-blocking socket.

trio's own ``SocketStream`` tries ``recv`` before it waits, and checkpoints
after every successful ``send``.  For a request/reply server both cost: each
message pays a failed ``recv``, an extra epoll re-arm and extra scheduler
passes.  This stream waits for readability first, then reads, and returns
from :meth:`send_all` without yielding when the kernel took every byte.
It waits for readability through a :class:`~eco_trio.reactor.Reactor` (an
edge-triggered epoll shared by many sockets) rather than trio's one-shot
registration.

Differences from the trio Stream contract, on purpose:

* :meth:`send_all` is a checkpoint only when it has to wait for the socket to
  drain.  Callers that loop ``receive_some`` / ``send_all`` still checkpoint
  once per message, in ``receive_some``.
* A send that makes no progress for ``send_timeout`` seconds raises
  :class:`SendTimeout` (a :class:`trio.BrokenResourceError`), so a peer that
  never reads cannot pin a task and its buffers forever.

Resource handling: the stream owns the socket; :meth:`aclose` (or the
synchronous :meth:`close`) closes it.
Error handling: every ``OSError`` from the socket becomes
:class:`trio.BrokenResourceError` with the original as its cause, or
:class:`trio.ClosedResourceError` if the stream was closed under the call.
"""

from __future__ import annotations

import contextlib
import operator
import socket

import trio
from trio.lowlevel import checkpoint, notify_closing, wait_writable

from .reactor import HANGUP, Reactor

DEFAULT_RECEIVE_SIZE = 64 * 1024


class SendTimeout(trio.BrokenResourceError):
    """The peer did not take any of our data for ``send_timeout`` seconds."""


class SocketStream(trio.abc.HalfCloseableStream):
    __slots__ = (
        "_abort_wait",
        "_closed",
        "_fd",
        "_hung_up",
        "_maybe_readable",
        "_reactor",
        "_receiving",
        "_send_closed",
        "_send_timeout",
        "_sock",
        "_waiting_to_send",
    )

    def __init__(self, sock: socket.socket, reactor: Reactor, *, send_timeout: float = float("inf")) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._fd = sock.fileno()
        self._send_timeout = send_timeout
        self._reactor = reactor
        reactor.register(sock)
        self._abort_wait = reactor.aborter(self._fd)
        # Whether a read might find data without waiting for a new edge.
        # False until proven otherwise: registering a socket that already
        # has data reports an edge at once.
        self._maybe_readable = False
        self._hung_up = False  # the reactor reported the peer's close or an error
        self._closed = False
        self._send_closed = False  # after send_eof() or aclose()
        # Two tasks sending at once is a bug; trio's own wait_writable catches
        # two waiters, and this flag catches send_eof() racing a blocked send.
        # The fast path, which never waits, needs no such bookkeeping.
        self._waiting_to_send = False
        self._receiving = False  # a task waits in receive_some

    @property
    def socket(self) -> socket.socket:
        return self._sock

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        size = DEFAULT_RECEIVE_SIZE if max_bytes is None else operator.index(max_bytes)
        if size < 1:
            raise ValueError("max_bytes must be >= 1")
        reactor = self._reactor
        while True:  # the hot path, kept in one frame on purpose
            if self._closed:
                raise trio.ClosedResourceError("stream was closed")
            if self._maybe_readable:
                await checkpoint()  # no wait, but never starve other tasks
            else:
                self._receiving = True
                try:
                    if await reactor.wait_readable(self._fd, self._abort_wait) & HANGUP:
                        self._hung_up = True
                finally:
                    self._receiving = False
            try:
                data = self._sock.recv(size)
            except BlockingIOError:
                self._maybe_readable = False  # drained: the next edge says when
                continue
            except OSError as exc:
                raise self._translate(exc, closed=self._closed) from exc
            # A short read took everything there was; new data will bring a
            # new edge.  A full read may have left some behind; after a
            # hangup no edge may come for what is left (end of input, an
            # error), and after end of input every read returns b"" at once.
            self._maybe_readable = len(data) == size or not data or self._hung_up
            return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._send_closed:
            raise trio.ClosedResourceError("stream was closed for sending")
        try:
            sent = self._sock.send(data) if data else 0
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise self._translate(exc, closed=False) from exc
        if sent < len(data):
            await self._send_rest(memoryview(data)[sent:])

    async def _send_rest(self, view: memoryview) -> None:
        self._waiting_to_send = True
        try:
            await self._send_view(view)
        finally:
            self._waiting_to_send = False

    async def _send_view(self, view: memoryview) -> None:
        while view:
            with trio.move_on_after(self._send_timeout):
                await wait_writable(self._sock)
                try:
                    view = view[self._sock.send(view) :]
                except BlockingIOError:
                    pass
                except OSError as exc:
                    raise self._translate(exc, closed=self._send_closed) from exc
                continue
            raise SendTimeout(f"took none of our data for {self._send_timeout:g} s (--send-timeout)")

    @staticmethod
    def _translate(exc: OSError, *, closed: bool) -> trio.ClosedResourceError | trio.BrokenResourceError:
        """The stream error for a socket error: ours if we closed the socket
        under the operation, the peer's (or the network's) otherwise."""
        if closed:
            return trio.ClosedResourceError("stream was closed")
        return trio.BrokenResourceError(str(exc))

    async def wait_send_all_might_not_block(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("stream was closed")
        self._waiting_to_send = True
        try:
            await wait_writable(self._sock)
        finally:
            self._waiting_to_send = False

    async def send_eof(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("stream was closed")
        if self._waiting_to_send:
            raise trio.BusyResourceError("another task is sending on this stream")
        await checkpoint()
        self._send_closed = True
        with contextlib.suppress(OSError):  # already disconnected: nothing to signal
            self._sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        """Close now, without yielding (for ``finally`` blocks that must not
        wait).  :meth:`aclose` is this plus the checkpoint trio requires."""
        if not self._closed:
            self._closed = self._send_closed = True
            # Only a task blocked on this socket needs waking.  Otherwise
            # closing is enough: the kernel drops a closed fd from every
            # epoll, and trio's notify_closing would cost a syscall.
            if self._receiving:
                self._reactor.notify_closing(self._fd)
            else:
                self._reactor.forget(self._fd)
            if self._waiting_to_send:
                notify_closing(self._sock)
            self._sock.close()

    async def aclose(self) -> None:
        self.close()
        await checkpoint()
