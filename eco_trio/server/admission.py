"""Who gets in: the accept loop, admission against the limits, the quick
refusal, and the TLS handshake that comes before admission on a TLS port.

Admission is decided in the accept loop, in the kernel's accept order,
before any task exists: the clients turned away are always the newest,
LISTAR shows arrival order, and a refusal costs no task and no lingering.
"""

from __future__ import annotations

import contextlib
import ipaddress
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
from eco_trio.transport.conduit import PrefixedStream
from eco_trio.transport.readiness import Readiness
from eco_trio.transport.socket_stream import SocketStream
from eco_trio.wire import protocol
from eco_trio.wire import proxy as proxy_protocol
from eco_trio.wire.visible import escape

log = logging.getLogger("eco_trio.server")

#: Connections accepted in a row before the accept loop lets others run.
_ACCEPT_BATCH = 64
#: How long a client refused after its TLS handshake gets to take the line
#: that says why.
_REFUSAL_WAIT = 1.0
#: Addresses whose trust is remembered (then the memo starts again).
_TRUST_MEMO_SIZE = 1024
#: The first read of a trusted proxy's connection: a v1 header (at most 107
#: bytes) or a v2 one with up to 240 bytes of TLVs.  (Small enough for
#: Python's small-object allocator; a larger header is read on in
#: _serve_proxied.)
_FIRST_READ = 256
#: How long a trusted proxy has to send its PROXY header.
PROXY_HEADER_TIMEOUT = 3.0
#: What a client hears from a node that has lost its deployment's Redis.
_FENCED_LINE: Final = protocol.encode_line(
    "ERROR este nodo ha perdido el contacto con su despliegue (Redis); inténtalo más tarde."
)
#: Every connection task's name, given so trio does not build one string per
#: task (an idle connection keeps it).
_TASK_NAME: Final = "eco_trio.connection"


