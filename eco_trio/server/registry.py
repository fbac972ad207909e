"""Who is connected, in order of arrival: each client's record (what
LISTAR and ESTADO show), with the handle that reaches its task
(:mod:`eco_trio.server.handle`), and the per-source counts.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from eco_trio.server.handle import ConnectionHandle
from eco_trio.wire.protocol import ServerProtocol
from eco_trio.wire.visible import escape_word


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
    """One client's record: what LISTAR, ESTADO and the log show of it."""

    address: str
    connected_at: float
    last_line_at: float = 0.0
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
    #: Its place in the deployment's admission order (``--redis``; 0 alone).
    seq: int = 0
    #: The conversation's protocol state, for the last command LISTAR shows.
    protocol: ServerProtocol | None = field(default=None, repr=False)


class Registry:
    """The connected clients, at most ``max_clients`` of them, and at most
    ``max_per_source`` from one source (None: no such limit)."""

    __slots__ = ("_clients", "_sources", "max_clients", "max_per_source")

    def __init__(self, max_clients: int, max_per_source: int | None = None) -> None:
        # Each client's record and the handle that reaches its task; a dict
        # keeps arrival order.
        self._clients: dict[ClientEntry, ConnectionHandle] = {}
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
        self._clients[entry] = ConnectionHandle()
        return entry

    def handle(self, entry: ClientEntry) -> ConnectionHandle:
        """How to reach ``entry``'s task (KeyError once unregistered)."""
        return self._clients[entry]

    def unregister(self, entry: ClientEntry) -> None:
        if (handle := self._clients.pop(entry, None)) is not None:
            handle.close_outbox()
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
        for handle in list(self._clients.values()):
            handle.notify(line)


def listing_rows(
    entries: Iterable[ClientEntry], requester: ClientEntry | None, now: float, *, node: str | None = None
) -> list[str]:
    """``LISTAR``'s rows: address first, then age, idle time, the node
    (in a deployment), and a mark on the requester's own row."""
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
        if node is not None:
            row += f" nodo={node}"
        rows.append(row + " (tú)" if entry is requester else row)
    return rows
