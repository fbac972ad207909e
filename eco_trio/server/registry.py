"""Who is connected, in order of arrival, and how to reach them.

Each client's entry carries an outbox: a trio memory channel for lines the
server sends on its own initiative (the shutdown notice), opened the first
time it is needed.  Replies to a
client's own lines never go through it: the connection task writes those
directly, so the per-reply path has no channel hop and no task switch.

A line put in the outbox is the last thing that connection will hear, so
:meth:`ClientEntry.notify` also interrupts the connection task, which then
delivers its outbox and closes.  The interrupt reaches the task only while it
waits for input: through its stream's interrupter (our sockets on the epoll
path, which spares each connection a cancel scope), or by cancelling its
conversation's cancel scope (other streams, and while a timer runs).  A task
busy writing a reply finishes that reply first and notices the interrupt
before it reads again, so no reply is cut in half.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import trio

from eco_trio.wire.protocol import ServerProtocol
from eco_trio.wire.visible import escape_word

OUTBOX_SIZE = 4


def format_address(address: object) -> str:
    """``ip:port``, or ``[ip]:port`` for IPv6, from a socket address."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)


def source_of(address: str) -> str:
    """Where a client comes from, for per-source limits: its IP address, or
    for IPv6 its /64 (one host is usually given a whole /64)."""
    host = address.rsplit(":", 1)[0].strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return host


@dataclass(eq=False, slots=True)
class ClientEntry:
    address: str
    connected_at: float
    last_line_at: float = 0.0
    #: The connection task is waiting for input under ``scope``.
    reading: bool = False
    #: The connection is ending; notices are no longer sent to it.
    closing: bool = False
    interrupted: bool = False
    #: The client's source (its address without the port, an IPv6 one to
    #: its /64) while a per-source limit is in force; None otherwise.
    source: str | None = None
    #: The session proved the token (AUTENTICAR), and wrong tokens sent.
    authenticated: bool = False
    auth_failures: int = 0
    #: The names in the client's TLS certificate (mutual TLS), if any.
    certificate_names: tuple[str, ...] = ()
    # What this client has sent and been sent (LISTAR, ESTADO, the log).
    lines_in: int = 0
    lines_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    #: Why the conversation ended: one of a few words, for ESTADO and the
    #: metrics' labels; the detail only goes to the log.
    end_reason: str = "connection ended"
    end_detail: str = ""
    #: The conversation's protocol state, for the last command LISTAR shows.
    protocol: ServerProtocol | None = field(default=None, repr=False)
    #: How to interrupt the task's read: its cancel scope, or (where the
    #: stream offers one, and no timer needs a scope) the stream's interrupter.
    scope: trio.CancelScope | None = field(default=None, repr=False)
    wake: Callable[[], None] | None = field(default=None, repr=False)
    # The outbox channel is opened on first use: a channel pair costs about
    # 1.8 KiB, as much as the connection's task, and most connections never
    # hear from the server unprompted.
    _outbox: tuple[trio.MemorySendChannel[bytes], trio.MemoryReceiveChannel[bytes]] | None = field(
        default=None, repr=False
    )

    @property
    def outbox(self) -> trio.MemorySendChannel[bytes]:
        if self._outbox is None:
            self._outbox = trio.open_memory_channel[bytes](OUTBOX_SIZE)
        return self._outbox[0]

    def notify(self, line: bytes) -> None:
        """Send ``line`` as this connection's last words, then close it."""
        if self.closing:
            return
        self.closing = True
        with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError):
            self.outbox.send_nowait(line)  # a full outbox: that connection is leaving anyway
        self.interrupt()

    def interrupt(self) -> None:
        self.interrupted = True
        if self.reading:
            if self.scope is not None:
                self.scope.cancel()
            elif self.wake is not None:
                self.wake()

    def pending_notices(self) -> list[bytes]:
        lines: list[bytes] = []
        if self._outbox is None:
            return lines
        while True:
            try:
                lines.append(self._outbox[1].receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return lines

    def close_outbox(self) -> None:
        if self._outbox is not None:
            for channel in self._outbox:
                channel.close()


class Registry:
    """The connected clients, at most ``max_clients`` of them, and at most
    ``max_per_source`` from one source (None: no such limit)."""

    __slots__ = ("_clients", "_sources", "max_clients", "max_per_source")

    def __init__(self, max_clients: int, max_per_source: int | None = None) -> None:
        self._clients: dict[ClientEntry, None] = {}  # a dict keeps arrival order
        self._sources: dict[str, int] = {}
        self.max_clients = max_clients
        self.max_per_source = max_per_source

    def refusal(self, address: str) -> str | None:
        """Why a client from ``address`` cannot be admitted now ("full",
        "per source"), or None."""
        if len(self._clients) >= self.max_clients:
            return "full"
        if (
            self.max_per_source is not None
            and self._sources.get(source_of(address), 0) >= self.max_per_source
        ):
            return "per source"
        return None

    def register(self, address: str, now: float) -> ClientEntry | None:
        """A new entry, or None when :meth:`refusal` has a reason.  (The
        checks are written out: this runs for every connection.)"""
        if len(self._clients) >= self.max_clients:
            return None
        source = None
        if self.max_per_source is not None:
            source = source_of(address)
            count = self._sources.get(source, 0)
            if count >= self.max_per_source:
                return None
            self._sources[source] = count + 1
        entry = ClientEntry(address, now, last_line_at=now)
        if source is not None:
            entry.source = source
        self._clients[entry] = None
        return entry

    def unregister(self, entry: ClientEntry) -> None:
        if self._clients.pop(entry, entry) is None:
            entry.close_outbox()
            if entry.source is not None:
                left = self._sources.pop(entry.source) - 1
                if left:
                    self._sources[entry.source] = left

    def __len__(self) -> int:
        return len(self._clients)

    def __iter__(self) -> Iterator[ClientEntry]:
        return iter(list(self._clients))

    def snapshot(self) -> list[ClientEntry]:
        """The entries now, in arrival order, for a listing sent in parts."""
        return list(self._clients)

    def listing(self, requester: ClientEntry | None, now: float) -> list[str]:
        """``LISTAR``'s rows for every client (see :func:`listing_rows`)."""
        return listing_rows(self._clients, requester, now)

    def notify_all(self, line: bytes) -> None:
        for entry in list(self._clients):
            entry.notify(line)


def listing_rows(entries: Iterable[ClientEntry], requester: ClientEntry | None, now: float) -> list[str]:
    """``LISTAR``'s rows: address first, then age, idle time, and a mark on
    the requester's own row."""
    rows = []
    for entry in entries:
        row = (
            f"{entry.address} conectado={now - entry.connected_at:.0f}s"
            f" inactivo={now - entry.last_line_at:.0f}s"
        )
        # Lines that carried a token are left out of the bytes in: their
        # length would tell others the token's.
        secret = entry.protocol.secret_bytes if entry.protocol is not None else 0
        row += f" lineas={entry.lines_in}/{entry.lines_out} bytes={entry.bytes_in - secret}/{entry.bytes_out}"
        if entry.protocol is not None and entry.protocol.last_command is not None:
            row += f" ultimo={entry.protocol.last_command.replace(' ', '_')}"
        if entry.certificate_names:
            row += f" cert={escape_word(entry.certificate_names[0])}"
        rows.append(row + " (tú)" if entry is requester else row)
    return rows
