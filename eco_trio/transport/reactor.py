"""Readiness for many sockets through one epoll, watched by whichever task waits.

trio's own I/O manager arms a socket in its epoll for each wait and disarms
it again on wake-up, and every wait and wake-up goes through its general
bookkeeping.  Here every socket joins a second epoll at its first wait and
stays there, and a wait costs one system call: arming the socket
(``EPOLLONESHOT``, level-triggered; the first wait adds it armed).  trio
watches only that epoll's own file descriptor, so a busy server pays one
poll per batch of ready sockets.

Only sockets whose task is waiting are armed.  A stream tries ``recv``
first and waits only once that found nothing (see
:class:`~eco_trio.socket_stream.SocketStream`), and under load the next
request is usually there by then: then its socket is never armed and costs
the poll nothing.  (Registered edge-triggered, every request of every busy
socket would be an event for the poll to hand over and for us to drop.)
Arming is level-triggered, so data that came before the wait is reported at
once: no event needs remembering while nobody waits, and an event for a
socket nobody waits on any more (a cancelled wait) is simply dropped; the
next wait arms it again.

Who watches it (leader/followers): the first task to wait becomes the
*leader*: it waits on the epoll through trio, hands every event it collects
to the task waiting on that socket, and returns as soon as its own socket
has one.  Tasks that wait while there is a leader park as *followers*.  A
leader that leaves with followers still parked promotes one of them first.
With a single busy connection its task is always the leader, so a message
costs no task switch beyond what plain trio costs; with many, one wake-up
serves them all.

Only readability goes through here; the rare wait for a full send buffer to
drain uses trio's ``wait_writable`` directly.
"""

from __future__ import annotations

import contextlib
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

# This is the Linux fast path: eco_trio.readiness builds a Reactor only
# where select.epoll exists.  The module itself imports anywhere (the
# constants are 0 without epoll), so nothing fails at import time.
_EPOLLIN, _EPOLLRDHUP, _EPOLLONESHOT = (
    getattr(select, name, 0) for name in ("EPOLLIN", "EPOLLRDHUP", "EPOLLONESHOT")
)
#: A waiting socket: data or the peer's close (errors and hang-ups are
#: always reported) wake its reader, once.
_ARMED = _EPOLLIN | _EPOLLRDHUP | _EPOLLONESHOT
_MAX_EVENTS = 1024
_LEAD = -1  # what a follower is woken with when it is promoted to leader
#: The leader's socket was closed under it: no fd number, so a new socket
#: that reuses the number is not taken for the old one.
_CLOSED = -2
#: Before the leader sleeps, it lets every other task run and looks again, up
#: to its *patience* times.  An event that comes meanwhile costs no sleep and
#: no wake-up, and a server that goes to sleep a few microseconds later wakes
#: up faster on virtual machines (measured: benchmarks/compare, pingpong 1
#: client).  But a look that finds nothing is CPU spent for nothing, and how
#: often one finds something depends on the host and the clients, not on a
#: constant: so the patience adapts.  A spin that finds an event raises it by
#: one (up to MAX_PATIENCE); a spin that ends in sleep anyway halves it (down
#: to 1, so that it can learn again).
MAX_PATIENCE = 16
_START_PATIENCE = 8


class _Abort:
    """The cancellation hook for waits on one socket: made once per socket,
    and kept by every idle connection, so as small as a callable gets (a
    closure or a partial costs four times as much)."""

    __slots__ = ("fd", "waiters")

    def __init__(self, waiters: dict[int, Task], fd: int) -> None:
        self.waiters, self.fd = waiters, fd

    def __call__(self, _: RaiseCancelT) -> Abort:
        del self.waiters[self.fd]
        return Abort.SUCCEEDED


