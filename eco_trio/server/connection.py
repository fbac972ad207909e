"""One client's conversation with the server.

The connection task reads, feeds the sans-IO protocol and writes the replies
itself: one write per read, however many lines that read completed.  The
usual read (whole ordinary lines) takes the protocol's quick reply: bytes
back, no events.

A cancel scope is taken only while a timer runs (the partial-line pause, an
idle timeout) or where the stream cannot interrupt its own read; otherwise a
shutdown wakes a waiting read through the stream's interrupter.  The
per-message path then touches no scope and no clock beyond one
``current_time()`` for LISTAR's idle column.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Protocol

import trio

from eco_trio.server.registry import ClientEntry, Registry, listing_rows
from eco_trio.server.stats import Totals
from eco_trio.transport.socket_stream import (
    ReceiveInterrupted,
    SendTimeout,
    close_at_once,
    receive_interrupter,
)
from eco_trio.wire import protocol
from eco_trio.wire.protocol import (
    Authenticate,
    Close,
    Event,
    ForeignProtocol,
    ListClients,
    Reply,
    ServerProtocol,
    Shutdown,
    Status,
)

#: A reply the server decides: its lines, and why the conversation ends (None: it goes on).
Answer = tuple[list[str], str | None]


class Limits(Protocol):
    """The settings a conversation reads."""

    @property
    def max_line(self) -> int: ...
    @property
    def pause(self) -> float: ...


class Host(Protocol):
    """What a conversation may ask of its server: its limits, the registry
    and counters it updates, and the decisions that need the server's state
    (who may list, see the counters, authenticate, shut down).  The server
    (``core.Server``) is one; a test can be another.  Depending on this, not
    on the server, keeps the conversation free of the server's module."""

    registry: Registry
    totals: Totals
    #: The idle timeout in force (None: never).
    idle_timeout: float | None

    @property
    def config(self) -> Limits: ...
    @property
    def shutting_down(self) -> bool: ...
    def clock(self) -> Callable[[], float]: ...
    def connection_ended(self, entry: ClientEntry) -> None: ...
    def listing_refusal(self, entry: ClientEntry) -> str | None: ...
    def status_lines(self, entry: ClientEntry, token: bytes | None) -> tuple[list[str], str | None]: ...
    def authenticate(self, entry: ClientEntry, token: bytes | None) -> tuple[list[str], str | None]: ...
    def shutdown_requested_by(
        self, entry: ClientEntry, token: bytes | None
    ) -> tuple[list[str], str | None]: ...


log = logging.getLogger("eco_trio.server")

RECEIVE_SIZE = 64 * 1024
#: After we close our side we keep reading (and dropping) what the client
#: still sends, so unread data does not turn our close into a reset that could
#: destroy the goodbye line before the client reads it (nginx's lingering
#: close).  At most LINGER_SECONDS and LINGER_BYTES in all, and we stop as
#: soon as the client is quiet for LINGER_QUIET: a client that sends nothing
#: more costs only that pause, however long it keeps its socket open.
LINGER_SECONDS = 1.0
LINGER_QUIET = 0.2
LINGER_BYTES = 256 * 1024

#: LISTAR rows formatted and sent per part: about 50 KiB, one turn's worth
#: (protocol.TURN_OUTPUT), so a listing of many clients is never built whole.
LISTING_PART = 1024

_GREETING = protocol.encode_line(protocol.GREETING)


class _Unscoped:
    """Stands in for the conversation's cancel scope where none is taken (no
    timer runs, and the stream can interrupt its own read)."""

    __slots__ = ()
    deadline: float = math.inf  # never set: a timer runs only with a real scope

    def __enter__(self) -> _Unscoped:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None


_UNSCOPED = _Unscoped()


async def serve_connection(server: Host, stream: trio.abc.HalfCloseableStream, entry: ClientEntry) -> None:
    """Talk to one admitted client until either side ends it.

    Resource handling: always closes ``stream`` and unregisters ``entry``.
    Error handling: a client that vanishes (reset, broken pipe, send
    timeout) ends only its own conversation, logged at DEBUG; any other
    exception is logged with its traceback at ERROR and also ends only this
    conversation.
    """
    registry = server.registry
    linger = True
    try:
        linger = await _converse(server, stream, entry)
    except SendTimeout as exc:
        # The output bound at work: this client stopped taking its replies.
        entry.end_reason, entry.end_detail = "send timeout", str(exc)
        linger = False
    except trio.BrokenResourceError as exc:
        entry.end_reason, entry.end_detail = "connection broken", str(exc)
        linger = False
    except Exception:
        # A bug must not take every other client down with this one.
        log.exception("%s: unexpected error; closing this connection", entry.address)
        entry.end_reason = "internal error"
        linger = False
    finally:
        registry.unregister(entry)
        server.connection_ended(entry)
        if linger:
            await _close_gracefully(stream)
        else:
            await close_at_once(stream)


