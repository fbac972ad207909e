"""One client's conversation with the server.

The connection task reads, feeds the sans-IO protocol and writes the replies
itself: one ``send_all`` per read, however many lines that read completed.

Timers (the partial-line pause and the idle timeout) live on one cancel scope
per conversation whose deadline is moved only while a timer is running; with
no fragment buffered and no idle timeout, the per-message path touches no
scope and no clock beyond one ``current_time()`` for LISTAR's idle column.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import trio

from . import protocol
from .protocol import Close, Event, ListClients, Reply, ServerProtocol, Shutdown
from .registry import ClientEntry
from .socket_stream import SocketStream

if TYPE_CHECKING:
    from .server import Server

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


async def serve_connection(server: Server, stream: trio.abc.HalfCloseableStream, address: str) -> None:
    """Talk to one client until either side ends it.

    Resource handling: always closes ``stream``.  Error handling: a client
    that vanishes (reset, broken pipe, send timeout) ends only its own
    conversation, logged at DEBUG; any other exception is logged with its
    traceback at ERROR and also ends only this conversation.
    """
    registry = server.registry
    entry = registry.register(address, trio.current_time())
    if entry is None:
        server.note_refused(address)
        line = f"ERROR demasiados clientes (máximo {registry.max_clients}); inténtalo más tarde."
        await _say_last_words(stream, protocol.encode_line(line))
        return
    log.info("connected %s (%d clients)", address, len(registry))
    linger = True
    try:
        linger = await _converse(server, stream, entry)
    except trio.BrokenResourceError as exc:
        log.debug("%s: connection broken: %s", address, exc)
        linger = False
    except Exception:
        # A bug must not take every other client down with this one.
        log.exception("%s: unexpected error; closing this connection", address)
        linger = False
    finally:
        registry.unregister(entry)
        log.info("disconnected %s (%d clients)", address, len(registry))
        if linger:
            await _close_gracefully(stream)
        else:
            await _close_now(stream)


async def _converse(server: Server, stream: trio.abc.HalfCloseableStream, entry: ClientEntry) -> bool:
    """The request loop; returns whether we are the side that closes (and so
    should linger)."""
    config = server.config
    parser = ServerProtocol(config.max_line)
    receive_some, send_all = stream.receive_some, stream.send_all
    current_time = trio.lowlevel.current_clock().current_time
    pause, idle = config.pause, config.idle_timeout
    if server.shutting_down:
        entry.notify(protocol.encode_line(protocol.SHUTDOWN_NOTICE))
    else:
        await send_all(_GREETING)
    last_data = entry.last_line_at
    while True:
        with trio.CancelScope() as scope:
            entry.scope = scope
            fragment = parser.has_fragment
            while not entry.interrupted:
                timed = fragment or idle is not None
                if timed:
                    scope.deadline = min(
                        last_data + pause if fragment else math.inf,
                        entry.last_line_at + idle if idle is not None else math.inf,
                    )
                entry.reading = True
                data = await receive_some(RECEIVE_SIZE)
                entry.reading = False
                if timed:
                    scope.deadline = math.inf
                events = parser.receive_data(data)
                if events:
                    entry.last_line_at = current_time()
                    if len(events) == 1 and type(reply := events[0]) is Reply:
                        await send_all(reply.data)  # the common case, without a call
                    elif await _answer(server, stream, entry, events):
                        return bool(data)  # at EOF the client closed first
                fragment = parser.has_fragment
                if fragment:
                    last_data = current_time()
        entry.reading = False
        if entry.interrupted:
            for line in entry.pending_notices():
                await send_all(line)
            return True
        # A timer fired.  The idle timeout ends the conversation; the pause
        # answers the buffered fragment as a line.
        if idle is not None and current_time() >= entry.last_line_at + idle:
            log.info("%s: idle for %g s, closing", entry.address, idle)
            entry.closing = True
            notice = f"AVISO: {idle:g} s sin recibir una línea; conexión cerrada."
            await send_all(protocol.encode_line(notice))
            return True
        events = parser.flush_fragment()
        # What the flush kept (half a UTF-8 character) waits for more data.
        last_data = math.inf
        if events:
            entry.last_line_at = current_time()
            if await _answer(server, stream, entry, events):
                return True


async def _answer(
    server: Server, stream: trio.abc.HalfCloseableStream, entry: ClientEntry, events: list[Event]
) -> bool:
    """Send the replies ``events`` call for, in one write; returns whether the
    conversation is over."""
    out: list[bytes] = []
    done = False
    for event in events:
        match event:
            case Reply(data=data):
                out.append(data)
            case ListClients():
                rows = server.registry.listing(entry, trio.current_time())
                header = f"{protocol.LISTING_HEADER} {len(rows)}"
                out.append(protocol.encode_lines([header, *rows]))
            case Shutdown(token=token):
                reply, accepted = server.shutdown_requested_by(entry, token)
                out.append(protocol.encode_line(reply))
                done = done or accepted
            case Close():
                entry.closing = True
                done = True
    if out:
        await stream.send_all(b"".join(out))
    return done


async def _say_last_words(stream: trio.abc.HalfCloseableStream, line: bytes) -> None:
    try:
        with trio.move_on_after(LINGER_SECONDS):
            await stream.send_all(line)
    except trio.BrokenResourceError:
        await _close_now(stream)
        return
    await _close_gracefully(stream)


async def _close_gracefully(stream: trio.abc.HalfCloseableStream) -> None:
    """Half-close, drain what the client still sends (bounded), then close."""
    try:
        with trio.move_on_after(LINGER_SECONDS):
            await stream.send_eof()
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
        await _close_now(stream)


async def _close_now(stream: trio.abc.HalfCloseableStream) -> None:
    if isinstance(stream, SocketStream):
        stream.close()  # our sockets close synchronously: no scope, no yield
        return
    with trio.CancelScope(shield=True):
        await trio.aclose_forcefully(stream)
