"""The interactive client: a prompt that outlives its connection.

As redis-cli does, the client stays when the server goes away: it says why,
its prompt shows that it is disconnected, and the next line reconnects.
Ctrl-D leaves (after the server has answered what it got); APAGAR and
DESCONEXION leave once the server has closed.  While a reply is overdue the
prompt says so, so a server that stopped answering is noticed.

Two tasks share the work, as in every eco_trio session: this one reads what
the user types, and one task per connection shows what the server sends.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable

import trio

from eco_trio.client.core import Client
from eco_trio.client.sessions import DEFAULT_CLOSE_WAIT, QUIET, SessionEnd
from eco_trio.wire.protocol import is_closing_command, is_shutdown_command

#: A reply later than this marks the prompt.
OVERDUE = 2.0
PROMPT = "eco> "


class Link:
    """The connection as the prompt shows it.  The prompt reads it from
    its own thread, so times come from a plain clock, not trio's."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.client: Client | None = None
        self.closed = trio.Event()  # the current connection has ended
        self.waiting_since: float | None = None  # a line sent, no reply yet
        #: Set at the next batch of server lines (or the connection's end);
        #: ``last_reply`` is that batch's first line.
        self.answered = trio.Event()
        self.last_reply: str | None = None
        #: The user asked to leave (Ctrl-D, APAGAR, DESCONEXION).
        self.leaving = False

    def prompt(self) -> str:
        if self.client is None:
            return "eco (desconectado)> "
        waiting_since = self.waiting_since
        if waiting_since is not None and (late := self.clock() - waiting_since) >= OVERDUE:
            return f"eco (sin respuesta: {late:.0f} s)> "
        return PROMPT


#: What ``read_line`` returns for Ctrl-C at the prompt: the line is
#: cleared and a late reply is no longer waited for; the session goes on
#: (as in iredis, pgcli and bash).  Ctrl-D leaves.
CTRL_C = "\x03"
#: Local commands, never sent: connect now (while disconnected).
LOCAL_CONNECT = ("CONECTAR", ":connect")
DANGER_QUESTION = "DESCONEXION apaga el servidor para todos sus clientes. ¿Seguro? (s/N) "


async def run_interactive(
    connect: Callable[[], Awaitable[Client | str]],
    read_line: Callable[[], Awaitable[str | None]],
    show: Callable[[str], None],
    link: Link,
    *,
    close_wait: float = DEFAULT_CLOSE_WAIT,
    confirm: Callable[[str], Awaitable[bool]] | None = None,
) -> SessionEnd:
    """Run the prompt until Ctrl-D, or until APAGAR / DESCONEXION is
    answered.  ``connect`` returns a connected client, or why it could not
    connect; ``read_line`` returns what the user entered (None at Ctrl-D,
    CTRL_C at Ctrl-C; a pasted block is several lines); ``confirm``, if
    given, is asked before DESCONEXION is sent (iredis' dangerous-command
    question)."""
    async with trio.open_nursery() as nursery:
        session = _Session(connect, show, link, nursery, close_wait, confirm)
        await session.attach()
        typed: list[str] = []
        while True:
            if not typed:
                entered = await read_line()
                if entered is None:  # Ctrl-D: let the server answer what it got
                    await session.leave()
                    break
                typed = entered.split("\n")
            if not await session.handle(typed.pop(0)):
                break
        nursery.cancel_scope.cancel()
    return SessionEnd.CLOSED


class _Session:
    """One interactive session: the connection of the moment (``link``),
    the task that shows what the server sends, and what each line typed
    does."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[Client | str]],
        show: Callable[[str], None],
        link: Link,
        nursery: trio.Nursery,
        close_wait: float,
        confirm: Callable[[str], Awaitable[bool]] | None,
    ) -> None:
        self._connect, self._show, self._link, self._nursery = connect, show, link, nursery
        self._close_wait, self._confirm = close_wait, confirm

    async def attach(self) -> bool:
        outcome = await self._connect()
        link = self._link
        if isinstance(outcome, str):
            self._show(f"[{outcome}]")
            return False
        link.client, link.closed = outcome, trio.Event()
        if outcome.greeting is not None:
            self._show(outcome.greeting)
        self._nursery.start_soon(self._show_server_lines, outcome, link.closed)
        return True

    async def _show_server_lines(self, client: Client, closed: trio.Event) -> None:
        link, show = self._link, self._show
        reason = "el servidor cerró la conexión"
        try:
            while (batch := await client.receive_lines()) is not None:
                link.waiting_since = None
                for line in batch:
                    show(line)
                link.last_reply = batch[0]
                link.answered.set()
        except trio.BrokenResourceError as exc:
            reason = f"la conexión se rompió ({exc})"
        closed.set()
        link.last_reply = None
        link.answered.set()
        if link.client is client:
            link.client = None
            link.waiting_since = None
            hint = "" if link.leaving else "; la próxima línea vuelve a conectar, Ctrl-D sale"
            show(f"[desconectado: {reason}{hint}]")
        await trio.aclose_forcefully(client.stream)

    async def leave(self) -> None:
        """Ctrl-D: half-close, and wait (a while) for the server to finish."""
        link = self._link
        link.leaving = True
        if link.client is None:
            return
        if await _half_close(link.client):
            with trio.move_on_after(self._close_wait):
                await link.closed.wait()
        else:
            await link.client.until_quiet(QUIET, self._close_wait)

    async def handle(self, line: str) -> bool:
        """Act on one line typed; False once the session is over."""
        link = self._link
        if line == CTRL_C:
            link.waiting_since = None  # the user gave up on a late reply
            return True
        if not line.strip():
            return True
        if line.strip() in LOCAL_CONNECT:
            if link.client is None:
                await self.attach()
            return True
        closing = is_closing_command(line)
        if link.client is None:
            if closing and not is_shutdown_command(line):
                return False  # APAGAR with nothing to close: just leave
            if not await self.attach():
                return True
        if (
            is_shutdown_command(line)
            and self._confirm is not None
            and not await self._confirm(DANGER_QUESTION)
        ):
            self._show("[DESCONEXION no enviado]")
            return True
        return await self._send(line, closing)

    async def _send(self, line: str, closing: bool) -> bool:
        link = self._link
        assert link.client is not None
        if closing:
            link.answered, link.leaving = trio.Event(), True
        # Set before the line goes: a fast reply must find it set, to clear it.
        if link.waiting_since is None:
            link.waiting_since = link.clock()
        try:
            await link.client.send_line(line)
        except trio.BrokenResourceError:
            return True  # the reader reports the disconnection
        if not closing:
            return True
        with trio.move_on_after(self._close_wait):
            await link.answered.wait()
            if link.last_reply is not None and link.last_reply.startswith("ERROR"):
                link.leaving = False
                return True  # refused (a wrong token, say): the session goes on, as redis-cli's
            await link.closed.wait()
        return False


async def _half_close(client: Client) -> bool:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        return await client.finish_sending()
    return True  # the connection is gone already: its end is on its way
