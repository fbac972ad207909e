"""A lean connection to Redis for a node's own calls: RESP2 over one trio
stream, one request at a time.

Why not coredis here, when coredis is the deployment's Redis client: under
trio, one coredis call costs about 300 µs of CPU (its anyio tasks and
memory streams take several scheduler rounds per call; ``benchmarks/
cluster.py``'s overhead figures, and a loop of 2,000 PINGs).  Admission is
one call per accept batch, so that was about 35 µs more CPU per
connection.  The calls a node makes are few and simple (EVALSHA, ZCARD, a
PING): they go through here, a send and a read each.  coredis keeps the
subscription, where its reconnecting pub/sub earns its place.

The reply parser is sans-IO: :func:`parse` takes bytes and returns a reply
and how many bytes it used, or None for "not complete yet".
"""

from __future__ import annotations

import hashlib
import ssl
from urllib.parse import parse_qs, unquote, urlsplit

import trio


class ReplyError(Exception):
    """Redis answered with an error (``-ERR ...``)."""


Reply = None | int | str | bytes | list["Reply"] | ReplyError


def encode(*args: object) -> bytes:
    """A command as RESP: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def parse(buffer: bytes | bytearray, start: int = 0) -> tuple[Reply, int] | None:
    """One reply from ``buffer`` at ``start``: (the reply, where it ends),
    or None when it has not all arrived.  Bulk strings are decoded as UTF-8
    (what the node stores is text); errors come back as ReplyError values."""
    end = buffer.find(b"\r\n", start)
    if end < 0:
        return None
    kind, line = buffer[start : start + 1], bytes(buffer[start + 1 : end])
    after = end + 2
    if kind == b"+":
        return line.decode(), after
    if kind == b"-":
        return ReplyError(line.decode(errors="replace")), after
    if kind == b":":
        return int(line), after
    if kind == b"$":
        size = int(line)
        if size < 0:
            return None, after
        if len(buffer) < after + size + 2:
            return None
        return bytes(buffer[after : after + size]).decode(errors="replace"), after + size + 2
    if kind == b"*":
        count = int(line)
        if count < 0:
            return None, after
        items: list[Reply] = []
        for _ in range(count):
            parsed = parse(buffer, after)
            if parsed is None:
                return None
            item, after = parsed
            items.append(item)
        return items, after
    raise ReplyError(f"not RESP: {bytes(buffer[start : start + 20])!r}")


class Link:
    """One connection to the Redis at ``url`` (``redis://``, ``rediss://``,
    ``unix://``; a password and ``/db`` or ``?db=`` as redis-cli takes them).
    Connects on first use and again after a failure.

    Error handling: a failure closes the connection and raises OSError,
    trio.BrokenResourceError or ReplyError; callers put a deadline on calls.
    """

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._scheme = parts.scheme
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 6379
        self._path = unquote(parts.path) if parts.scheme == "unix" else ""
        query = parse_qs(parts.query)
        db = query.get("db", [""])[0] or (parts.path.strip("/") if parts.scheme != "unix" else "")
        self._db = int(db) if db.isdigit() else 0
        self._username = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        self._stream: trio.abc.Stream | None = None
        self._buffer = bytearray()
        self._lock = trio.Lock()
        self._loaded: set[str] = set()

    async def call(self, *args: object) -> Reply:
        """One command and its reply; a ReplyError is raised."""
        async with self._lock:
            try:
                reply = await self._round_trip(encode(*args))
            except BaseException:
                await self.aclose()
                raise
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    async def script(self, source: str, *args: object) -> Reply:
        """EVALSHA of ``source`` (EVAL the first time, or after Redis has
        lost its script cache), with ``args`` as ARGV and no KEYS."""
        sha = hashlib.sha1(source.encode()).hexdigest()
        if sha in self._loaded:
            try:
                return await self.call("EVALSHA", sha, 0, *args)
            except ReplyError as exc:
                if not str(exc).startswith("NOSCRIPT"):
                    raise
        reply = await self.call("EVAL", source, 0, *args)
        self._loaded.add(sha)
        return reply

    async def aclose(self) -> None:
        stream, self._stream = self._stream, None
        self._buffer.clear()
        if stream is not None:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    async def _round_trip(self, request: bytes) -> Reply:
        if self._stream is None:
            await self._connect()
        assert self._stream is not None
        await self._stream.send_all(request)
        return await self._read_reply()

    async def _read_reply(self) -> Reply:
        assert self._stream is not None
        while True:
            if self._buffer and (parsed := parse(self._buffer)) is not None:
                reply, used = parsed
                del self._buffer[:used]
                return reply
            data = await self._stream.receive_some(65536)
            if not data:
                raise trio.BrokenResourceError("Redis closed the connection")
            self._buffer += data

    async def _connect(self) -> None:
        stream: trio.abc.Stream
        if self._scheme == "unix":
            stream = await trio.open_unix_socket(self._path)
        else:
            stream = await trio.open_tcp_stream(self._host, self._port)
            if self._scheme == "rediss":
                tls = trio.SSLStream(stream, ssl.create_default_context(), server_hostname=self._host)
                await tls.do_handshake()
                stream = tls
        self._stream = stream
        self._loaded.clear()  # a new server may not have our scripts
        if self._password is not None:
            auth = ("AUTH", self._username, self._password) if self._username else ("AUTH", self._password)
            await self._checked(encode(*auth))
        if self._db:
            await self._checked(encode("SELECT", self._db))

    async def _checked(self, request: bytes) -> None:
        reply = await self._round_trip(request)
        if isinstance(reply, ReplyError):
            raise reply
