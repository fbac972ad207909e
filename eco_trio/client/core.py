"""The eco_trio client: a small async API and the sessions the CLI runs.

API::

    async with eco_trio.connect("localhost", 5000) as conn:
        assert await conn.request("hola") == "HOLA"

:func:`connect` raises :class:`ServerRefused` when the server greets with an
``ERROR`` line (a full server, say).  A request that is cancelled or fails
midway leaves the connection unusable: its reply may still be on the way,
so the next request would read it and fall out of step for good (redis-py's
CVE-2023-28858 class of bug).  Any later use raises :class:`ClientUnusable`;
open a new connection instead.

Sessions: :func:`run_piped` pairs a sender of piped input (in large
chunks) with a reader of the socket in one nursery, so server lines
(replies, the shutdown notice another client caused) are shown the moment
they arrive; the interactive session (``eco_trio.interactive``) does the same
for what the user types.  Both work
with servers that never end their lines (the original project's server):
what such a server sends is shown after a short pause, one reply per line.
"""

from __future__ import annotations

import enum
import math
import ssl
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable
from contextlib import aclosing, asynccontextmanager

import trio

from eco_trio.transport.tls import describe
from eco_trio.wire.protocol import LineReader, is_closing_command, parse_reply_header, reply_header

#: Silence after which a server's unterminated output is shown as a line.
DEFAULT_PAUSE = 0.1
#: How long to wait for the server to close once we asked it to (APAGAR,
#: DESCONEXION, end of input).
DEFAULT_CLOSE_WAIT = 5.0
#: How long connecting, and each reply in script mode, may take.
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_REPLY_TIMEOUT = 10.0
_CHUNK = 64 * 1024
#: Over TLS (no half-close), input is over and the replies are all in once
#: the server has sent nothing for this long.
QUIET = 0.5


class ConnectionClosed(Exception):
    """The server closed the connection before answering."""


class ServerRefused(ConnectionClosed):
    """The server greeted with an ``ERROR`` line instead of a greeting (it
    is full, say); ``line`` is what it said."""

    def __init__(self, line: str) -> None:
        super().__init__(line)
        self.line = line


class HandshakeFailed(ConnectionClosed):
    """The TLS handshake failed; the message says which check, for which name."""


class ClientUnusable(RuntimeError):
    """A request was cancelled or failed midway: its reply may still come,
    so this connection can no longer tell which reply is whose."""


class Client:
    """A connection to an eco_trio server (or anything line-oriented).

    Lines the server leaves unterminated still arrive: after ``pause``
    seconds without more data, the fragment counts as a line.
    """

    def __init__(self, stream: trio.abc.Stream, *, pause: float = DEFAULT_PAUSE) -> None:
        self.stream = stream
        self.greeting: str | None = None
        #: False once the server has shown that it does not end its lines
        #: (a line came out after a pause rather than at a newline).
        self.terminates_lines = True
        self._pause = pause
        self._reader = LineReader()
        self._lines: deque[str] = deque()
        self._eof = False
        self._unusable: str | None = None
        self.last_data_at = trio.current_time()

    async def receive_line(self) -> str | None:
        """The next line from the server; None once it has closed."""
        while not self._lines:
            if self._eof:
                return self._reader.flush(final=True)
            data: bytes | bytearray | None
            if self._reader.has_fragment:
                data = None
                with trio.move_on_after(self._pause):
                    data = await self.stream.receive_some(_CHUNK)
                if data is None:
                    fragment = self._reader.flush()
                    if fragment is not None:
                        self.terminates_lines = False
                        return fragment
                    continue
            else:
                data = await self.stream.receive_some(_CHUNK)
            if not data:
                self._eof = True
            else:
                self.last_data_at = trio.current_time()
                self._lines.extend(self._reader.feed(bytes(data)))
        return self._lines.popleft()

    async def finish_sending(self) -> bool:
        """Tell the server we have nothing more to send (half-close), so it
        answers what it got and closes.  False where the stream cannot
        half-close (TLS): see :meth:`until_quiet`."""
        if not isinstance(self.stream, trio.abc.HalfCloseableStream):
            return False
        await self.stream.send_eof()
        return True

    async def until_quiet(self, quiet: float, limit: float) -> None:
        """Until the server has sent nothing for ``quiet`` seconds (at most
        ``limit`` seconds): how a client that cannot half-close knows the
        replies are all in."""
        self.last_data_at = max(self.last_data_at, trio.current_time())
        with trio.move_on_after(limit):
            # The deadline moves each time data arrives; no event to wait on.
            while (left := self.last_data_at + quiet - trio.current_time()) > 0:  # noqa: ASYNC110
                await trio.sleep(left)

    async def receive_lines(self) -> list[str] | None:
        """Every line that is ready (waiting for at least one); None once the
        server has closed.  For showing a fast stream of replies in bulk."""
        first = await self.receive_line()
        if first is None:
            return None
        lines = [first, *self._lines]
        self._lines.clear()
        return lines

    async def send_line(self, line: str) -> None:
        """Send ``line`` and a newline.  Text that came from bytes that were
        not UTF-8 (argv, surrogateescape) goes out as those bytes."""
        await self.stream.send_all((line + "\n").encode("utf-8", "surrogateescape"))

    async def request(self, line: str) -> str:
        """Send one line and return its reply; for LISTAR, every line of the
        reply joined by newlines.  Raises :class:`ConnectionClosed` if the
        server closes first, :class:`ClientUnusable` after a request that
        did not finish."""
        return "\n".join(await self.request_lines(line))

    async def request_lines(self, line: str) -> list[str]:
        """Like :meth:`request`, as a list of lines."""
        if self._unusable is not None:
            raise ClientUnusable(self._unusable)
        try:
            await self.send_line(line)
            reply = [await self._expect_line()]
            if (word := reply_header(line)) is not None:
                count = parse_reply_header(reply[0], word)
                if count is not None:  # eco_trio's own header says how many lines follow
                    reply += [await self._expect_line() for _ in range(count)]
                elif not reply[0].startswith("ERROR"):  # another server: all it sends before a pause
                    reply += await self._lines_until_quiet()
            elif not self.terminates_lines:  # a server that may split its reply at will
                reply += await self._lines_until_quiet()
            return reply
        except BaseException as exc:
            if not isinstance(exc, ConnectionClosed):
                self._unusable = (
                    f"a request ({line!r}) did not finish ({type(exc).__name__}), so its reply may "
                    "still come: open a new connection"
                )
            raise

    async def _lines_until_quiet(self) -> list[str]:
        """Every line the server sends before it pauses; a fragment left at
        the pause is one of them (a server that does not end its lines
        would otherwise glue it to the next reply)."""
        lines: list[str] = []
        while True:
            line: str | None = None
            with trio.move_on_after(self._pause * 2):
                line = await self.receive_line()
            if line is None:
                if (fragment := self._reader.flush(final=True)) is not None:
                    self.terminates_lines = False
                    lines.append(fragment)
                return lines
            lines.append(line)

    async def _expect_line(self) -> str:
        line = await self.receive_line()
        if line is None:
            raise ConnectionClosed("the server closed the connection")
        return line

    async def aclose(self) -> None:
        await self.stream.aclose()


