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
from collections.abc import AsyncIterator, Callable
from typing import Protocol

import trio

from eco_trio.server.handle import ConnectionHandle
from eco_trio.server.registry import ClientEntry, Registry
from eco_trio.server.stats import Totals
from eco_trio.transport.conduit import Conduit, conduit
from eco_trio.transport.scheduling import schedule_point
from eco_trio.transport.socket_stream import CANCEL_POINT_EVERY, ReceiveInterrupted, SendTimeout
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
    @property
    def proxy_protocol(self) -> bool: ...


class Host(Protocol):
    """What a conversation may ask of its server: its limits, the registry
    and counters it updates, and the decisions that need the server's state
    (who may list, see the counters, authenticate, shut down).  The server's
    :class:`~eco_trio.server.control.Control` is one; a test can be another.
    Depending on this, not on the server, keeps the conversation free of
    the server's modules."""

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
    def status_lines(self, entry: ClientEntry, token: bytes | None) -> Answer: ...
    async def listing(self, requester: ClientEntry) -> tuple[str, AsyncIterator[list[str]]]: ...
    def authenticate(self, entry: ClientEntry, token: bytes | None) -> Answer: ...
    async def shutdown_requested_by(self, entry: ClientEntry, token: bytes | None) -> Answer: ...


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


async def serve_connection(host: Host, stream: trio.abc.HalfCloseableStream, entry: ClientEntry) -> None:
    """Talk to one admitted client until either side ends it.

    Resource handling: always closes ``stream`` and unregisters ``entry``.
    Error handling: a client that vanishes (reset, broken pipe, send
    timeout) ends only its own conversation, logged at DEBUG; any other
    exception is logged with its traceback at ERROR and also ends only this
    conversation.
    """
    registry = host.registry
    link = conduit(stream)
    linger = True
    try:
        linger = await _converse(host, link, entry)
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
        host.connection_ended(entry)
        if linger:
            await _close_gracefully(link)
        else:
            await link.close_at_once()


async def _converse(host: Host, link: Conduit, entry: ClientEntry) -> bool:
    """The request loop; returns whether to linger on close (we are the side
    that closes, and the peer may still be sending).

    The inner loop is the hot path, kept in this one frame on purpose: an
    idle connection waits in it, and every frame it waits under costs
    memory.  What is rarer (a read the quick reply cannot take, a timer,
    the interrupt) is handled in the functions below it."""
    handle = host.registry.handle(entry)
    parser = ServerProtocol(
        host.config.max_line, commands=host.totals.commands, refuse_proxy_headers=host.config.proxy_protocol
    )
    entry.protocol = parser
    # Bound methods every message uses, looked up once.  (An idle
    # connection keeps each one: 64 bytes; send_all is looked up when used.)
    # Where the stream can read without waiting, the loop takes the turn a
    # read owes the other tasks itself and reads at once: no coroutine per
    # message (about 0.6 µs of a pingpong reply's CPU, benchmarks/compare).
    receive_nowait = link.receive_nowait if link.nowait_reads else None
    send_nowait = link.send_nowait
    turns = 0  # a full checkpoint (cancellation) every CANCEL_POINT_EVERY turns
    current_time = host.clock()
    pause, idle = host.config.pause, host.idle_timeout
    # A cancel scope costs a connection about 0.8 KiB and 8 µs of CPU
    # (benchmarks/compare: connections/s, held connections): it is taken only
    # while a timer runs (an idle timeout, a fragment's pause), or where the
    # stream cannot be interrupted otherwise.
    interrupter = link.receive_interrupter()
    always_scoped = idle is not None or interrupter is None
    await _greet(host, link, handle)
    last_data = entry.last_line_at
    while True:
        fragment = parser.has_fragment
        scoped = fragment or always_scoped
        handle.wake = None if scoped else interrupter
        rescope = False
        with trio.CancelScope() if scoped else _UNSCOPED as scope:
            handle.scope = scope if scoped else None  # type: ignore[assignment]
            while not handle.interrupted:
                if timed := fragment or idle is not None:
                    scope.deadline = _deadline(entry, last_data if fragment else None, pause, idle)
                data = None
                if receive_nowait is not None:
                    turns = (turns + 1) % CANCEL_POINT_EVERY  # (small ints: nothing allocated)
                    if turns:
                        await schedule_point()
                    else:
                        await trio.lowlevel.checkpoint()
                    if handle.interrupted:  # a notice came meanwhile: read no more
                        break
                    data = receive_nowait(RECEIVE_SIZE)
                if data is None:
                    handle.reading = True
                    try:
                        data = await link.receive_some(RECEIVE_SIZE)
                    except ReceiveInterrupted:  # the interrupter: handle.interrupted is set
                        break
                    handle.reading = False
                if timed:
                    scope.deadline = math.inf
                if not data and parser.quick_close():  # the client closed, and nothing is held
                    _note_close(entry, handle, "end of input")
                    return False  # it closed first: no lingering
                entry.bytes_in += len(data)
                # (At end of input, a fragment still held is answered as a line.)
                lines = data.count(b"\n") if data else int(fragment)
                entry.lines_in += lines
                reply = parser.quick_reply(data, lines)
                if reply is not None:
                    # The usual read, whole ordinary lines: one reply line
                    # each, in one write, without events or a call.
                    entry.last_line_at = current_time()
                    entry.bytes_out += len(reply)
                    entry.lines_out += lines
                    if (sent := send_nowait(reply)) < len(reply):
                        await link.send_all(memoryview(reply)[sent:] if sent else reply)
                    # An idle connection keeps nothing of its last batch;
                    # nothing is held or left over after a quick reply.
                    del data, reply
                    continue
                end = await _answer_read(host, link, entry, handle, data, lines)
                del data  # an idle connection must not keep its last read alive
                if end is not None:
                    return end
                fragment = parser.has_fragment
                if fragment:
                    last_data = current_time()
                    if not scoped:  # the pause timer needs a scope
                        rescope = True
                        break
        handle.reading = False
        if handle.interrupted:
            return await _deliver_notices(link, entry, handle)
        if rescope:
            continue
        end = await _timer_fired(host, link, entry, handle, parser)
        if end is not None:
            return end
        last_data = current_time()  # a fragment kept back gets one more pause


