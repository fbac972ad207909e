"""How connections learn that a socket has data: the I/O path, chosen once.

Two implementations of one small interface, :class:`Readiness`:

* :class:`~eco_trio.reactor.Reactor`, the Linux fast path: every socket
  registered once in an epoll of our own, armed (one system call) only
  while its task waits.
* :class:`TrioReadiness`, the portable path, for macOS, Windows, the BSDs
  (and Linux on request): trio's own ``wait_readable``, which works wherever
  trio does.

Both keep the same shape above them: wait until readable, then ``recv``;
one write per batch.  :class:`~eco_trio.socket_stream.SocketStream` and
everything above it do not know which one they run on.
"""

from __future__ import annotations

import logging
import select
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Protocol

import trio
from trio.lowlevel import Abort, RaiseCancelT

if TYPE_CHECKING:  # reactor.py needs select.epoll at run time: imported where chosen
    from eco_trio.transport.reactor import Reactor

log = logging.getLogger("eco_trio.server")

#: Names for --io and ECO_TRIO_IO.
IO_PATHS: Final = ("auto", "epoll", "portable")
EPOLL_AVAILABLE: Final = hasattr(select, "epoll")


class Readiness(Protocol):
    """Readability of many sockets, for the tasks that read them."""

    #: Whether :meth:`interrupt` works here.
    interrupts: bool

    def register(self, sock: socket.socket) -> None: ...

    def forget(self, fd: int) -> None:
        """``fd`` is about to be closed; no task waits on it."""

    def notify_closing(self, fd: int) -> None:
        """``fd`` is about to be closed under a waiting task: wake it with
        ClosedResourceError."""

    def aborter(self, fd: int) -> Callable[[RaiseCancelT], Abort]: ...

    def interrupt(self, fd: int) -> None:
        """Make the wait on ``fd`` return at once, with no events (only
        where :attr:`interrupts`): the caller knows why."""

    async def wait_readable(self, fd: int, abort: Callable[[RaiseCancelT], Abort]) -> int:
        """Until ``fd`` may have data (or EOF, or an error).  Callers read
        until ``recv`` finds nothing before they wait again, so a busy
        socket costs the readiness nothing."""

    def close(self) -> None: ...


def _never_called(_: RaiseCancelT) -> Abort:  # pragma: no cover - trio waits abort by themselves
    return Abort.SUCCEEDED


class TrioReadiness:
    """The portable path: each wait is trio's own ``wait_readable``, which
    is level-triggered, so nothing needs remembering between waits.  Its
    waits are interrupted the trio way, by cancelling a scope."""

    __slots__ = ()
    interrupts = False

    def __enter__(self) -> TrioReadiness:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def register(self, sock: socket.socket) -> None:
        pass

    def forget(self, fd: int) -> None:
        # trio must hear of every close (its Windows backend has polls
        # outstanding; its epoll one keeps a registration).
        trio.lowlevel.notify_closing(fd)

    def notify_closing(self, fd: int) -> None:
        trio.lowlevel.notify_closing(fd)

    def aborter(self, fd: int) -> Callable[[RaiseCancelT], Abort]:
        return _never_called

    def interrupt(self, fd: int) -> None:
        raise NotImplementedError("cancel a scope around the wait instead")

    async def wait_readable(self, fd: int, abort: Callable[[RaiseCancelT], Abort]) -> int:
        await trio.lowlevel.wait_readable(fd)
        return 0

    def close(self) -> None:
        pass


def io_path(requested: str = "auto") -> str:
    """``"epoll"`` or ``"portable"`` for a requested path: ``auto`` means
    epoll wherever it exists.  Raises ValueError for an unknown name or for
    epoll where there is none.  (The command line turns ``$ECO_TRIO_IO``
    into a request; library code reads no environment.)"""
    if requested not in IO_PATHS:
        raise ValueError(f"unknown I/O path {requested!r} (choose from {', '.join(IO_PATHS)})")
    if requested == "auto":
        return "epoll" if EPOLL_AVAILABLE else "portable"
    if requested == "epoll" and not EPOLL_AVAILABLE:
        raise ValueError("the epoll I/O path needs Linux; use io=portable")
    return requested


def open_readiness(requested: str = "auto") -> Reactor | TrioReadiness:
    """A context manager for the chosen I/O path (see :func:`io_path`)."""
    path = io_path(requested)
    if path == "epoll":
        from eco_trio.transport.reactor import Reactor  # imports select.epoll: Linux only

        log.debug("I/O path: epoll (one-shot reactor, the Linux fast path)")
        return Reactor()
    log.debug("I/O path: portable (trio's wait_readable)")
    return TrioReadiness()
