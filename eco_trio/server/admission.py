"""Who gets in: the accept loop, admission against the limits, the quick
refusal, and the TLS handshake that comes before admission on a TLS port.

Admission is decided in the accept loop, in the kernel's accept order,
before any task exists: the clients turned away are always the newest,
LISTAR shows arrival order, and a refusal costs no task and no lingering.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from functools import partial
from typing import Final

import trio

from eco_trio.server.connection import serve_connection
from eco_trio.server.control import Control
from eco_trio.server.listeners import (
    ACCEPT_BACKOFF,
    CONNECTION_ACCEPT_ERRORS,
    OPTIONS_INHERITED,
    refuse,
    tune,
)
from eco_trio.server.registry import ClientEntry, format_address
from eco_trio.server.throttle import Throttles, plural
from eco_trio.transport import tls
from eco_trio.transport.readiness import Readiness
from eco_trio.transport.socket_stream import SocketStream
from eco_trio.wire import protocol
from eco_trio.wire.visible import escape

log = logging.getLogger("eco_trio.server")

#: Connections accepted in a row before the accept loop lets others run.
_ACCEPT_BATCH = 64
#: How long a client refused after its TLS handshake gets to take the line
#: that says why.
_REFUSAL_WAIT = 1.0
#: Every connection task's name, given so trio does not build one string per
#: task (an idle connection keeps it).
_TASK_NAME: Final = "eco_trio.connection"


class Admission:
    """Accepts on the server's listeners and admits clients into ``control``'s
    registry, starting each conversation in the ``connections`` nursery."""

    def __init__(self, control: Control, throttles: Throttles) -> None:
        self.control = control
        self._refusal_line = protocol.encode_line(
            f"ERROR demasiados clientes (máximo {control.config.max_clients}); inténtalo más tarde."
        )
        self._refusals = throttles.line(logging.WARNING)
        self._skipped_accepts = throttles.line(logging.WARNING)
        self._failed_accepts = throttles.line(logging.ERROR)
        # At INFO, once a second at most: a handshake flood must not flood the log.
        self._handshake_failures = throttles.line(logging.INFO)

    async def accept_loop(
        self,
        listener: socket.socket,
        connections: trio.Nursery,
        readiness: Readiness,
        context: ssl.SSLContext | None = None,
    ) -> None:
        """Accept until the backlog is empty, then wait; forever."""
        send_timeout = self.control.config.send_timeout
        fd = listener.fileno()
        readiness.register(listener)
        abort = readiness.aborter(fd)
        while True:
            await readiness.wait_readable(fd, abort)
            accepted = 0
            while True:
                try:
                    sock, peer = listener.accept()
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno in CONNECTION_ACCEPT_ERRORS:
                        self._skipped_accepts.note("a connection failed as it was accepted: %s", exc)
                        continue
                    self._failed_accepts.note("accept failed: %s; retrying every %g s", exc, ACCEPT_BACKOFF)
                    await trio.sleep(ACCEPT_BACKOFF)
                    continue
                address = format_address(peer)
                if not OPTIONS_INHERITED:
                    tune(sock)
                if context is not None:
                    # Not a client until its handshake is done: see handshakes.py.
                    stream = SocketStream(sock, readiness, send_timeout=send_timeout)
                    connections.start_soon(self._serve_tls, stream, address, context, name=_TASK_NAME)
                elif isinstance(entry := self.admit(address), bytes):
                    refuse(sock, entry)
                else:
                    stream = SocketStream(sock, readiness, send_timeout=send_timeout)
                    connections.start_soon(serve_connection, self.control, stream, entry, name=_TASK_NAME)
                accepted += 1
                if accepted % _ACCEPT_BATCH == 0:
                    await trio.lowlevel.checkpoint()  # a connection storm must not starve the rest

    def admit(self, address: str) -> ClientEntry | bytes:
        """Register a new client, in accept order; or the line that refuses
        it (counted, logged once a second) when the server is full, or full
        for its source."""
        control = self.control
        registry = control.registry
        entry = registry.register(address, trio.current_time())
        if entry is None:
            if registry.refusal(address) == "per source":
                control.totals.refused["per source"] += 1
                self._refusals.note(
                    "refused %s: already %d clients from its address (max_clients_per_ip)",
                    address,
                    registry.max_per_source,
                )
                return protocol.encode_line(
                    f"ERROR demasiadas conexiones desde tu dirección (máximo {registry.max_per_source}); "
                    "inténtalo más tarde."
                )
            control.totals.refused["full"] += 1
            self._refusals.note("refused %s: already %d clients (max_clients)", address, registry.max_clients)
            return self._refusal_line
        control.totals.connections += 1
        if log.isEnabledFor(logging.INFO):
            log.info(
                "connected %s (%s)",
                escape(address),
                plural(len(registry), "client"),
                extra={"event": "connected", "peer": address},
            )
        return entry

    async def _serve_tls(self, stream: SocketStream, address: str, context: ssl.SSLContext) -> None:
        """Handshake (a pending connection, apart from the clients), then
        admit and converse as on a plain port.

        Resource handling: ``stream`` is closed here unless the conversation
        takes it over (serve_connection closes it then), cancelled or not."""
        tls_stream: tls.TLSStream | None = None
        handed_over = False
        try:
            tls_stream = await self._handshake(stream, address, context)
            if tls_stream is None:
                return
            entry = self.admit(address)
            if isinstance(entry, bytes):
                with trio.move_on_after(_REFUSAL_WAIT), contextlib.suppress(trio.BrokenResourceError):
                    await tls_stream.send_all(entry)
                return
            names = tls.certificate_names(tls_stream.getpeercert())
            admin = tls.admin_name(names, self.control.config.tls_admin)
            # LISTAR shows the first name: the one matched, for an admin.
            entry.certificate_names = tuple(sorted(names, key=lambda name: name != admin))
            handed_over = True
            await serve_connection(self.control, tls_stream, entry)
        finally:
            if not handed_over:
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(tls_stream or stream)

    async def _handshake(
        self, stream: SocketStream, address: str, context: ssl.SSLContext
    ) -> tls.TLSStream | None:
        """The TLS stream once its handshake is done; None (counted, logged
        once a second) when it failed, was dropped or the server stops."""
        control = self.control
        handshakes = control.handshakes
        pending = handshakes.open(address)
        failure = None
        try:
            with pending.scope:
                wait_turn = partial(handshakes.wait_turn, address)
                return await tls.handshake(stream, context, control.config.tls_handshake_timeout, wait_turn)
        except tls.NotTLS:
            control.totals.refused["plain text on the TLS port"] += 1
            self._handshake_failures.note("%s: plain text on the TLS port: told so", escape(address))
            with trio.move_on_after(_REFUSAL_WAIT), contextlib.suppress(trio.BrokenResourceError):
                await stream.send_all(tls.NOT_TLS_LINE)
            return None
        except tls.HandshakeFailed as exc:
            failure = str(exc)
        finally:
            handshakes.close(pending)
        if failure is None:  # its scope was cancelled: dropped for a newer one, or shutting down
            failure = "dropped: too many handshakes at once" if pending.dropped else "server shutting down"
        control.totals.refused["TLS handshake"] += 1
        self._handshake_failures.note("%s: TLS handshake failed: %s", escape(address), failure)
        return None