def _then(stream: SocketStream, rest: bytes) -> trio.abc.HalfCloseableStream:
    """The conversation's stream: ``rest`` (a proxied client's first bytes,
    which came with its PROXY header) first, then ``stream``."""
    return PrefixedStream(stream, rest) if rest else stream


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
        # --proxy-protocol: who may send a PROXY header (None: nobody, off).
        config = control.config
        networks = config.trusted_proxies or ("127.0.0.0/8", "::1/128")
        self._trusted = (
            [ipaddress.ip_network(network) for network in networks] if config.proxy_protocol else None
        )
        # Who is trusted, by IP: a balancer's few addresses connect again and
        # again, and ipaddress costs microseconds a connection.  Bounded, as
        # direct clients may come from anywhere.
        self._trust_memo: dict[str, bool] = {}
        self._proxy_failures = throttles.line(logging.WARNING)
        self._health_checks = throttles.line(logging.DEBUG)
        #: Set when the certificate files are reloaded (Server.reload_tls).
        self.tls_context: ssl.SSLContext | None = None
        # In a deployment: accepted, registered here, waiting for Redis.
        self._waiting: list[tuple[socket.socket, ClientEntry]] = []
        self._more = trio.Event()

    async def accept_loop(
        self,
        listener: socket.socket,
        connections: trio.Nursery,
        readiness: Readiness,
        context: ssl.SSLContext | None = None,
    ) -> None:
        """Accept until the backlog is empty, then wait; forever."""
        send_timeout = self.control.config.send_timeout
        node = self.control.node
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
                if not OPTIONS_INHERITED:
                    tune(sock)
                early: proxy_protocol.Proxied | proxy_protocol.Local | bytes | BaseException | None = None
                if self._trusted is not None and self._is_trusted(peer):
                    # A load balancer's connection: the client's address is
                    # in the PROXY header it sends first.  It is usually here
                    # already (a balancer sends it with the connect): then
                    # the client is admitted below, as a direct one is;
                    # otherwise a task waits for it (_serve_proxied).  (No
                    # TLS context here: the configuration refuses the two
                    # together.)
                    early = self._proxy_header_now(sock, peer)
                if type(early) is proxy_protocol.Proxied and node is None:
                    # (The balancer's own address is not needed: not formatted.)
                    address, rest, early = early.address, early.rest, None
                else:
                    address, rest = format_address(peer), b""
                if early is not None:  # a proxied connection not admitted here
                    if isinstance(early, (proxy_protocol.Local, BaseException)):
                        sock.close()  # a health check (counted) or a refusal (logged)
                    else:  # the rest of a header to wait for, or a deployment's admission
                        stream = SocketStream(sock, readiness, send_timeout=send_timeout)
                        connections.start_soon(self._serve_proxied, stream, address, early, name=_TASK_NAME)
                elif context is not None:
                    # Not a client until its handshake is done: see handshakes.py.
                    stream = SocketStream(sock, readiness, send_timeout=send_timeout)
                    # The newest context: SIGUSR2 reloads the certificate files.
                    current = self.tls_context or context
                    connections.start_soon(self._serve_tls, stream, address, current, name=_TASK_NAME)
                elif isinstance(entry := self._register(address), bytes):
                    refuse(sock, entry)
                elif node is not None:
                    self._waiting.append((sock, entry))  # see admit_in_batches
                    self._more.set()
                else:
                    self._admitted(entry)
                    stream = SocketStream(sock, readiness, send_timeout=send_timeout)
                    connections.start_soon(
                        serve_connection, self.control, _then(stream, rest), entry, name=_TASK_NAME
                    )
                accepted += 1
                if accepted % _ACCEPT_BATCH == 0:
                    await trio.lowlevel.checkpoint()  # a connection storm must not starve the rest

    async def admit_in_batches(self, connections: trio.Nursery, readiness: Readiness) -> None:
        """In a deployment: admit whoever the accept loops have accepted,
        all of them in one round trip to Redis.  While a round trip is under
        way the accept loops go on accepting, so under load the batches
        grow and a connection costs a fraction of a round trip; when idle,
        a batch is one connection and waits for nothing else.

        Resource handling: what is still waiting when this is cancelled
        stays for :meth:`admit_waiting` or :meth:`close_waiting`."""
        while True:
            await self._more.wait()
            self._more = trio.Event()
            while self._waiting:
                batch, self._waiting = self._waiting, []
                await self._admit_together(batch, connections, readiness)

    async def admit_waiting(self, connections: trio.Nursery, readiness: Readiness) -> None:
        """Admit those accepted before the accept loops stopped (a worker
        handing over: nobody it accepted is dropped)."""
        while self._waiting:
            batch, self._waiting = self._waiting, []
            await self._admit_together(batch, connections, readiness)

    def close_waiting(self) -> None:
        """Shutting down: close those accepted but not yet admitted."""
        for sock, entry in self._waiting:
            self.control.registry.unregister(entry)
            sock.close()
        self._waiting = []

    async def _admit_together(
        self, batch: list[tuple[socket.socket, ClientEntry]], connections: trio.Nursery, readiness: Readiness
    ) -> None:
        """Admit an accept batch against the deployment-wide cap, in accept
        order: the first ones the cap allows start their conversations, the
        rest are told why not and closed."""
        node = self.control.node
        assert node is not None
        # Shielded, and bounded by the call's own deadline: a batch under way
        # is finished, not dropped, when the accept loops are stopped.
        with trio.CancelScope(shield=True):
            verdict = await node.admit([entry.address for _, entry in batch])
        admitted, first = verdict if verdict is not None else (0, 0)
        send_timeout = self.control.config.send_timeout
        for index, (sock, entry) in enumerate(batch):
            if index < admitted:
                entry.seq = first + index
                node.joined(entry)
                self._admitted(entry)
                stream = SocketStream(sock, readiness, send_timeout=send_timeout)
                connections.start_soon(serve_connection, self.control, stream, entry, name=_TASK_NAME)
            else:
                self.control.registry.unregister(entry)
                refuse(sock, self._deployment_refusal(entry.address, fenced=verdict is None))

    def _deployment_refusal(self, address: str, *, fenced: bool) -> bytes:
        """The line for a client the deployment did not admit (counted,
        logged once a second)."""
        self.control.totals.refused["full"] += 1
        if fenced:
            self._refusals.note("refused %s: this node cannot reach its deployment (Redis)", address)
            return _FENCED_LINE
        self._refusals.note(
            "refused %s: the deployment already has %d clients (max_clients)",
            address,
            self.control.config.max_clients,
        )
        return self._refusal_line

    def admit(self, address: str) -> ClientEntry | bytes:
        """Register a new client of this server alone, in accept order; or
        the line that refuses it (counted, logged once a second) when the
        server is full, or full for its source."""
        entry = self._register(address)
        if not isinstance(entry, bytes):
            self._admitted(entry)
        return entry

    def _register(self, address: str) -> ClientEntry | bytes:
        """The local half of admission: the registry's limits."""
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
        return entry

    def _admitted(self, entry: ClientEntry) -> None:
        """Count and log a client that is in."""
        self.control.totals.connections += 1
        if log.isEnabledFor(logging.INFO):
            log.info(
                "connected %s (%s)",
                escape(entry.address),
                plural(len(self.control.registry), "client"),
                extra={"event": "connected", "peer": entry.address},
            )

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
            entry = await self._admit_one(address)
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

    def _is_trusted(self, peer: object) -> bool:
        assert self._trusted is not None
        host = peer[0] if isinstance(peer, tuple) else ""
        trusted = self._trust_memo.get(host)
        if trusted is None:
            try:
                ip = ipaddress.ip_address(host)
            except ValueError:
                trusted = False
            else:
                trusted = any(ip in network for network in self._trusted)
            if len(self._trust_memo) >= _TRUST_MEMO_SIZE:
                self._trust_memo.clear()
            self._trust_memo[host] = trusted
        return trusted

    def _proxy_header_now(
        self, sock: socket.socket, peer: object
    ) -> proxy_protocol.Proxied | proxy_protocol.Local | bytes | BaseException:
        """What a trusted proxy (at ``peer``) has sent already: a whole
        header, the bytes of a partial one (``b""``: nothing yet), or the
        error that refuses it (counted and logged here).  Health checks are
        counted here.

        This runs once a connection, with the server's other work in
        between, so each step costs several times what it does in a loop:
        one read (of at most _FIRST_READ bytes), one parse, no more."""
        try:
            data = sock.recv(_FIRST_READ, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return b""
        except OSError as exc:
            return exc
        if not data:  # connect and close: a plain TCP health check
            self._count_health_check("TCP health check from %s", peer)
            return proxy_protocol.Local(b"")
        try:
            header = self._header_in(data, peer)
        except proxy_protocol.BadHeader as exc:
            self._proxy_refused(format_address(peer), str(exc))
            return exc
        return data if header is None else header

    def _header_in(self, data: bytes, proxy: object) -> proxy_protocol.Proxied | proxy_protocol.Local | None:
        """The PROXY header ``data`` starts with (None: not all of it yet);
        a health check's is counted.  Raises BadHeader.  ``proxy``: its
        socket address, or that address as text (format_address takes
        both), formatted only for a health check's log line."""
        header = proxy_protocol.parse(data)
        if type(header) is proxy_protocol.Local:
            self._count_health_check("health check from %s", proxy)
        return header

    def _count_health_check(self, message: str, proxy: object) -> None:
        self.control.totals.health_checks += 1
        self._health_checks.note(message, escape(format_address(proxy)))

    async def _serve_proxied(
        self, stream: SocketStream, proxy: str, early: bytes | proxy_protocol.Proxied = b""
    ) -> None:
        """A trusted proxy's connection: read its PROXY header (bounded in
        size and time), then admit and serve the client it names, as if it
        had connected directly.  A LOCAL header (the balancer's health
        check), or a connection closed before any header (a plain TCP
        check), is counted, not logged as a client.

        Resource handling: ``stream`` is closed here unless the
        conversation takes it over."""
        handed_over = False
        try:
            header = (
                early
                if isinstance(early, proxy_protocol.Proxied)
                else await self._read_proxy_header(stream, proxy, early)
            )
            if header is None:
                return
            if isinstance(header, proxy_protocol.Local):
                return  # (counted where it was read)
            entry = await self._admit_one(header.address)
            if isinstance(entry, bytes):
                with trio.move_on_after(_REFUSAL_WAIT), contextlib.suppress(trio.BrokenResourceError):
                    await stream.send_all(entry)
                return
            handed_over = True
            await serve_connection(self.control, _then(stream, header.rest), entry)
        finally:
            if not handed_over:
                stream.close()

    async def _read_proxy_header(
        self, stream: SocketStream, proxy: str, data: bytes = b""
    ) -> proxy_protocol.Proxied | proxy_protocol.Local | None:
        """The header (``data``: what came of it already), or None (logged
        once a second, counted) when there is none in time, it is malformed,
        or the proxy closed first.  Health checks are counted here."""
        with trio.move_on_after(PROXY_HEADER_TIMEOUT):
            try:
                while True:
                    if data and (header := self._header_in(data, proxy)) is not None:
                        return header
                    if len(data) >= proxy_protocol.MAX_HEADER:
                        break
                    chunk = await stream.receive_some(proxy_protocol.MAX_HEADER - len(data))
                    if not chunk:
                        if not data:  # connect and close: a plain TCP health check
                            self._count_health_check("TCP health check from %s", proxy)
                            return None
                        break
                    data += chunk
            except proxy_protocol.BadHeader as exc:
                self._proxy_refused(proxy, str(exc))
                return None
            except trio.BrokenResourceError:
                return None
        self._proxy_refused(proxy, "no PROXY header")
        return None

    def _proxy_refused(self, proxy: str, why: str) -> None:
        self.control.totals.refused["PROXY header"] += 1
        self._proxy_failures.note("closed a connection from proxy %s: %s", escape(proxy), why)

    async def _admit_one(self, address: str) -> ClientEntry | bytes:
        """Admission for one client (after its TLS handshake)."""
        entry = self._register(address)
        node = self.control.node
        if isinstance(entry, bytes):
            return entry
        if node is None:
            self._admitted(entry)
            return entry
        verdict = await node.admit([address])
        if verdict is None or verdict[0] == 0:
            self.control.registry.unregister(entry)
            return self._deployment_refusal(address, fenced=verdict is None)
        entry.seq = verdict[1]
        node.joined(entry)
        self._admitted(entry)
        return entry

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