class Reactor:
    """Resource handling: use it as a context manager; leaving it closes the
    epoll instance and wakes anyone still waiting with ClosedResourceError.
    Sockets are registered once and drop out by themselves when closed (call
    :meth:`forget`, or :meth:`notify_closing` if a task may be waiting).
    """

    __slots__ = (
        "_epoll",
        "_in_epoll",
        "_interrupted_leader",
        "_leader_fd",
        "_waiters",
        "_wake_reader",
        "_wake_writer",
        "patience",
    )

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._waiters: dict[int, Task] = {}  # followers, by the socket they wait on
        self._in_epoll: set[int] = set()  # the sockets added to the epoll
        self._interrupted_leader: int | None = None  # see interrupt()
        #: Empty looks the leader takes before it sleeps (see MAX_PATIENCE).
        self.patience = _START_PATIENCE
        #: The leader's socket (None: no leader; _CLOSED: closed under it).
        self._leader_fd: int | None = None
        # To wake a leader whose own socket is closed by another task.
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        self._epoll.register(self._wake_reader.fileno(), _EPOLLIN)

    def __enter__(self) -> Reactor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        for task in self._waiters.values():
            reschedule(task, outcome.Error(trio.ClosedResourceError("the reactor was closed")))
        self._waiters.clear()
        if self._leader_fd is not None:  # trio is watching the epoll for it
            trio.lowlevel.notify_closing(self._epoll.fileno())
        self._epoll.close()
        self._wake_reader.close()
        self._wake_writer.close()

    def register(self, sock: socket.socket) -> None:
        # Added to the epoll at its first wait, armed in the same call: one
        # system call per connection fewer, and none for a socket that is
        # closed before it ever waits.  Its number may be an old socket's,
        # which the kernel dropped from the epoll when it was closed.
        self._in_epoll.discard(sock.fileno())

    def forget(self, fd: int) -> None:
        """``fd`` is about to be closed (no task waits on it); the kernel
        drops a closed socket from the epoll by itself."""
        self._in_epoll.discard(fd)

    def notify_closing(self, fd: int) -> None:
        """``fd`` is about to be closed under a waiting task: wake it with
        ClosedResourceError."""
        self._in_epoll.discard(fd)
        task = self._waiters.pop(fd, None)
        if task is not None:
            reschedule(task, outcome.Error(trio.ClosedResourceError("another task closed this socket")))
        elif fd == self._leader_fd:
            # The number may be reused at once: from now on the leader's own
            # events go to whoever waits on a new socket with that number.
            self._leader_fd = _CLOSED
            self._wake_leader()

    #: Waits can be interrupted without a cancel scope: see interrupt().
    interrupts = True

    def interrupt(self, fd: int) -> None:
        """Make the wait on ``fd`` return at once, with no events.  A
        server's shutdown wakes every idle connection this way (the stream
        knows why it woke): a cancel scope per connection would cost each
        about 0.8 KiB and 8 µs (benchmarks/compare, connections/s)."""
        task = self._waiters.pop(fd, None)
        if task is not None:
            reschedule(task, outcome.Value(0))
        elif fd == self._leader_fd:
            self._interrupted_leader = fd
            self._wake_leader()

    def _wake_leader(self) -> None:
        """Make the leader look at its state again, even while it sleeps."""
        with contextlib.suppress(BlockingIOError):  # a wake-up is pending already
            self._wake_writer.send(b"!")

    def aborter(self, fd: int) -> Callable[[RaiseCancelT], Abort]:
        """The cancellation hook for waits on ``fd``, made once per socket
        rather than once per wait."""
        return _Abort(self._waiters, fd)

    async def wait_readable(self, fd: int, abort: Callable[[RaiseCancelT], Abort]) -> int:
        """Until ``fd`` is readable (data, EOF or an error); returns the
        epoll events seen.  Always a checkpoint.  ``abort`` is
        :meth:`aborter` of ``fd``."""
        if fd in self._waiters or fd == self._leader_fd:
            raise trio.BusyResourceError("another task is already reading this socket")
        try:
            if fd in self._in_epoll:
                self._epoll.modify(fd, _ARMED)
            else:
                self._epoll.register(fd, _ARMED)
                self._in_epoll.add(fd)
        except FileExistsError:  # registered twice without a close between
            self._epoll.modify(fd, _ARMED)
        except OSError as exc:  # closed behind the stream's back
            await checkpoint()
            raise trio.ClosedResourceError("the socket is closed") from exc
        if self._leader_fd is None:
            self._leader_fd = fd
            return await self._lead(fd)
        self._waiters[fd] = current_task()
        events = int(await wait_task_rescheduled(abort))
        if events == _LEAD:  # whoever promoted us made us the leader
            return await self._lead(fd)
        return events

    async def _lead(self, fd: int) -> int:
        """Watch the epoll for everyone until ``fd`` itself is readable
        (``_leader_fd`` is ``fd`` on entry)."""
        epoll, waiters = self._epoll, self._waiters
        wake_fd = self._wake_reader.fileno()
        spins = 0
        try:
            while True:
                if self._leader_fd != fd:
                    raise trio.ClosedResourceError("another task closed this socket")
                if self._interrupted_leader == fd:
                    return 0
                if spins < self.patience:
                    spins += 1
                    await checkpoint()
                else:
                    if spins:  # the spin found nothing: be less patient
                        self.patience = max(1, self.patience // 2)
                    spins = 0
                    await trio.lowlevel.wait_readable(epoll.fileno())
                batch = epoll.poll(0, _MAX_EVENTS)
                if batch:
                    if spins and self.patience < MAX_PATIENCE:  # the spin paid
                        self.patience += 1
                    spins = 0
                mine = 0
                for ready, events in batch:
                    if ready == self._leader_fd:
                        mine |= events
                    elif ready == wake_fd:
                        self._wake_reader.recv(64)
                    elif (task := waiters.pop(ready, None)) is not None:
                        reschedule(task, outcome.Value(events))
                    # else: its wait was cancelled; the next one arms again
                if mine:
                    return mine
        finally:
            self._leader_fd = None
            self._interrupted_leader = None  # (it had its data first)
            if waiters:  # someone must keep watching for the followers
                follower_fd, follower = waiters.popitem()
                self._leader_fd = follower_fd
                reschedule(follower, outcome.Value(_LEAD))
