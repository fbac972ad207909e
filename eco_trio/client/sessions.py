"""The sessions the command line runs over a :class:`Client`: piped input
and MENSAJE arguments (the interactive one is ``interactive.py``).

:func:`run_piped` pairs a sender of piped input (in large chunks) with a
reader of the socket in one nursery, so server lines (replies, the shutdown
notice another client caused) are shown the moment they arrive.  Both work
with servers that never end their lines (the original project's server):
what such a server sends is shown after a short pause, one reply per line.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from contextlib import aclosing

import trio

from eco_trio.client.core import Client
from eco_trio.wire.commands import is_closing_command
from eco_trio.wire.lines import LineReader

#: How long to wait for the server to close once we asked it to (APAGAR,
#: DESCONEXION, end of input).
DEFAULT_CLOSE_WAIT = 5.0
#: How long each reply in script mode may take.
DEFAULT_REPLY_TIMEOUT = 10.0
#: Over TLS (no half-close), input is over and the replies are all in once
#: the server has sent nothing for this long.
QUIET = 0.5


class SessionEnd(enum.Enum):
    #: We asked to close (APAGAR, DESCONEXION or end of input) and the server did.
    CLOSED = "closed"
    #: The server closed while the user could still type.
    SERVER_CLOSED = "server closed"
    #: We asked to close but the server kept the connection open too long.
    TIMED_OUT = "timed out"


async def run_piped(
    client: Client,
    chunks: AsyncGenerator[bytes, None],
    write: Callable[[list[str]], None],
    *,
    close_wait: float = DEFAULT_CLOSE_WAIT,
    reply_timeout: float = DEFAULT_REPLY_TIMEOUT,
) -> SessionEnd:
    """Piped input: send it as it comes, in large chunks, and ``write`` the
    server's lines in batches.  A server that does not end its lines gets
    one line at a time instead, each after the reply to the one before, so
    every reply shows on its own line."""
    if not client.terminates_lines:
        return await _lockstep(client, _lines_of(chunks), write, reply_timeout=reply_timeout)

    async def pieces() -> AsyncGenerator[bytes, None]:
        async with aclosing(chunks):
            async for chunk in chunks:
                cut = _closing_cut(chunk)
                if cut is not None:
                    yield chunk[:cut]
                    yield b""  # the marker: a closing command was sent
                    return
                yield chunk

    async def send(piece: bytes) -> bool:
        if not piece:
            return True
        await client.stream.send_all(piece)
        return False

    async def show_lines(batch: list[str]) -> None:
        write(batch)

    return await _converse(client, pieces(), send, show_lines, close_wait=close_wait)


async def _converse(
    client: Client,
    inputs: AsyncGenerator[bytes, None],
    send: Callable[[bytes], Awaitable[bool]],
    show: Callable[[list[str]], Awaitable[None]],
    *,
    close_wait: float,
) -> SessionEnd:
    asked_to_close = False
    server_closed = trio.Event()
    went_quiet = False

    async with trio.open_nursery() as nursery:

        async def show_server_lines() -> None:
            try:
                while (batch := await client.receive_lines()) is not None:
                    await show(batch)
            except trio.BrokenResourceError:
                pass  # a reset: the server is gone all the same
            server_closed.set()
            nursery.cancel_scope.cancel()  # stop asking the user for input

        async def send_user_input() -> None:
            nonlocal asked_to_close, went_quiet
            try:
                async with aclosing(inputs):
                    async for item in inputs:
                        if await send(item):
                            break
                    else:
                        if not await client.finish_sending():
                            # No half-close over TLS: the replies are in once
                            # the server has been quiet a while.
                            await client.until_quiet(QUIET, close_wait)
                            went_quiet = True
            except trio.BrokenResourceError:
                pass  # the reader sees the close and reports it
            else:
                asked_to_close = True
            if not went_quiet:
                with trio.move_on_after(close_wait):
                    await server_closed.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(show_server_lines)
        nursery.start_soon(send_user_input)
    if went_quiet:
        return SessionEnd.CLOSED
    if not server_closed.is_set():
        return SessionEnd.TIMED_OUT
    return SessionEnd.CLOSED if asked_to_close else SessionEnd.SERVER_CLOSED


async def _lockstep(
    client: Client,
    lines: AsyncGenerator[str, None],
    write: Callable[[list[str]], None],
    *,
    reply_timeout: float,
) -> SessionEnd:
    async with aclosing(lines):
        async for line in lines:
            try:
                await client.send_line(line)
                with trio.fail_after(reply_timeout):
                    reply = await client.receive_line()
            except trio.BrokenResourceError:
                return SessionEnd.SERVER_CLOSED
            if reply is None:
                return SessionEnd.SERVER_CLOSED
            write([reply])
            if is_closing_command(line):
                return SessionEnd.CLOSED
    return SessionEnd.CLOSED


async def _lines_of(chunks: AsyncGenerator[bytes, None]) -> AsyncGenerator[str, None]:
    reader = LineReader()
    async with aclosing(chunks):
        async for chunk in chunks:
            for line in reader.feed(chunk):
                yield line
    last = reader.flush(final=True)
    if last is not None:
        yield last


def _closing_cut(chunk: bytes) -> int | None:
    """Where to stop sending ``chunk``: just after its first line that asks
    the server to close (APAGAR, DESCONEXION), or None.  Most chunks hold
    no such word at all, which one search finds out."""
    upper = chunk.upper()
    if b"APAGAR" not in upper and b"DESCONEXI" not in upper:
        return None
    start = 0
    while start < len(chunk):
        end = chunk.find(b"\n", start)
        end = len(chunk) if end < 0 else end + 1
        if is_closing_command(chunk[start:end]):  # commands are matched on bytes
            return end
        start = end
    return None


async def run_messages(
    client: Client,
    messages: Iterable[str],
    show: Callable[[str], None],
    *,
    reply_timeout: float = DEFAULT_REPLY_TIMEOUT,
) -> list[str]:
    """Send ``messages`` one at a time and show each line of each reply
    (script mode).  Returns the messages left unsent because one before
    them closed the connection (APAGAR, DESCONEXION).

    Raises :class:`ConnectionClosed` if the server closes before a reply,
    and trio.TooSlowError if a reply takes longer than ``reply_timeout``."""
    pending = list(messages)
    while pending:
        message = pending.pop(0)
        with trio.fail_after(reply_timeout):
            reply = await client.request_lines(message)
        for line in reply:
            show(line)
        if is_closing_command(message):
            return pending
    return []
