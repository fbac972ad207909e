"""The decisions that need the server's state: who may list, see the
counters, authenticate and shut the server down; the status ESTADO and the
metrics show; and the bookkeeping when a conversation ends.

:class:`Control` is what a conversation talks to (it is the
:class:`~eco_trio.server.connection.Host`): the server builds one and hands
it to every connection, so the conversation never sees the server itself.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import trio

from eco_trio._version import __version__
from eco_trio.server import auth, logs
from eco_trio.server.auth import TokenGuard, Verdict
from eco_trio.server.config import ServerConfig, is_loopback
from eco_trio.server.handshakes import Handshakes
from eco_trio.server.registry import ClientEntry, Registry, listing_rows
from eco_trio.server.stats import Totals, memory, slug
from eco_trio.server.throttle import Throttles, plural
from eco_trio.transport import tls
from eco_trio.wire import protocol
from eco_trio.wire.visible import escape

if TYPE_CHECKING:  # loaded only with --redis (it needs coredis)
    from eco_trio.server.cluster.node import Node

log = logging.getLogger("eco_trio.server")

#: LISTAR rows formatted and sent per part: about 50 KiB, one turn's worth
#: (protocol.TURN_OUTPUT), so a listing of many clients is never built whole.
LISTING_PART = 1024

#: The causes ESTADO always shows a refusal count for (0 when none).
REFUSALS = (
    "full",
    "per source",
    "HTTP",
    "TLS on the plain port",
    "plain text on the TLS port",
    "TLS handshake",
)

#: A decision's reply: its lines, and why the conversation ends (None: it goes on).
Answer = tuple[list[str], str | None]


class Control:
    """The server's state as its connections see it, and its decisions."""

    def __init__(
        self,
        config: ServerConfig,
        registry: Registry,
        totals: Totals,
        handshakes: Handshakes,
        throttles: Throttles,
    ) -> None:
        self.config = config
        self.registry = registry
        self.totals = totals
        self.handshakes = handshakes
        assert config.token is None or isinstance(config.token, bytes)  # __post_init__
        self.tokens = TokenGuard(config.token)
        #: The idle timeout in force (None: never); the server settles the
        #: default once it knows whether it listens beyond loopback.
        self.idle_timeout = config.idle_timeout or None
        self.io_path = "-"
        # Wrong tokens, once a second at most: guessing must not flood the log.
        self._wrong_tokens = throttles.line(logging.WARNING)
        self._shutdown = trio.Event()
        self._clock: Callable[[], float] | None = None
        #: This server's membership of a deployment (--redis), once joined.
        self.node: Node | None = None
        #: Whether the shutdown came from a DESCONEXION (here or on another node).
        self.stopped_by_desconexion = False

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

    async def wait_for_shutdown(self) -> None:
        await self._shutdown.wait()

    def connection_ended(self, entry: ClientEntry) -> None:
        """Count a finished conversation and log why it ended."""
        self.totals.connection_ended(entry, entry.end_reason)
        if self.node is not None:
            self.node.left(entry)
        if not log.isEnabledFor(logging.INFO):  # its arguments cost a busy server
            return
        log.info(
            "disconnected %s: %s, after %.1f s, %s in, %d out (%s left)",
            entry.address,
            f"{entry.end_reason} ({entry.end_detail})" if entry.end_detail else entry.end_reason,
            trio.current_time() - entry.connected_at,
            plural(entry.lines_in, "line"),
            entry.lines_out,
            plural(len(self.registry), "client"),
            extra={"event": "disconnected", "peer": entry.address, "reason": entry.end_reason},
        )

    def _check_token(self, entry: ClientEntry, token: bytes | None, command: str) -> Answer | None:
        """None when ``entry`` may go on (the right token, a session that
        proved it, or no token set); otherwise the refusal and, when the
        connection must close, why."""
        verdict = self.tokens.check(entry, token, trio.current_time())
        if verdict is Verdict.ACCEPTED:
            return None
        if verdict is not Verdict.MISSING:
            self._wrong_tokens.note("wrong token from %s (%s, %s)", entry.address, command, verdict.value)
        if verdict is Verdict.THROTTLED:
            return ["ERROR demasiados tokens incorrectos desde tu dirección; espera unos segundos."], None
        if verdict is Verdict.WRONG_LAST:
            return (
                [f"ERROR token incorrecto; {auth.MAX_TRIES} intentos fallidos, conexión cerrada."],
                "wrong token",
            )
        usage = "AUTENTICAR <token>" if command == "AUTENTICAR" else f"{command} <token> o AUTENTICAR <token>"
        return [f"ERROR {command} requiere el token correcto: {usage}."], None

    def authenticate(self, entry: ClientEntry, token: bytes | None) -> Answer:
        """``AUTENTICAR <token>``."""
        if not self.tokens.required:
            return ["ERROR este servidor no tiene token: no hace falta AUTENTICAR."], None
        if token is None:
            return ["ERROR falta el token: AUTENTICAR <token>."], None
        if (refusal := self._check_token(entry, token, "AUTENTICAR")) is not None:
            return refusal
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

    def status_lines(self, entry: ClientEntry, token: bytes | None) -> Answer:
        """ESTADO's reply: a header, then ``clave valor`` lines.  With a
        token set, only for who proves it (as DESCONEXION).  In a deployment
        the counters are its totals; a node cut off from Redis answers with
        its own, and its header says ``parcial``."""
        if (refusal := self._check_token(entry, token, "ESTADO")) is not None:
            return refusal
        pairs = self.status()
        header = f"{protocol.STATUS_HEADER} {len(pairs)}" + (" parcial" if self._partial() else "")
        return [header, *(f"{key} {value}" for key, value in pairs.items())], None

    def _partial(self) -> bool:
        return self.node is not None and self.node.fenced

    def status(self) -> dict[str, object]:
        """Every counter and setting ESTADO and the metrics show: the
        deployment's totals in a deployment (see cluster/node.py)."""
        own = self.local_status()
        if self.node is None or self.node.fenced:
            return own
        return self.node.merged_status(own)

    async def listing(self, requester: ClientEntry) -> tuple[str, AsyncIterator[list[str]]]:
        """LISTAR's header line and its rows in parts of LISTING_PART, each
        built only when the one before has been sent: its cost grows with
        the number of clients and must not stall them."""
        now = trio.current_time()
        node = self.node
        name = node.name if node is not None else None

        def own_rows(entries: list[ClientEntry]) -> list[str]:
            return listing_rows(entries, requester, now, node=name)

        if node is not None and (deployment := await node.listing(own_rows)) is not None:
            count, parts = deployment
            return f"{protocol.LISTING_HEADER} {count}", parts
        entries = self.registry.snapshot()
        partial = " parcial" if node is not None else ""

        async def local_parts() -> AsyncIterator[list[str]]:
            for start in range(0, len(entries), LISTING_PART):
                if start:
                    await trio.lowlevel.checkpoint()
                yield own_rows(entries[start : start + LISTING_PART])

        return f"{protocol.LISTING_HEADER} {len(entries)}{partial}", local_parts()

    def local_status(self) -> dict[str, object]:
        """Every counter and setting of this server alone."""
        config, totals = self.config, self.totals
        live = self.registry.snapshot()
        current, peak = memory()
        return {
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
            # Behind a load balancer (--proxy-protocol) only:
            **(
                {
                    "health_checks": totals.health_checks,
                    "refused_proxy_header": totals.refused["PROXY header"],
                }
                if config.proxy_protocol
                else {}
            ),
            **{f"refused_{slug(cause)}": totals.refused[cause] for cause in REFUSALS},
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

    async def shutdown_requested_by(self, entry: ClientEntry, token: bytes | None) -> Answer:
        """A client's DESCONEXION: honoured (the conversation ends with
        "DESCONEXION") or refused.  In a deployment it stops every node, or,
        when Redis cannot carry it, none."""
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
                return refusal
        elif not is_loopback(entry.address):
            self._wrong_tokens.note("DESCONEXION refused from %s: not a loopback peer", entry.address)
            return [
                "ERROR DESCONEXION solo se acepta desde localhost; arranca el servidor "
                "con --token para permitirlo desde otras máquinas."
            ], None
        if self.node is not None and (why := await self.node.request_stop()) is not None:
            log.warning("DESCONEXION from %s refused: %s", entry.address, why)
            return [
                f"ERROR DESCONEXION no llega a todo el despliegue ({why}); no se apaga ningún nodo."
            ], None
        if admin is None:
            log.info(
                "DESCONEXION from %s: shutting down",
                entry.address,
                extra={"event": "desconexion", "peer": entry.address},
            )
        self.stopped_by_desconexion = True
        self.shutdown()
        return [protocol.SHUTDOWN_ACK], "DESCONEXION"
