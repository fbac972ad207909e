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

from .client import DEFAULT_CLOSE_WAIT, QUIET, Client, SessionEnd
from .protocol import is_closing_command

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


async def run_interactive(
    connect: Callable[[], Awaitable[Client | str]],
    read_line: Callable[[], Awaitable[str | None]],
    show: Callable[[str], None],
    link: Link,
    *,
    close_wait: float = DEFAULT_CLOSE_WAIT,
) -> SessionEnd:
    """Run the prompt until Ctrl-D, or until APAGAR / DESCONEXION is
    answered.  ``connect`` returns a connected client, or why it could not
    connect; ``read_line`` returns the user's next line (None at Ctrl-D)."""
    async with trio.open_nursery() as nursery:

        async def show_server_lines(client: Client, closed: trio.Event) -> None:
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

        async def attach() -> bool:
            outcome = await connect()
            if isinstance(outcome, str):
                show(f"[{outcome}]")
                return False
            link.client, link.closed = outcome, trio.Event()
            if outcome.greeting is not None:
                show(outcome.greeting)
            nursery.start_soon(show_server_lines, outcome, link.closed)
            return True

        await attach()
        while True:
            line = await read_line()
            if line is None:  # Ctrl-D: let the server answer what it got
                link.leaving = True
                if link.client is not None:
                    if await _half_close(link.client):
                        with trio.move_on_after(close_wait):
                            await link.closed.wait()
                    else:
                        await link.client.until_quiet(QUIET, close_wait)
                break
            if not line.strip():
                continue
            if link.client is None and not await attach():
                continue
            assert link.client is not None
            closing = is_closing_command(line)
            if closing:
                link.answered, link.leaving = trio.Event(), True
            # Set before the line goes: a fast reply must find it set, to clear it.
            if link.waiting_since is None:
                link.waiting_since = link.clock()
            try:
                await link.client.send_line(line)
            except trio.BrokenResourceError:
                continue  # the reader reports the disconnection
            if closing:
                with trio.move_on_after(close_wait):
                    await link.answered.wait()
                    if link.last_reply is not None and link.last_reply.startswith("ERROR"):
                        link.leaving = False
                        continue  # refused (a wrong token, say): the session goes on, as redis-cli's
                    await link.closed.wait()
                break
        nursery.cancel_scope.cancel()
    return SessionEnd.CLOSED


async def _half_close(client: Client) -> bool:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        return await client.finish_sending()
    return True  # the connection is gone already: its end is on its way