def _deadline(entry: ClientEntry, last_data: float | None, pause: float, idle: float | None) -> float:
    """When the read's timer fires: the pause after a fragment's last data
    (None: no fragment), or the idle timeout."""
    return min(
        last_data + pause if last_data is not None else math.inf,
        entry.last_line_at + idle if idle is not None else math.inf,
    )


async def _greet(host: Host, link: Conduit, handle: ConnectionHandle) -> None:
    """The greeting, or, once shutdown has begun, the shutdown notice (the
    conversation then delivers it and closes at its first read)."""
    if host.shutting_down:
        handle.notify(protocol.encode_line(protocol.SHUTDOWN_NOTICE))
    else:
        await link.send_all(_GREETING)


async def _answer_read(
    host: Host,
    link: Conduit,
    entry: ClientEntry,
    handle: ConnectionHandle,
    data: bytes | bytearray,
    lines: int,
) -> bool | None:
    """A read the quick reply could not take (commands, a fragment, a long
    line, end of input): through the parser's events.  Returns None while
    the conversation goes on; once it is over, whether to linger."""
    parser = entry.protocol
    assert parser is not None  # set by _converse
    events = parser.receive_data(data)
    if data and lines:  # the idle timeout counts complete lines only
        entry.last_line_at = host.clock()()
    if events and (end := await _answer(host, link, entry, handle, events, eof=not data)) is not None:
        return end
    if parser.has_backlog:
        # The parser holds what is left to answer: drop our references to
        # the read and the first turn's replies while a client that does
        # not read keeps us waiting.
        del data, events
        return await _work_off(host, link, entry, handle, parser)
    return None


async def _timer_fired(
    host: Host, link: Conduit, entry: ClientEntry, handle: ConnectionHandle, parser: ServerProtocol
) -> bool | None:
    """The read's timer fired.  The idle timeout ends the conversation (the
    client is told why); the pause answers the buffered fragment as a line."""
    idle = host.idle_timeout
    if idle is not None and host.clock()() >= entry.last_line_at + idle:
        entry.end_reason, entry.end_detail = "idle timeout", f"no line for {idle:g} s (idle_timeout)"
        handle.closing = True
        notice = f"AVISO: {idle:g} s sin recibir una línea; conexión cerrada."
        await link.send_all(protocol.encode_line(notice))
        return True
    # A fragment kept back (it ends in a cut UTF-8 character) gets one more pause.
    events = parser.flush_fragment()
    if events:  # the fragment, answered as a line (not a complete one: no idle credit)
        entry.lines_in += 1
        return await _answer(host, link, entry, handle, events, eof=False)
    return None


async def _deliver_notices(link: Conduit, entry: ClientEntry, handle: ConnectionHandle) -> bool:
    """Interrupted: the server is shutting down.  Send what its outbox holds
    (the notice); then linger on close."""
    entry.end_reason = "server shutting down"
    for line in handle.pending_notices():
        await link.send_all(line)
    return True


async def _work_off(
    host: Host, link: Conduit, entry: ClientEntry, handle: ConnectionHandle, parser: ServerProtocol
) -> bool | None:
    """Answer the rest of a read turn by turn, letting every other task run
    between turns: one client's pipelined commands cannot hold the server.
    Nothing new is read meanwhile, so what the client sends waits in the
    kernel, and a client that does not read its replies blocks here, with
    at most one turn's output built, until the send timeout."""
    while parser.has_backlog and not handle.interrupted:
        await trio.lowlevel.checkpoint()
        events = parser.next_events()
        if (end := await _answer(host, link, entry, handle, events, eof=False)) is not None:
            return end
    return None


