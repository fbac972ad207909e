"""The eco_trio server: its parts put together, the connection nursery, and
shutdown.  Its settings are in ``config.py``, its sockets in
``listeners.py``, who gets in in ``admission.py``, and the decisions that
need its state (and what a conversation may ask of it) in ``control.py``.

Structure: every connection task runs in one nursery under one shared
``CancelScope``.  Shutting down (DESCONEXION, SIGINT, SIGTERM: one path)
closes the listeners, puts the notice in every client's outbox, and sets the
shared scope's deadline ``grace`` seconds ahead.  Connections that deliver
their notice close by themselves; whatever is still running at the deadline
(a client that never reads, say) is cancelled.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
from typing import TYPE_CHECKING

import trio

from eco_trio._version import __version__
from eco_trio.server.admission import Admission
from eco_trio.server.cluster import DeploymentError
from eco_trio.server.config import (
    ServerConfig,
    clients_per_ip_in_force,
    exposure_warning,
    idle_timeout_in_force,
    parse_address,
)
from eco_trio.server.control import Control
from eco_trio.server.handshakes import Handshakes
from eco_trio.server.listeners import open_listeners, open_one_listener
from eco_trio.server.registry import Registry, format_address
from eco_trio.server.stats import Totals
from eco_trio.server.throttle import Throttles, plural
from eco_trio.transport import tls
from eco_trio.transport.readiness import io_path, open_readiness
from eco_trio.wire import protocol

if TYPE_CHECKING:
    from eco_trio.server.metrics import MetricsEndpoint

log = logging.getLogger("eco_trio.server")

Listeners = list[tuple[socket.socket, ssl.SSLContext | None]]


class Server:
    """One eco_trio server.  ``await nursery.start(server.serve)`` returns the
    bound addresses; :meth:`shutdown` starts the graceful shutdown from
    anywhere in the same trio run."""

    def __init__(
        self,
        config: ServerConfig | None = None,
        *,
        listeners: list[socket.socket] | None = None,
        metrics_socket: socket.socket | None = None,
    ) -> None:
        """``listeners`` (and ``metrics_socket``): sockets already listening,
        to serve instead of binding ``config``'s address (a worker of
        ``servidor --workers`` gets them from its supervisor)."""
        self.config = config = config or ServerConfig()
        self._given = listeners
        self._given_metrics = metrics_socket
        #: Set to stop accepting: by shutdown(), or by drain() first.
        self._stop_accepting = trio.Event()
        self._draining = False
        self.throttles = Throttles()
        self.registry = Registry(config.max_clients)
        self.totals = Totals()
        self.handshakes = Handshakes(
            config.max_handshakes, config.handshake_rate, config.handshake_rate_per_ip
        )
        #: What the connections talk to: see control.py.
        self.control = Control(config, self.registry, self.totals, self.handshakes, self.throttles)
        self.tokens = self.control.tokens
        self.admission = Admission(self.control, self.throttles)
        #: Where the metrics are served (``ip:port``), once serve() runs.
        self.metrics_address: str | None = None

    @property
    def io_path(self) -> str:
        return self.control.io_path

    @property
    def idle_timeout(self) -> float | None:
        """The idle timeout in force (None: never), settled by serve()."""
        return self.control.idle_timeout

    @property
    def shutting_down(self) -> bool:
        return self.control.shutting_down

    def shutdown(self) -> None:
        """Start the graceful shutdown (idempotent)."""
        self.control.shutdown()

    def reload_tls(self) -> None:
        """Read the certificate files again: connections from now on get
        the new certificate (a renewal without a restart); those already
        open keep theirs.  Raises TLSFileError (naming the file) and keeps
        the old certificate when the new files cannot be used."""
        config = self.config
        if config.tls_cert is None or config.tls_key is None:
            return
        self.admission.tls_context = tls.server_context(config.tls_cert, config.tls_key, config.tls_ca)
        log.info("TLS certificate reloaded from %s", config.tls_cert, extra={"event": "tls_reload"})

    def drain(self) -> None:
        """Stop accepting, let the clients leave by themselves for up to
        ``grace`` seconds, then shut down (telling those still connected):
        how a worker hands over to its replacement."""
        self._draining = True
        self._stop_accepting.set()

    def status(self) -> dict[str, object]:
        """Every counter and setting ESTADO and the metrics show."""
        return self.control.status()

    def flush_counts(self) -> None:
        """Log what the once-a-second log lines have not said yet."""
        self.throttles.flush()

    async def serve(self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, serve, and return once shut down and every connection closed.

        Reports the bound addresses (``ip:port``) through ``task_status`` once
        it really listens.  Raises OSError if it cannot listen.
        """
        config, control = self.config, self.control
        listeners = await self._open_listeners()
        addresses = [format_address(sock.getsockname()) for sock, _ in listeners]
        control.idle_timeout = idle_timeout_in_force(config, addresses)
        self.registry.max_per_source = clients_per_ip_in_force(config, addresses)
        if (warning := exposure_warning(addresses, config)) is not None:
            log.warning("%s", warning, extra={"event": "exposure"})
        if config.redis is not None and config.token is None and not config.proxy_protocol:
            # Behind a proxy on this machine every client would look local,
            # and loopback may send DESCONEXION: to the whole deployment.
            log.warning(
                "a deployment node without token: if a load balancer or proxy on this machine relays "
                "clients to it, every one of them looks local and may stop every node with DESCONEXION; "
                "set token=TOKEN, or proxy_protocol=True behind a proxy",
                extra={"event": "exposure"},
            )
        control.io_path = io_path(config.io)
        log.info(
            "eco_trio %s, pid %d, I/O path %s; limits: max_clients=%d, max_line=%d, "
            "idle_timeout=%s, send_timeout=%g s",
            __version__,
            os.getpid(),
            control.io_path,
            config.max_clients,
            config.max_line,
            f"{control.idle_timeout:g} s" if control.idle_timeout is not None else "off",
            config.send_timeout,
            extra={"event": "start"},
        )
        try:
            endpoint = await self._open_metrics()
        except BaseException:
            for sock, _ in listeners:
                sock.close()
            raise
        try:
            if config.redis is None:
                await self._serve(listeners, addresses, task_status, endpoint)
            else:
                await self._serve_in_deployment(listeners, addresses, task_status, endpoint)
        finally:
            if endpoint is not None:
                endpoint.listener.close()

    async def _serve_in_deployment(
        self,
        listeners: Listeners,
        addresses: list[str],
        task_status: trio.TaskStatus[list[str]],
        endpoint: MetricsEndpoint | None,
    ) -> None:
        """Join the deployment on ``config.redis``, then serve as one of its
        nodes (cluster/node.py); leave it at the end.  Raises
        ``DeploymentError`` when it cannot join."""
        try:
            from eco_trio.server.cluster.node import Node
        except ImportError as exc:
            raise DeploymentError(
                f"redis needs a Redis client that this installation lacks ({exc.name}): "
                "pip install 'eco_trio[cluster]'"
            ) from None

        config, control = self.config, self.control
        node = Node(
            config.redis or "",
            config.deployment,
            name=config.node,
            heartbeat=config.heartbeat,
            lease=config.lease,
            cap=config.max_clients,
        )
        try:
            async with node:
                await node.join(addresses[0], control.local_status)
                control.node = node
                # The heartbeat outlives the acceptors: it runs through the
                # grace period, and stopping it never delays the notice.
                async with trio.open_nursery() as background:
                    await background.start(node.run, self._stop_from_deployment)
                    await self._serve(listeners, addresses, task_status, endpoint)
                    background.cancel_scope.cancel()
        except BaseException:
            for sock, _ in listeners:
                sock.close()  # (a second close is harmless)
            raise
        finally:
            control.node = None

    async def _stop_accepting_at_shutdown(self) -> None:
        await self.control.wait_for_shutdown()
        self._stop_accepting.set()

    async def _drain(self, grace: float) -> None:
        """Not accepting any more: wait for the clients to leave, up to
        ``grace`` seconds, or for a shutdown."""
        log.info(
            "draining: no new clients; %s may stay up to %g s",
            plural(len(self.registry), "client"),
            grace,
            extra={"event": "drain"},
        )
        with trio.move_on_after(grace):
            # (A poll, 20 times a second for at most a grace period, once
            # per hand-over: cheaper to read than an event on every leave.)
            while len(self.registry) and not self.shutting_down:  # noqa: ASYNC110
                await trio.sleep(0.05)
        self.control.shutdown()

    def _stop_from_deployment(self, why: str) -> None:
        """Another node accepted a DESCONEXION: stop this one too."""
        if not self.shutting_down:
            log.info("shutting down: %s", why, extra={"event": "desconexion"})
            self.control.stopped_by_desconexion = True
            self.control.shutdown()

    async def _open_listeners(self) -> Listeners:
        """The client listeners: TLS ones if configured, then plain ones."""
        config = self.config
        context = None
        if config.tls_cert is not None and config.tls_key is not None:
            context = tls.server_context(config.tls_cert, config.tls_key, config.tls_ca)
        if self._given is not None:
            for sock in self._given:
                sock.setblocking(False)
            plain_port = config.plain_port
            return [
                (sock, None if plain_port is not None and sock.getsockname()[1] == plain_port else context)
                for sock in self._given
            ]
        reuse = config.reuse_port
        listeners: Listeners = [
            (sock, context)
            for sock in await open_listeners(config.host, config.port, config.backlog, reuse_port=reuse)
        ]
        if config.plain_port is not None:
            try:
                plain = await open_listeners(config.host, config.plain_port, config.backlog, reuse_port=reuse)
            except BaseException:
                for sock, _ in listeners:
                    sock.close()
                raise
            listeners += [(sock, None) for sock in plain]
        return listeners

    async def _open_metrics(self) -> MetricsEndpoint | None:
        """The ``/metrics`` endpoint, listening, if configured."""
        if self.config.metrics is None:
            return None
        from eco_trio.server.metrics import MetricsEndpoint

        if self._given_metrics is not None:
            metrics_socket = self._given_metrics
            metrics_socket.setblocking(False)
        else:
            metrics_socket = await open_one_listener(*parse_address(self.config.metrics), self.config.backlog)
        endpoint = MetricsEndpoint(self.status, metrics_socket, self.throttles.line(logging.WARNING))
        self.metrics_address = format_address(metrics_socket.getsockname())
        log.info("metrics on http://%s/metrics", self.metrics_address, extra={"event": "metrics"})
        return endpoint

    async def _serve(
        self,
        listeners: Listeners,
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
                                self.admission.accept_loop, sock, connections, readiness, sock_context
                            )
                        for address, (_, sock_context) in zip(addresses, listeners, strict=True):
                            kind = "TLS" if sock_context is not None else "plain text"
                            log.info("listening on %s (%s)", address, kind, extra={"event": "listening"})
                        acceptors.start_soon(self.throttles.flush_every_second)
                        if self.control.node is not None:
                            acceptors.start_soon(self.admission.admit_in_batches, connections, readiness)
                        if endpoint is not None:
                            acceptors.start_soon(endpoint.serve)
                        task_status.started(addresses)
                        acceptors.start_soon(self._stop_accepting_at_shutdown)
                        await self._stop_accepting.wait()
                        acceptors.cancel_scope.cancel()
                    self.handshakes.cancel_all()  # nobody is owed a goodbye before their hello
                finally:
                    for sock, _ in listeners:
                        readiness.forget(sock.fileno())
                        sock.close()
                if self._draining and not self.shutting_down:
                    await self.admission.admit_waiting(connections, readiness)
                    await self._drain(config.grace)
                self.admission.close_waiting()
                log.info(
                    "shutting down: notifying %s (grace %g s)",
                    plural(len(self.registry), "client"),
                    config.grace,
                    extra={"event": "shutdown"},
                )
                self.registry.notify_all(protocol.encode_line(protocol.SHUTDOWN_NOTICE))
                connections_scope.deadline = trio.current_time() + config.grace
        if connections_scope.cancelled_caught:
            log.info("grace period over: remaining connections cancelled", extra={"event": "grace_over"})
        self.flush_counts()
        log.info("server stopped", extra={"event": "stopped"})


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