async def _converse(server: Host, stream: trio.abc.HalfCloseableStream, entry: ClientEntry) -> bool:
    """The request loop; returns whether to linger on close (we are the side
    that closes, and the peer may still be sending)."""
    config = server.config
    parser = ServerProtocol(config.max_line, commands=server.totals.commands)
    entry.protocol = parser
    # Bound methods every message uses, looked up once.  (An idle
    # connection keeps each one: 64 bytes; send_all is looked up when used.)
    receive_some = stream.receive_some
    current_time = server.clock()
    pause, idle = config.pause, server.idle_timeout
    timers = idle is not None  # (besides the pause, while a fragment waits)
    # A cancel scope costs a connection about 0.8 KiB and 8 µs of CPU
    # (benchmarks/compare: connections/s, held connections): it is taken only
    # while a timer runs, or where the stream cannot be interrupted otherwise.
    interrupter = receive_interrupter(stream)
    # Our sockets send what the kernel takes without a coroutine (see
    # SocketStream.send_nowait); other streams go through send_all.
    send_nowait = getattr(stream, "send_nowait", None)
    if server.shutting_down:
        entry.notify(protocol.encode_line(protocol.SHUTDOWN_NOTICE))
    else:
        await stream.send_all(_GREETING)
    last_data = entry.last_line_at
    while True:
        fragment = parser.has_fragment
        scoped = fragment or timers or interrupter is None
        entry.wake = None if scoped else interrupter
        rescope = False
        with trio.CancelScope() if scoped else _UNSCOPED as scope:
            entry.scope = scope if isinstance(scope, trio.CancelScope) else None
            while not entry.interrupted:
                timed = fragment or timers
                if timed:
                    scope.deadline = min(
                        last_data + pause if fragment else math.inf,
                        entry.last_line_at + idle if idle is not None else math.inf,
                    )
                entry.reading = True
                try:
                    data = await receive_some(RECEIVE_SIZE)
                except ReceiveInterrupted:  # the interrupter: entry.interrupted is set
                    break
                entry.reading = False
                if timed:
                    scope.deadline = math.inf
                if not data and parser.quick_close():  # the client closed, and nothing is held
                    _note_close(entry, "end of input")
                    return False  # it closed first: no lingering
                entry.bytes_in += len(data)
                # (At end of input, a fragment still held is answered as a line.)
                lines = data.count(b"\n") if data else int(fragment)
                entry.lines_in += lines
                reply = parser.quick_reply(data)
                if reply is not None:
                    # The usual read, whole ordinary lines: one reply line
                    # each, in one write, without events or a call.
                    entry.last_line_at = current_time()
                    entry.bytes_out += len(reply)
                    entry.lines_out += lines
                    if send_nowait is None:
                        await stream.send_all(reply)
                    elif (sent := send_nowait(reply)) < len(reply):
                        await stream.send_all(memoryview(reply)[sent:])
                    # An idle connection keeps nothing of its last batch;
                    # nothing is held or left over after a quick reply.
                    del data, reply
                    continue
                events = parser.receive_data(data)
                if data and lines:  # the idle timeout counts complete lines only
                    entry.last_line_at = current_time()
                if events and (end := await _answer(server, stream, entry, events, eof=not data)) is not None:
                    return end
                if parser.has_backlog:
                    # The parser holds what is left to answer: drop our
                    # references to the read and the first turn's replies
                    # while a client that does not read keeps us waiting.
                    data, events = b"", []
                    if (end := await _work_off(server, stream, entry, parser)) is not None:
                        return end
                # While it waits for the next read, an idle connection must
                # not keep its last batch (the read, the reply) alive.
                del data, events
                fragment = parser.has_fragment
                if fragment:
                    last_data = current_time()
                    if not scoped:  # the pause timer needs a scope
                        rescope = True
                        break
        entry.reading = False
        if entry.interrupted:
            entry.end_reason = "server shutting down"
            for line in entry.pending_notices():
                await stream.send_all(line)
            return True
        if rescope:
            continue
        # A timer fired.  The idle timeout ends the conversation; the pause
        # answers the buffered fragment as a line.
        if idle is not None and current_time() >= entry.last_line_at + idle:
            entry.end_reason, entry.end_detail = "idle timeout", f"no line for {idle:g} s (--idle-timeout)"
            entry.closing = True
            notice = f"AVISO: {idle:g} s sin recibir una línea; conexión cerrada."
            await stream.send_all(protocol.encode_line(notice))
            return True
        events = parser.flush_fragment()
        # A fragment kept back (it ends in a cut UTF-8 character) gets one
        # more pause.
        last_data = current_time()
        if events:  # the fragment, answered as a line (not a complete one: no idle credit)
            entry.lines_in += 1
            if (end := await _answer(server, stream, entry, events, eof=False)) is not None:
                return end
        del events


async def _work_off(
    server: Host, stream: trio.abc.HalfCloseableStream, entry: ClientEntry, parser: ServerProtocol
) -> bool | None:
    """Answer the rest of a read turn by turn, letting every other task run
    between turns: one client's pipelined commands cannot hold the server.
    Nothing new is read meanwhile, so what the client sends waits in the
    kernel, and a client that does not read its replies blocks here, with
    at most one turn's output built, until the send timeout."""
    while parser.has_backlog and not entry.interrupted:
        await trio.lowlevel.checkpoint()
        events = parser.next_events()
        if (end := await _answer(server, stream, entry, events, eof=False)) is not None:
            return end
    return None