async def _answer(
    host: Host,
    link: Conduit,
    entry: ClientEntry,
    handle: ConnectionHandle,
    events: list[Event],
    *,
    eof: bool,
) -> bool | None:
    """Send the replies ``events`` call for, in order, in as few writes as
    their order allows.  Returns None while the conversation goes on; once
    it is over, whether to linger on close."""
    out: list[bytes] = []
    for event in events:
        match event:
            case Reply(data=data):
                out.append(data)
            case ListClients():
                if (refusal := host.listing_refusal(entry)) is not None:
                    out.append(protocol.encode_line(refusal))
                    continue
                await _send_listing(host, link, entry, b"".join(out))
                out = []
            case Shutdown() | Status() | Authenticate():
                # Their replies depend on the server's state now: sent now.
                lines, end = await _decide(host, entry, event)
                data = b"".join(out) + protocol.encode_lines(lines)
                out = []
                if end is not None:
                    entry.end_reason, handle.closing = end, True
                await _send(link, entry, data)
                if end is not None:
                    return True
            case ForeignProtocol(name=name):
                level, hint = _FOREIGN.get(name, (logging.WARNING, "a client of another protocol"))
                log.log(level, "%s: closed: it spoke %s to this line server (%s)", entry.address, name, hint)
                host.totals.refused[_REFUSED_AS.get(name, f"{name} on the plain port")] += 1
                entry.end_reason = f"{name} spoken"
                handle.closing = True
                await _send(link, entry, b"".join(out))
                return False  # not one more byte: no lingering either
            case Close(reason=reason):
                _note_close(entry, handle, reason)
                await _send(link, entry, b"".join(out))
                return not eof  # at end of input the client closed first
    await _send(link, entry, b"".join(out))
    return None


async def _decide(host: Host, entry: ClientEntry, event: Shutdown | Status | Authenticate) -> Answer:
    """The server's decision on a command that needs its state."""
    if isinstance(event, Shutdown):
        return await host.shutdown_requested_by(entry, event.token)
    if isinstance(event, Status):
        return host.status_lines(entry, event.token)
    return host.authenticate(entry, event.token)


def _note_close(entry: ClientEntry, handle: ConnectionHandle, reason: str) -> None:
    """The conversation is ending for ``reason`` (a :class:`Close`'s)."""
    handle.closing = True
    entry.end_reason = "the client closed" if reason == "end of input" else reason


async def _send(link: Conduit, entry: ClientEntry, data: bytes) -> None:
    if data:
        _count_out(entry, data)
        await link.send_all(data)


def _count_out(entry: ClientEntry, data: bytes) -> None:
    entry.bytes_out += len(data)
    entry.lines_out += data.count(b"\n")


#: How each foreign protocol is logged: HTTP is how a web page would attack
#: a loopback server (a WARNING, as Redis does); TLS here is a client set up
#: for another port.
_FOREIGN = {
    "HTTP": (logging.WARNING, "a web page or HTTP client; a browser page could otherwise send DESCONEXION"),
    "TLS": (logging.INFO, "a TLS client on the plain-text port"),
    "PROXY": (logging.WARNING, "a PROXY header from an address that is not a trusted proxy"),
}
#: The refusal counter each foreign protocol goes to (ESTADO's refused_*).
_REFUSED_AS = {"HTTP": "HTTP", "PROXY": "PROXY header"}


async def _send_listing(host: Host, link: Conduit, entry: ClientEntry, before: bytes) -> None:
    """LISTAR's reply, part by part as the host builds them (see
    ``Control.listing``), each sent before the next is built."""
    # The replies before LISTAR in the same read are counted before the
    # requester's own row shows its counts.
    _count_out(entry, before)
    header, parts = await host.listing(entry)
    data = protocol.encode_line(header)
    async for rows in parts:
        data += protocol.encode_lines(rows)
        _count_out(entry, data)
        await link.send_all(before + data)
        before = data = b""
    if data:  # no rows at all: the header alone
        _count_out(entry, data)
        await link.send_all(before + data)


async def _close_gracefully(link: Conduit) -> None:
    """Half-close, drain what the client still sends (bounded), then close."""
    try:
        with trio.move_on_after(LINGER_SECONDS):
            await link.send_eof()  # over TLS: close_notify
            drained = 0
            while drained < LINGER_BYTES:
                chunk: bytes | bytearray = b""
                with trio.move_on_after(LINGER_QUIET):
                    chunk = await link.receive_some(RECEIVE_SIZE)
                if not chunk:
                    break
                drained += len(chunk)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await link.close_at_once()
