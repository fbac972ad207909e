"""The eco_trio server: the accept loop and admission, the connection
nursery, shutdown, and the decisions that need the server's state (who may
list, see the counters, authenticate, shut down).  Its settings are in
``config.py``, its sockets in ``listeners.py``.

Structure: every connection task runs in one nursery under one shared
``CancelScope``.  Shutting down (DESCONEXION, SIGINT, SIGTERM: one path)
closes the listeners, puts the notice in every client's outbox, and sets the
shared scope's deadline ``grace`` seconds ahead.  Connections that deliver
their notice close by themselves; whatever is still running at the deadline
(a client that never reads, say) is cancelled.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import ssl
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Final

import trio

from eco_trio._version import __version__
from eco_trio.server import auth, logs
from eco_trio.server.auth import TokenGuard, Verdict
from eco_trio.server.config import (
    ServerConfig,
    clients_per_ip_in_force,
    exposure_warning,
    idle_timeout_in_force,
    is_loopback,
    parse_address,
)
from eco_trio.server.connection import serve_connection
from eco_trio.server.handshakes import Handshakes
from eco_trio.server.listeners import (
    ACCEPT_BACKOFF,
    CONNECTION_ACCEPT_ERRORS,
    OPTIONS_INHERITED,
    open_listeners,
    refuse,
    tune,
)
from eco_trio.server.registry import ClientEntry, Registry, format_address
from eco_trio.server.stats import Totals, memory, slug
from eco_trio.transport import tls
from eco_trio.transport.readiness import Readiness, io_path, open_readiness
from eco_trio.transport.socket_stream import SocketStream
from eco_trio.wire import protocol
from eco_trio.wire.visible import escape

if TYPE_CHECKING:
    from eco_trio.server.metrics import MetricsEndpoint

log = logging.getLogger("eco_trio.server")

#: The causes ESTADO always shows a refusal count for (0 when none).
_REFUSALS = (
    "full",
    "per source",
    "HTTP",
    "TLS on the plain port",
    "plain text on the TLS port",
    "TLS handshake",
)
_ACCEPT_BATCH = 64


class Server:
    """One eco_trio server.  ``await nursery.start(server.serve)`` returns the
    bound addresses; :meth:`shutdown` starts the graceful shutdown from
    anywhere in the same trio run."""

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig()
        self.registry = Registry(self.config.max_clients)
        #: The idle timeout in force (None: never); serve() settles the
        #: default once it knows whether it listens beyond loopback.
        self.idle_timeout = self.config.idle_timeout or None
        self._shutdown = trio.Event()
        self._refusal_line = protocol.encode_line(
            f"ERROR demasiados clientes (máximo {self.config.max_clients}); inténtalo más tarde."
        )
        self._throttles: list[_Throttled] = []
        self._refusals = self.throttled_log(logging.WARNING)
        self._skipped_accepts = self.throttled_log(logging.WARNING)
        self._failed_accepts = self.throttled_log(logging.ERROR)
        # At INFO, once a second at most: a handshake flood must not flood the log.
        self._handshake_failures = self.throttled_log(logging.INFO)
        assert self.config.token is None or isinstance(self.config.token, bytes)  # __post_init__
        self.tokens = TokenGuard(self.config.token)
        # Wrong tokens, once a second at most: guessing must not flood the log.
        self._wrong_tokens = self.throttled_log(logging.WARNING)
        self.handshakes = Handshakes(
            self.config.max_handshakes, self.config.handshake_rate, self.config.handshake_rate_per_ip
        )
        self.totals = Totals()
        self.io_path = "-"
        self._clock: Callable[[], float] | None = None
        #: Where the metrics are served (``ip:port``), once serve() runs.
        self.metrics_address: str | None = None

    def throttled_log(self, level: int) -> _Throttled:
        """A log line for something that can happen thousands of times a
        second: at most one a second, with a count; flushed at shutdown."""
        throttled = _Throttled(level)
        self._throttles.append(throttled)
        return throttled

    def clock(self) -> Callable[[], float]:
        """The run's clock (``trio.current_time`` without its lookups): one
        bound method shared by every connection, rather than one each."""
        if self._clock is None:
            self._clock = trio.lowlevel.current_clock().current_time
        return self._clock

    @property
    def shutting_down(self) -> bool:
        return self._shutdown.is_set()

    def shutdown(self) -> None:
        """Start the graceful shutdown (idempotent)."""
        self._shutdown.set()

    def connection_ended(self, entry: ClientEntry) -> None:
        """Count a finished conversation and log why it ended."""
        self.totals.connection_ended(entry, entry.end_reason)
        if not log.isEnabledFor(logging.INFO):  # its arguments cost a busy server
            return
        clients = len(self.registry)
        log.info(
            "disconnected %s: %s, after %.1f s, %s in, %d out (%s left)",
            entry.address,
            f"{entry.end_reason} ({entry.end_detail})" if entry.end_detail else entry.end_reason,
            trio.current_time() - entry.connected_at,
            _count(entry.lines_in, "line"),
            entry.lines_out,
            _count(clients, "client"),
            extra={"event": "disconnected", "peer": entry.address, "reason": entry.end_reason},
        )

    def _check_token(
        self, entry: ClientEntry, token: bytes | None, command: str
    ) -> tuple[str, str | None] | None:
        """None when ``entry`` may go on (the right token, a session that
        proved it, or no token set); otherwise the refusal line and, when
        the connection must close, why."""
        verdict = self.tokens.check(entry, token, trio.current_time())
        if verdict is Verdict.ACCEPTED:
            return None
        if verdict is not Verdict.MISSING:
            self._wrong_tokens.note("wrong token from %s (%s, %s)", entry.address, command, verdict.value)
        if verdict is Verdict.THROTTLED:
            return "ERROR demasiados tokens incorrectos desde tu dirección; espera unos segundos.", None
        if verdict is Verdict.WRONG_LAST:
            return (
                f"ERROR token incorrecto; {auth.MAX_TRIES} intentos fallidos, conexión cerrada.",
                "wrong token",
            )
        usage = "AUTENTICAR <token>" if command == "AUTENTICAR" else f"{command} <token> o AUTENTICAR <token>"
        return f"ERROR {command} requiere el token correcto: {usage}.", None

    def authenticate(self, entry: ClientEntry, token: bytes | None) -> tuple[list[str], str | None]:
        """``AUTENTICAR <token>``: the reply, and why to close, if so."""
        if not self.tokens.required:
            return ["ERROR este servidor no tiene token: no hace falta AUTENTICAR."], None
        if token is None:
            return ["ERROR falta el token: AUTENTICAR <token>."], None
        if (refusal := self._check_token(entry, token, "AUTENTICAR")) is not None:
            return [refusal[0]], refusal[1]
        entry.authenticated = True
        return ["OK autenticado."], None

    def listing_refusal(self, entry: ClientEntry) -> str | None:
        """Why ``entry`` may not see LISTAR, or None: with a token set,
        clients beyond loopback must prove it first (Redis asks for AUTH
        before CLIENT LIST); loopback and token-less servers keep the
        seed's plain LISTAR."""
        if not self.tokens.required or entry.authenticated or is_loopback(entry.address):
            return None
        if tls.admin_name(entry.certificate_names, self.config.tls_admin) is not None:
            return None
        return "ERROR LISTAR requiere AUTENTICAR <token> desde fuera de localhost."

    def status_lines(self, entry: ClientEntry, token: bytes | None) -> tuple[list[str], str | None]:
        """ESTADO's reply: a header, then ``clave valor`` lines.  With a
        token set, only for who proves it (as DESCONEXION)."""
        if (refusal := self._check_token(entry, token, "ESTADO")) is not None:
            return [refusal[0]], refusal[1]
        pairs = self.status()
        header = f"{protocol.STATUS_HEADER} {len(pairs)}"
        return [header, *(f"{key} {value}" for key, value in pairs.items())], None

    def status(self) -> dict[str, object]:
        """Every counter and setting ESTADO and the metrics show."""
        config, totals = self.config, self.totals
        live = self.registry.snapshot()
        current, peak = memory()
        pairs: dict[str, object] = {
            "version": __version__,
            "pid": os.getpid(),
            "uptime_s": int(time.monotonic() - totals.started_at),
            "io_path": self.io_path,
            "tls": "si" if config.tls_cert else "no",
            "clients": len(live),
            "wrong_tokens": self.tokens.failures,
            "tls_handshakes_pending": len(self.handshakes),
            "tls_handshakes_dropped": self.handshakes.dropped,
            "connections_total": totals.connections,
            **{f"refused_{slug(cause)}": totals.refused[cause] for cause in _REFUSALS},
            **totals.snapshot(live),
            **{f"command_{slug(name)}": count for name, count in sorted(totals.commands.items())},
            **{f"disconnects_{slug(reason)}": n for reason, n in sorted(totals.disconnects.items())},
            "log_lines_dropped": logs.dropped_lines(),
            "rss_bytes": current if current is not None else "-",
            "peak_rss_bytes": peak if peak is not None else "-",
            "max_clients": config.max_clients,
            "max_clients_per_ip": self.registry.max_per_source or "off",
            "max_line": config.max_line,
            "idle_timeout_s": self.idle_timeout if self.idle_timeout is not None else "off",
            "send_timeout_s": config.send_timeout,
        }
        return pairs

    def shutdown_requested_by(self, entry: ClientEntry, token: bytes | None) -> tuple[list[str], str | None]:
        """Decide on a client's DESCONEXION: the reply, and why the
        conversation ends ("DESCONEXION": honoured), if it does."""
        config = self.config
        if not config.remote_shutdown:
            return ["ERROR DESCONEXION está desactivado en este servidor."], None
        admin = tls.admin_name(entry.certificate_names, config.tls_admin)
        if admin is not None:
            log.info(
                "DESCONEXION from %s (certificate %s): shutting down",
                entry.address,
                escape(admin),
                extra={"event": "desconexion", "peer": entry.address},
            )
        elif self.tokens.required:
            if (refusal := self._check_token(entry, token, "DESCONEXION")) is not None:
                return [refusal[0]], refusal[1]
        elif not is_loopback(entry.address):
            self._wrong_tokens.note("DESCONEXION refused from %s: not a loopback peer", entry.address)
            return [
                "ERROR DESCONEXION solo se acepta desde localhost; arranca el servidor "
                "con --token para permitirlo desde otras máquinas."
            ], None
        if admin is None:
            log.info(
                "DESCONEXION from %s: shutting down",
                entry.address,
                extra={"event": "desconexion", "peer": entry.address},
            )
        entry.closing = True
        self.shutdown()
        return [protocol.SHUTDOWN_ACK], "DESCONEXION"

    async def serve(self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, serve, and return once shut down and every connection closed.

        Reports the bound addresses (``ip:port``) through ``task_status`` once
        it really listens.  Raises OSError if it cannot listen.
        """
        config = self.config
        context = None
        if config.tls_cert is not None and config.tls_key is not None:
            context = tls.server_context(config.tls_cert, config.tls_key, config.tls_ca)
        listeners = [
            (sock, context) for sock in await open_listeners(config.host, config.port, config.backlog)
        ]
        if config.plain_port is not None:
            try:
                plain = await open_listeners(config.host, config.plain_port, config.backlog)
            except BaseException:
                for sock, _ in listeners:
                    sock.close()
                raise
            listeners += [(sock, None) for sock in plain]
        addresses = [format_address(sock.getsockname()) for sock, _ in listeners]
        self.idle_timeout = idle_timeout_in_force(config, addresses)
        self.registry.max_per_source = clients_per_ip_in_force(config, addresses)
        if (warning := exposure_warning(addresses, config)) is not None:
            log.warning("%s", warning, extra={"event": "exposure"})
        self.io_path = io_path(config.io)
        log.info(
            "eco_trio %s, pid %d, I/O path %s; limits: --max-clients %d, --max-line %d, "
            "--idle-timeout %s, --send-timeout %g s",
            __version__,
            os.getpid(),
            self.io_path,
            config.max_clients,
            config.max_line,
            f"{self.idle_timeout:g} s" if self.idle_timeout is not None else "off",
            config.send_timeout,
            extra={"event": "start"},
        )
        endpoint = None
        if config.metrics is not None:
            from eco_trio.server.metrics import MetricsEndpoint

            host, port = parse_address(config.metrics)
            try:
                # One socket: a scraper asks one address.
                metrics_socket, *others = await open_listeners(host, port, config.backlog)
                for other in others:
                    other.close()
            except BaseException:
                for sock, _ in listeners:
                    sock.close()
                raise
            endpoint = MetricsEndpoint(self.status, metrics_socket, self.throttled_log(logging.WARNING))
            self.metrics_address = format_address(metrics_socket.getsockname())
            log.info("metrics on http://%s/metrics", self.metrics_address, extra={"event": "metrics"})
        try:
            await self._serve(listeners, addresses, task_status, endpoint)
        finally:
            if endpoint is not None:
                endpoint.listener.close()

    async def _serve(
        self,
        listeners: list[tuple[socket.socket, ssl.SSLContext | None]],
        addresses: list[str],
        task_status: trio.TaskStatus[list[str]],
        endpoint: MetricsEndpoint | None = None,
    ) -> None:
        config = self.config
        # The I/O path outlives every connection; the cancel scope is the shared one.
        with open_readiness(config.io) as readiness, trio.CancelScope() as connections_scope:
            async with trio.open_nursery() as connections:
                try:
                    async with trio.open_nursery() as acceptors:
                        for sock, sock_context in listeners:
                            acceptors.start_soon(
                                self._accept_loop, sock, connections, readiness, sock_context
                            )
                        for address, (_, sock_context) in zip(addresses, listeners, strict=True):
                            kind = "TLS" if sock_context is not None else "plain text"
                            log.info("listening on %s (%s)", address, kind, extra={"event": "listening"})
                        acceptors.start_soon(self._flush_counts_every_second)
                        if endpoint is not None:
                            acceptors.start_soon(endpoint.serve)
                        task_status.started(addresses)
                        await self._shutdown.wait()
                        acceptors.cancel_scope.cancel()
                    self.handshakes.cancel_all()  # nobody is owed a goodbye before their hello
                finally:
                    for sock, _ in listeners:
                        readiness.forget(sock.fileno())
                        sock.close()
                clients = len(self.registry)
                log.info(
                    "shutting down: notifying %d %s (grace %g s)",
                    clients,
                    "client" if clients == 1 else "clients",
                    config.grace,
                    extra={"event": "shutdown"},
                )
                self.registry.notify_all(protocol.encode_line(protocol.SHUTDOWN_NOTICE))
                connections_scope.deadline = trio.current_time() + config.grace
        if connections_scope.cancelled_caught:
            log.info("grace period over: remaining connections cancelled", extra={"event": "grace_over"})
        self.flush_counts()
        log.info("server stopped", extra={"event": "stopped"})

    def flush_counts(self) -> None:
        """Log what the once-a-second log lines have not said yet."""
        for throttled in self._throttles:
            throttled.flush()

    async def _flush_counts_every_second(self) -> None:
        while True:
            await trio.sleep(1.0)
            self.flush_counts()

    async def _accept_loop(
        self,
        listener: socket.socket,
        connections: trio.Nursery,
        readiness: Readiness,
        context: ssl.SSLContext | None = None,
    ) -> None:
        """Accept until the backlog is empty, then wait.

        Admission is decided here, in the kernel's accept order, before any
        task exists: the clients turned away are always the newest, LISTAR
        shows arrival order, and a refusal costs no task and no lingering.
        """
        send_timeout = self.config.send_timeout
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
                elif isinstance(entry := self._admit(address), bytes):
                    refuse(sock, entry)
                else:
                    stream = SocketStream(sock, readiness, send_timeout=send_timeout)
                    connections.start_soon(serve_connection, self, stream, entry, name=_TASK_NAME)
                accepted += 1
                if accepted % _ACCEPT_BATCH == 0:
                    await trio.lowlevel.checkpoint()  # a connection storm must not starve the rest

    def _admit(self, address: str) -> ClientEntry | bytes:
        """Register a new client, in accept order; or the line that refuses
        it (counted, logged once a second) when the server is full, or full
        for its source."""
        registry = self.registry
        entry = registry.register(address, trio.current_time())
        if entry is None:
            if registry.refusal(address) == "per source":
                self.totals.refused["per source"] += 1
                self._refusals.note(
                    "refused %s: already %d clients from its address (--max-clients-per-ip)",
                    address,
                    registry.max_per_source,
                )
                return protocol.encode_line(
                    f"ERROR demasiadas conexiones desde tu dirección (máximo {registry.max_per_source}); "
                    "inténtalo más tarde."
                )
            self.totals.refused["full"] += 1
            self._refusals.note(
                "refused %s: already %d clients (--max-clients)", address, registry.max_clients
            )
            return self._refusal_line
        self.totals.connections += 1
        if log.isEnabledFor(logging.INFO):
            log.info(
                "connected %s (%s)",
                escape(address),
                _count(len(registry), "client"),
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
            entry = self._admit(address)
            if isinstance(entry, bytes):
                with trio.move_on_after(_REFUSAL_WAIT), contextlib.suppress(trio.BrokenResourceError):
                    await tls_stream.send_all(entry)
                return
            names = tls.certificate_names(tls_stream.getpeercert())
            admin = tls.admin_name(names, self.config.tls_admin)
            # LISTAR shows the first name: the one matched, for an admin.
            entry.certificate_names = tuple(sorted(names, key=lambda name: name != admin))
            handed_over = True
            await serve_connection(self, tls_stream, entry)
        finally:
            if not handed_over:
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(tls_stream or stream)

    async def _handshake(
        self, stream: SocketStream, address: str, context: ssl.SSLContext
    ) -> tls.TLSStream | None:
        """The TLS stream once its handshake is done; None (counted, logged
        once a second) when it failed, was dropped or the server stops."""
        pending = self.handshakes.open(address)
        failure = None
        try:
            with pending.scope:
                wait_turn = partial(self.handshakes.wait_turn, address)
                return await tls.handshake(stream, context, self.config.tls_handshake_timeout, wait_turn)
        except tls.NotTLS:
            self.totals.refused["plain text on the TLS port"] += 1
            self._handshake_failures.note("%s: plain text on the TLS port: told so", escape(address))
            with trio.move_on_after(_REFUSAL_WAIT), contextlib.suppress(trio.BrokenResourceError):
                await stream.send_all(tls.NOT_TLS_LINE)
            return None
        except tls.HandshakeFailed as exc:
            failure = str(exc)
        finally:
            self.handshakes.close(pending)
        if failure is None:  # its scope was cancelled: dropped for a newer one, or shutting down
            failure = "dropped: too many handshakes at once" if pending.dropped else "server shutting down"
        self.totals.refused["TLS handshake"] += 1
        self._handshake_failures.note("%s: TLS handshake failed: %s", escape(address), failure)
        return None


#: How long a client refused after its TLS handshake gets to take the line
#: that says why.
_REFUSAL_WAIT = 1.0

#: Every connection task's name, given so trio does not build one string per
#: task (an idle connection keeps it).
_TASK_NAME: Final = "eco_trio.connection"


class _Throttled:
    """A log line for something that can happen thousands of times a second
    (refusals, accept errors): at most one a second, each with how many
    happened since the previous one, so a flood does not flood the log."""

    __slots__ = ("_count", "_last", "_level", "_logged_at")

    def __init__(self, level: int) -> None:
        self._level = level
        self._count = 0
        self._logged_at = -math.inf
        self._last: tuple[str, tuple[object, ...]] | None = None

    def note(self, message: str, *args: object) -> None:
        self._count += 1
        self._last = (message, args)
        now = trio.current_time()
        if now - self._logged_at >= 1.0:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        """Log the count not yet logged, if any (once a second, and at
        shutdown, so no burst goes unreported)."""
        if self._count and self._last is not None:
            message, args = self._last
            log.log(self._level, message + " (%d since the last report)", *args, self._count)
            self._count = 0
            self._logged_at = trio.current_time() if now is None else now


def _count(n: int, noun: str) -> str:
    """``1 client``, ``2 clients``: the log is read by people too."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


async def serve(
    config: ServerConfig | None = None,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a server until a client sends DESCONEXION (or the caller cancels).

    ``addresses = await nursery.start(eco_trio.serve, config)`` returns the
    bound ``ip:port`` strings once the server listens.
    """
    await Server(config).serve(task_status=task_status)