async def _answer(
    server: Host,
    stream: trio.abc.HalfCloseableStream,
    entry: ClientEntry,
    events: list[Event],
    *,
    eof: bool,
) -> bool | None:
    """Send the replies ``events`` call for.  Returns None while the
    conversation goes on; once it is over, whether to linger on close."""
    out: list[bytes] = []
    for event in events:
        match event:
            case Reply(data=data):
                out.append(data)
            case ListClients():
                if (refusal := server.listing_refusal(entry)) is not None:
                    out.append(protocol.encode_line(refusal))
                    continue
                await _send_listing(server, stream, entry, b"".join(out))
                out = []
            case Shutdown(token=token):
                lines, end = server.shutdown_requested_by(entry, token)
                if (done := await _reply(stream, entry, out, lines, end)) is not None:
                    return done
            case Status(token=token):
                lines, end = server.status_lines(entry, token)
                if (done := await _reply(stream, entry, out, lines, end)) is not None:
                    return done
            case Authenticate(token=token):
                lines, end = server.authenticate(entry, token)
                if (done := await _reply(stream, entry, out, lines, end)) is not None:
                    return done
            case ForeignProtocol(name=name):
                level, hint = _FOREIGN.get(name, (logging.WARNING, "a client of another protocol"))
                log.log(level, "%s: closed: it spoke %s to this line server (%s)", entry.address, name, hint)
                server.totals.refused[name if name == "HTTP" else f"{name} on the plain port"] += 1
                entry.end_reason = f"{name} spoken"
                entry.closing = True
                if out:
                    await _send(stream, entry, b"".join(out))
                return False  # not one more byte: no lingering either
            case Close(reason=reason):
                _note_close(entry, reason)
                if out:
                    await _send(stream, entry, b"".join(out))
                return not eof  # at end of input the client closed first
    if out:
        await _send(stream, entry, b"".join(out))
    return None


async def _reply(
    stream: trio.abc.HalfCloseableStream,
    entry: ClientEntry,
    out: list[bytes],
    lines: list[str],
    end: str | None,
) -> bool | None:
    """Send what ``out`` holds and ``lines``, now (their cost and order
    depend on the server); ``out`` is emptied.  When ``end`` says why the
    conversation ends, returns True (linger on close)."""
    data = b"".join(out) + protocol.encode_lines(lines)
    out.clear()
    if end is not None:
        entry.end_reason, entry.closing = end, True
    await _send(stream, entry, data)
    return True if end is not None else None


def _note_close(entry: ClientEntry, reason: str) -> None:
    """The conversation is ending for ``reason`` (a :class:`Close`'s)."""
    entry.closing = True
    entry.end_reason = "the client closed" if reason == "end of input" else reason


async def _send(stream: trio.abc.HalfCloseableStream, entry: ClientEntry, data: bytes) -> None:
    _count_out(entry, data)
    await stream.send_all(data)


def _count_out(entry: ClientEntry, data: bytes) -> None:
    entry.bytes_out += len(data)
    entry.lines_out += data.count(b"\n")


#: How each foreign protocol is logged: HTTP is how a web page would attack
#: a loopback server (a WARNING, as Redis does); TLS here is a client set up
#: for another port.
_FOREIGN = {
    "HTTP": (logging.WARNING, "a web page or HTTP client; a browser page could otherwise send DESCONEXION"),
    "TLS": (logging.INFO, "a TLS client on the plain-text port"),
}


async def _send_listing(
    server: Host, stream: trio.abc.HalfCloseableStream, entry: ClientEntry, before: bytes
) -> None:
    """LISTAR's reply in parts of LISTING_PART rows, each sent before the
    next is built, with a turn for everyone else between parts: its cost
    grows with the number of clients, and must not stall them."""
    entries = server.registry.snapshot()
    now = trio.current_time()
    # The replies before LISTAR in the same read are counted before the
    # requester's own row shows its counts.
    _count_out(entry, before)
    header = protocol.encode_line(f"{protocol.LISTING_HEADER} {len(entries)}")
    for start in range(0, len(entries) or 1, LISTING_PART):
        if start:
            await trio.lowlevel.checkpoint()
        rows = listing_rows(entries[start : start + LISTING_PART], entry, now)
        part = header + protocol.encode_lines(rows)
        _count_out(entry, part)
        await stream.send_all(before + part)
        before = header = b""


async def _close_gracefully(stream: trio.abc.HalfCloseableStream) -> None:
    """Half-close, drain what the client still sends (bounded), then close."""
    try:
        with trio.move_on_after(LINGER_SECONDS):
            await stream.send_eof()  # over TLS: close_notify
            drained = 0
            while drained < LINGER_BYTES:
                chunk: bytes | bytearray = b""
                with trio.move_on_after(LINGER_QUIET):
                    chunk = await stream.receive_some(RECEIVE_SIZE)
                if not chunk:
                    break
                drained += len(chunk)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await close_at_once(stream)
