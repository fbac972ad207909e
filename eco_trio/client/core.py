"""The eco_trio client's API: :func:`connect`, :func:`open_client` and
:class:`Client` (the sessions the command line runs over it are in
``sessions.py`` and ``interactive.py``).

API::

    async with eco_trio.connect("localhost", 5000) as conn:
        assert await conn.request("hola") == "HOLA"

:func:`connect` raises :class:`ServerRefused` when the server greets with an
``ERROR`` line (a full server, say).  A request that is cancelled or fails
midway leaves the connection unusable: its reply may still be on the way,
so the next request would read it and fall out of step for good (redis-py's
CVE-2023-28858 class of bug).  Any later use raises :class:`ClientUnusable`;
open a new connection instead.
"""

from __future__ import annotations

import math
import ssl
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from eco_trio.transport.tls import describe
from eco_trio.wire.commands import parse_reply_header, reply_header
from eco_trio.wire.lines import LineReader

#: Silence after which a server's unterminated output is shown as a line.
DEFAULT_PAUSE = 0.1
#: How long connecting (and waiting for the greeting) may take.
DEFAULT_CONNECT_TIMEOUT = 10.0
#: The most read from the socket at once.
_CHUNK = 64 * 1024


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
