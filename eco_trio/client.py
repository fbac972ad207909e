"""The eco_trio client: a small async API and the session the CLI runs.

API::

    async with eco_trio.connect("localhost", 5000) as conn:
        assert await conn.request("hola") == "HOLA"

Session: :func:`run_session` pairs a reader of the user's lines with a reader
of the socket in one nursery, so server lines (replies, the shutdown notice
another client caused) are shown the moment they arrive.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from contextlib import aclosing, asynccontextmanager

import trio

from .protocol import LineReader, is_closing_command, is_listing_command, parse_listing_header

#: Silence after which a server's unterminated output is shown as a line.
DEFAULT_PAUSE = 0.1
#: How long to wait for the server to close once we asked it to (APAGAR,
#: DESCONEXION, end of input).
DEFAULT_CLOSE_WAIT = 5.0


class ConnectionClosed(Exception):
    """The server closed the connection before answering."""


class Client:
    """A connection to an eco_trio server (or anything line-oriented).

    Lines the server leaves unterminated still arrive: after ``pause``
    seconds without more data, the fragment counts as a line.
    """

    def __init__(self, stream: trio.abc.HalfCloseableStream, *, pause: float = DEFAULT_PAUSE) -> None:
        self.stream = stream
        self.greeting: str | None = None
        self._pause = pause
        self._reader = LineReader()
        self._lines: deque[str] = deque()
        self._eof = False

    async def receive_line(self) -> str | None:
        """The next line from the server; None once it has closed."""
        while not self._lines:
            if self._eof:
                return self._reader.flush(final=True)
            data: bytes | bytearray | None
            if self._reader.has_fragment:
                data = None
                with trio.move_on_after(self._pause):
                    data = await self.stream.receive_some()
                if data is None:
                    fragment = self._reader.flush()
                    if fragment is not None:
                        return fragment
                    continue
            else:
                data = await self.stream.receive_some()
            if not data:
                self._eof = True
            else:
                self._lines.extend(self._reader.feed(bytes(data)))
        return self._lines.popleft()

    async def send_line(self, line: str) -> None:
        await self.stream.send_all((line + "\n").encode())

    async def request(self, line: str) -> str:
        """Send one line and return its reply.  LISTAR's reply is its header
        and rows joined by newlines.  Raises :class:`ConnectionClosed` if the
        server closes first."""
        await self.send_line(line)
        reply = await self._expect_line()
        if is_listing_command(line):
            count = parse_listing_header(reply) or 0
            rows = [await self._expect_line() for _ in range(count)]
            reply = "\n".join([reply, *rows])
        return reply

    async def _expect_line(self) -> str:
        line = await self.receive_line()
        if line is None:
            raise ConnectionClosed("the server closed the connection")
        return line

    async def aclose(self) -> None:
        await self.stream.aclose()


@asynccontextmanager
async def connect(
    host: str = "localhost", port: int = 5000, *, pause: float = DEFAULT_PAUSE
) -> AsyncIterator[Client]:
    """Connect, read the greeting line into ``client.greeting``, and close on
    exit.  Raises OSError when the server cannot be reached."""
    stream = await trio.open_tcp_stream(host, port)
    client = Client(stream, pause=pause)
    try:
        client.greeting = await client.receive_line()
        yield client
    finally:
        await trio.aclose_forcefully(stream)


class SessionEnd(enum.Enum):
    #: We asked to close (APAGAR, DESCONEXION or end of input) and the server did.
    CLOSED = "closed"
    #: The server closed while the user could still type.
    SERVER_CLOSED = "server closed"
    #: We asked to close but the server kept the connection open too long.
    TIMED_OUT = "timed out"


async def run_session(
    client: Client,
    lines: AsyncGenerator[str, None],
    show: Callable[[str], None],
    *,
    close_wait: float = DEFAULT_CLOSE_WAIT,
) -> SessionEnd:
    """Send the user's ``lines`` and ``show`` every server line as it comes.

    Ends when the server closes, or ``close_wait`` seconds after we sent
    APAGAR / DESCONEXION or ran out of input (then half-closing, so the
    server answers what it got and closes).
    """
    asked_to_close = False
    server_closed = trio.Event()

    async with trio.open_nursery() as nursery:

        async def show_server_lines() -> None:
            try:
                while (line := await client.receive_line()) is not None:
                    show(line)
            except trio.BrokenResourceError:
                pass  # a reset: the server is gone all the same
            server_closed.set()
            nursery.cancel_scope.cancel()  # stop asking the user for input

        async def send_user_lines() -> None:
            nonlocal asked_to_close
            try:
                async with aclosing(lines):
                    async for line in lines:
                        await client.send_line(line)
                        if is_closing_command(line):
                            break
                    else:
                        await client.stream.send_eof()
            except trio.BrokenResourceError:
                pass  # the reader sees the close and reports it
            else:
                asked_to_close = True
            with trio.move_on_after(close_wait):
                await server_closed.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(show_server_lines)
        nursery.start_soon(send_user_lines)
    if not server_closed.is_set():
        return SessionEnd.TIMED_OUT
    return SessionEnd.CLOSED if asked_to_close else SessionEnd.SERVER_CLOSED


async def run_messages(client: Client, messages: Iterable[str], show: Callable[[str], None]) -> None:
    """Send ``messages`` one at a time and show each reply (script mode).

    Raises :class:`ConnectionClosed` if the server closes before a reply."""
    for message in messages:
        show(await client.request(message))
        if is_closing_command(message):
            return
