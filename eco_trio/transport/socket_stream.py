"""A lean trio Stream over a plain non-blocking socket.

trio's own ``SocketStream`` checkpoints after every successful ``send`` and
waits through trio's one-shot registration (a system call per wait).  This
stream returns from :meth:`send_all` without yielding when the kernel took
every byte, and reads the way a busy server wants: after a read, the next
``receive_some`` lets every other task run, then tries ``recv``; only when
that finds nothing does it wait for readability.  Under load the next
request is usually there by then, so most messages cost no wait at all
(measured: pingpong 50 clients +8 %, benchmarks/compare).  It waits through
a :class:`~eco_trio.readiness.Readiness`: on Linux the epoll reactor shared
by many sockets, elsewhere trio's own ``wait_readable``; the
stream works the same over either.

Differences from the trio Stream contract, on purpose:

* :meth:`send_all` is a checkpoint only when it has to wait for the socket to
  drain.  Callers that loop ``receive_some`` / ``send_all`` still let other
  tasks run once per message, in ``receive_some``.
* :meth:`receive_some` always lets every other task run, but a read that
  need not wait does so through a bare schedule point (a third cheaper; see
  :mod:`eco_trio.scheduling`): it is a cancel point whenever it waits, and
  at least every :data:`CANCEL_POINT_EVERY` reads otherwise.
* A send that makes no progress for ``send_timeout`` seconds raises
  :class:`SendTimeout` (a :class:`trio.BrokenResourceError`), so a peer that
  never reads cannot pin a task and its buffers forever.

Two additions for the server's connections: :meth:`send_nowait` sends what
the kernel takes without a coroutine, and :meth:`interrupt_receive` makes a
waiting read raise :class:`ReceiveInterrupted` (on the epoll path), so an
idle connection needs no cancel scope for the server to wake it.

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
from collections.abc import Callable

import trio
from trio.lowlevel import checkpoint, notify_closing, wait_writable

from eco_trio.transport.readiness import Readiness
from eco_trio.transport.scheduling import schedule_point

DEFAULT_RECEIVE_SIZE = 64 * 1024
#: A read that need not wait lets the other tasks run through a bare
#: schedule point (a third cheaper than a checkpoint), and through a full
#: checkpoint every this many reads, so that a cancellation reaches a
#: connection whose client never lets it wait.
CANCEL_POINT_EVERY = 16


class ReceiveInterrupted(Exception):
    """A read was interrupted on request (:meth:`SocketStream.interrupt_receive`):
    nothing was read."""


class SendTimeout(trio.BrokenResourceError):
    """The peer did not take any of our data for ``send_timeout`` seconds."""


class SocketStream(trio.abc.HalfCloseableStream):
    __slots__ = (
        "_abort_wait",
        "_closed",
        "_fd",
        "_interrupt",
        "_maybe_readable",
        "_readiness",
        "_receiving",
        "_send_closed",
        "_send_timeout",
        "_sock",
        "_turns",
        "_waiting_to_send",
    )

    def __init__(
        self, sock: socket.socket, readiness: Readiness, *, send_timeout: float = float("inf")
    ) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._fd = sock.fileno()
        self._send_timeout = send_timeout
        self._readiness = readiness
        readiness.register(sock)
        self._abort_wait = readiness.aborter(self._fd)
        # Whether to try recv before waiting: after every read, until recv
        # finds the socket drained.  False at first: a new connection has
        # usually sent nothing yet.
        self._maybe_readable = False
        self._closed = False
        self._send_closed = False  # after send_eof() or aclose()
        # Two tasks sending at once is a bug; trio's own wait_writable catches
        # two waiters, and this flag catches send_eof() racing a blocked send.
        # The fast path, which never waits, needs no such bookkeeping.
        self._waiting_to_send = False
        self._receiving = False  # a task waits in receive_some
        self._interrupt = False  # see interrupt_receive()
        self._turns = 0  # reads that took a turn without waiting

    @property
    def socket(self) -> socket.socket:
        return self._sock

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is None:
            size = DEFAULT_RECEIVE_SIZE
        elif type(max_bytes) is int and max_bytes > 0:  # what callers pass: checked cheaply
            size = max_bytes
        else:
            size = operator.index(max_bytes)
            if size < 1:
                raise ValueError("max_bytes must be >= 1")
        while True:  # the hot path, kept in one frame on purpose
            if self._closed:
                raise trio.ClosedResourceError("stream was closed")
            if self._maybe_readable:  # no wait, but never starve other tasks
                self._turns += 1
                if self._turns % CANCEL_POINT_EVERY:
                    await schedule_point()
                else:
                    await checkpoint()
            else:
                self._receiving = True
                try:
                    await self._readiness.wait_readable(self._fd, self._abort_wait)
                finally:
                    self._receiving = False
            if self._interrupt:  # (the wait, if any, was cut short for this)
                self._interrupt = False
                raise ReceiveInterrupted
            try:
                data = self._sock.recv(size)
            except BlockingIOError:
                self._maybe_readable = False  # drained: wait for more
                continue
            except OSError as exc:
                raise self._translate(exc, closed=self._closed) from exc
            # Only a recv that finds nothing (EAGAIN) makes the next call
            # wait: a busy socket then never needs arming in the reactor.
            self._maybe_readable = True
            return data

    #: receive_nowait can find data: see :class:`~eco_trio.transport.conduit.Conduit`.
    nowait_reads = True

    def receive_nowait(self, max_bytes: int) -> bytes | None:
        """What has come already (at most ``max_bytes``; ``b""`` at the end
        of input), without waiting or yielding; None when nothing has, and
        then :meth:`receive_some` waits for it.  The caller owes the other
        tasks the turn a read takes (see ``receive_some``): a server's hot
        loop takes it itself and spares a coroutine per message."""
        if self._closed:
            raise trio.ClosedResourceError("stream was closed")
        if self._interrupt:
            self._interrupt = False
            raise ReceiveInterrupted
        if not self._maybe_readable:
            return None
        try:
            return self._sock.recv(max_bytes)
        except BlockingIOError:
            self._maybe_readable = False  # drained: receive_some waits
            return None
        except OSError as exc:
            raise self._translate(exc, closed=self._closed) from exc

    def receive_interrupter(self) -> Callable[[], None] | None:
        """:meth:`interrupt_receive`, where the readiness supports it."""
        return self.interrupt_receive if self._readiness.interrupts else None

    def interrupt_receive(self) -> None:
        """Make the :meth:`receive_some` under way, or the next one, raise
        :class:`ReceiveInterrupted` without reading: how a server wakes an
        idle connection without a cancel scope per connection."""
        self._interrupt = True
        if self._receiving:
            self._readiness.interrupt(self._fd)

    def send_nowait(self, data: bytes | bytearray | memoryview) -> int:
        """Send what the kernel takes now, without waiting or yielding;
        returns how many bytes that was (:meth:`send_all` the rest).  A
        server's reply path uses it to skip a coroutine per message."""
        if self._send_closed:
            raise trio.ClosedResourceError("stream was closed for sending")
        try:
            return self._sock.send(data) if data else 0
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise self._translate(exc, closed=False) from exc

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        sent = self.send_nowait(data)
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
            raise SendTimeout(f"took none of our data for {self._send_timeout:g} s (send_timeout)")

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
                self._readiness.notify_closing(self._fd)
            else:
                self._readiness.forget(self._fd)
            if self._waiting_to_send:
                notify_closing(self._sock)
            self._sock.close()

    async def aclose(self) -> None:
        self.close()
        await checkpoint()

    async def close_at_once(self) -> None:
        """Close now, without waiting for the peer: synchronously, so no
        cancel scope and no yield (trio's ``aclose_forcefully`` raises and
        catches a Cancelled, which costs a server closing thousands of
        connections a second)."""
        self.close()
