"""Edge-triggered readiness for many sockets, for one trio task to watch.

trio's own I/O manager registers each socket with ``EPOLLONESHOT``: every
wait re-arms it (``epoll_ctl``) and every wake-up disarms it again, two
system calls per message on top of ``recv`` and ``send``.  For a server
whose connections spend their lives waiting to read, that is most of the
per-message overhead.  Here each socket is registered once, edge-triggered,
with a second epoll instance; one task (:meth:`Reactor.run`) waits on that
epoll's own file descriptor through trio, and when it fires, wakes every
connection task whose socket has new data.  A busy server pays for one
re-arm per batch of ready sockets instead of two per message.

Edge-triggered means "new data arrived", not "data is there".  The contract
that keeps that safe lives in :class:`~eco_trio.socket_stream.SocketStream`:
it only waits after a read found the socket drained (``EAGAIN``, or a read
shorter than asked for, unless the peer has hung up: its close may have come
in the same edge as its last data), and an edge that arrives while nobody
waits is kept as *pending* so the next wait returns at once.

Only readability goes through here; the rare wait for a full send buffer to
drain uses trio's ``wait_writable`` directly.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Callable

import outcome
import trio
from trio.lowlevel import (
    Abort,
    RaiseCancelT,
    Task,
    checkpoint,
    current_task,
    reschedule,
    wait_task_rescheduled,
)

_READ_EVENTS = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
#: Events after which no further edge is guaranteed: the peer closed (data
#: and the close can arrive as one edge) or the socket failed.  A reader that
#: saw one must keep reading until recv says so, never wait again.
HANGUP = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
_MAX_EVENTS = 1024


class Reactor:
    """Resource handling: :meth:`run` owns the epoll instance and closes it
    when cancelled; sockets are registered once and drop out of it by
    themselves when closed (call :meth:`forget` then).
    Error handling: waiters on a socket closed under them get
    :class:`trio.ClosedResourceError` through :meth:`notify_closing`."""

    __slots__ = ("_epoll", "_pending", "_waiters")

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._waiters: dict[int, Task] = {}
        #: Sockets that got an edge while nobody waited on them, and its events.
        self._pending: dict[int, int] = {}

    def register(self, sock: socket.socket) -> None:
        self._epoll.register(sock.fileno(), _READ_EVENTS | select.EPOLLET)

    def forget(self, fd: int) -> None:
        """``fd`` is about to be closed (no task waits on it)."""
        self._pending.pop(fd, None)

    def notify_closing(self, fd: int) -> None:
        """``fd`` is about to be closed under a waiting task: wake it with
        ClosedResourceError."""
        self._pending.pop(fd, None)
        task = self._waiters.pop(fd, None)
        if task is not None:
            reschedule(task, outcome.Error(trio.ClosedResourceError("another task closed this socket")))

    def aborter(self, fd: int) -> Callable[[RaiseCancelT], Abort]:
        """The cancellation hook for waits on ``fd``, made once per socket
        rather than once per wait."""
        waiters = self._waiters

        def abort(_: RaiseCancelT) -> Abort:
            del waiters[fd]
            return Abort.SUCCEEDED

        return abort

    async def wait_readable(self, fd: int, abort: Callable[[RaiseCancelT], Abort]) -> int:
        """Until ``fd`` gets new data (or EOF, or an error); returns the epoll
        events seen (see :data:`HANGUP`).  Always a checkpoint.  ``abort`` is
        :meth:`aborter` of ``fd``."""
        events = self._pending.pop(fd, 0)
        if events:
            try:
                await checkpoint()
            except BaseException:  # cancelled: the edge is still unread
                self._pending[fd] = self._pending.get(fd, 0) | events
                raise
            return events
        if fd in self._waiters:
            raise trio.BusyResourceError("another task is already reading this socket")
        self._waiters[fd] = current_task()
        return int(await wait_task_rescheduled(abort))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Dispatch edges to waiting tasks until cancelled."""
        epoll, waiters, pending = self._epoll, self._waiters, self._pending
        wait_readable = trio.lowlevel.wait_readable
        try:
            task_status.started()
            while True:
                await wait_readable(epoll.fileno())
                for fd, events in epoll.poll(0, _MAX_EVENTS):
                    task = waiters.pop(fd, None)
                    if task is None:
                        pending[fd] = pending.get(fd, 0) | events
                    else:
                        reschedule(task, outcome.Value(events))
        finally:
            # Nobody may be left asleep waiting for an edge that will never
            # be dispatched.
            for task in waiters.values():
                reschedule(task, outcome.Error(trio.ClosedResourceError("the reactor stopped")))
            waiters.clear()
            trio.lowlevel.notify_closing(epoll.fileno())
            epoll.close()