async def open_client(
    host: str,
    port: int,
    *,
    pause: float = DEFAULT_PAUSE,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    token: bytes | None = None,
    greeting_timeout: float | None = None,
) -> Client:
    """Connect (over TLS with ``ssl_context``, checking the certificate
    against ``server_hostname``, by default ``host``) and read the greeting,
    within ``connect_timeout`` seconds.  With ``token``, the session proves
    it first (``AUTENTICAR``, as redis-cli does with ``-a``/``REDISCLI_AUTH``),
    so LISTAR, ESTADO and DESCONEXION need no token on their lines; a
    server without a token is talked to all the same.  ``greeting_timeout``
    bounds the wait for the greeting alone (trio.TooSlowError): a TLS port
    says nothing to a plain-text client.
    Raises OSError when the server cannot be reached, trio.TooSlowError on
    timeout, :class:`ServerRefused` when it greets with an ERROR line, and
    :class:`ConnectionClosed` when it closes without a word."""
    with trio.fail_after(connect_timeout):
        stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
        try:
            if ssl_context is not None:
                name = server_hostname or host
                stream = trio.SSLStream(stream, ssl_context, server_hostname=name)
                try:
                    await stream.do_handshake()
                except trio.BrokenResourceError as exc:
                    raise HandshakeFailed(f"{describe(exc)} (server name {name})") from exc
            client = Client(stream, pause=pause)
            try:
                with trio.fail_after(math.inf if greeting_timeout is None else greeting_timeout):
                    greeting = await client.receive_line()
            except trio.BrokenResourceError as exc:  # TLS 1.3: a refused certificate shows here
                raise ConnectionClosed(f"the connection broke before the greeting: {describe(exc)}") from exc
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
    if greeting is None or greeting.startswith("ERROR"):
        await trio.aclose_forcefully(stream)
        if greeting is None:
            raise ConnectionClosed("the server closed the connection without a greeting")
        raise ServerRefused(greeting)
    client.greeting = greeting
    if token is not None:
        await _authenticate(client, token, connect_timeout)
    return client


#: What a server without a token answers AUTENTICAR: nothing to prove.
_NO_TOKEN_NEEDED = "ERROR este servidor no tiene token"


async def _authenticate(client: Client, token: bytes, within: float) -> None:
    try:
        with trio.fail_after(within):
            await client.stream.send_all(b"AUTENTICAR " + token + b"\n")
            reply = await client.receive_line()
    except BaseException:
        await trio.aclose_forcefully(client.stream)
        raise
    if reply is None or (reply.startswith("ERROR") and not reply.startswith(_NO_TOKEN_NEEDED)):
        await trio.aclose_forcefully(client.stream)
        raise ServerRefused(reply or "the server closed the connection when given the token")


@asynccontextmanager
async def connect(
    host: str = "localhost",
    port: int = 5000,
    *,
    pause: float = DEFAULT_PAUSE,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    token: bytes | None = None,
) -> AsyncIterator[Client]:
    """:func:`open_client` as a context manager that closes on exit."""
    client = await open_client(
        host,
        port,
        pause=pause,
        connect_timeout=connect_timeout,
        ssl_context=ssl_context,
        server_hostname=server_hostname,
        token=token,
    )
    try:
        yield client
    finally:
        await trio.aclose_forcefully(client.stream)


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
