"""How the server reaches one connection's task from outside it.

The registry keeps, for each client, its record (what LISTAR and ESTADO
show: :class:`~eco_trio.server.registry.ClientEntry`) and this handle,
which the conversation and the server share to end a connection from
elsewhere: the shutdown notice, and the interrupt that delivers it.

Each handle carries an outbox: a trio memory channel for lines the server
sends on its own initiative (the shutdown notice), opened the first time
it is needed.  Replies to a client's own lines never go through it: the
connection task writes those directly, so the per-reply path has no channel
hop and no task switch.

A line put in the outbox is the last thing that connection will hear, so
:meth:`ConnectionHandle.notify` also interrupts the connection task, which
then delivers its outbox and closes.  The interrupt reaches the task only
while it waits for input: through its stream's interrupter (our sockets on
the epoll path, which spares each connection a cancel scope), or by
cancelling its conversation's cancel scope (other streams, and while a timer
runs).  A task busy writing a reply finishes that reply first and notices
the interrupt before it reads again, so no reply is cut in half.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import trio

OUTBOX_SIZE = 4


class ConnectionHandle:
    """One connection's control block, shared by its task and the server."""

    __slots__ = ("_outbox", "closing", "interrupted", "reading", "scope", "wake")

    def __init__(self) -> None:
        #: The connection task is waiting for input (under ``scope``, if set).
        self.reading = False
        #: The connection is ending; notices are no longer sent to it.
        self.closing = False
        self.interrupted = False
        #: How to interrupt the task's read: its cancel scope, or (where the
        #: stream offers one, and no timer needs a scope) the stream's
        #: interrupter.
        self.scope: trio.CancelScope | None = None
        self.wake: Callable[[], None] | None = None
        # Opened on first use: a channel pair costs about 1.8 KiB, as much as
        # the connection's task, and most connections never hear from the
        # server unprompted.
        self._outbox: tuple[trio.MemorySendChannel[bytes], trio.MemoryReceiveChannel[bytes]] | None = None

    @property
    def outbox(self) -> trio.MemorySendChannel[bytes]:
        if self._outbox is None:
            self._outbox = trio.open_memory_channel[bytes](OUTBOX_SIZE)
        return self._outbox[0]

    def notify(self, line: bytes) -> None:
        """Send ``line`` as this connection's last words, then close it."""
        if self.closing:
            return
        self.closing = True
        with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError):
            self.outbox.send_nowait(line)  # a full outbox: that connection is leaving anyway
        self.interrupt()

    def interrupt(self) -> None:
        self.interrupted = True
        if self.reading:
            if self.scope is not None:
                self.scope.cancel()
            elif self.wake is not None:
                self.wake()

    def pending_notices(self) -> list[bytes]:
        lines: list[bytes] = []
        if self._outbox is None:
            return lines
        while True:
            try:
                lines.append(self._outbox[1].receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return lines

    def close_outbox(self) -> None:
        if self._outbox is not None:
            for channel in self._outbox:
                channel.close()
