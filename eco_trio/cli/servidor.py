"""``servidor``: its options, and running the server until it is stopped."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import re
import signal
import socket
import sys

import trio

from eco_trio.cli.common import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    Parser,
    not_negative,
    not_negative_int,
    only,
    port_number,
    positive,
    reason,
    token_from,
)
from eco_trio.server import logs, open_files, service
from eco_trio.server.cluster import DeploymentError
from eco_trio.server.config import REMOTE_IDLE_TIMEOUT, REMOTE_MAX_CLIENTS_PER_IP, ServerConfig, parse_address
from eco_trio.server.core import Server
from eco_trio.server.listeners import open_listeners, open_one_listener
from eco_trio.server.registry import format_address
from eco_trio.server.supervisor import Supervisor, worker_count
from eco_trio.transport import tls
from eco_trio.transport.readiness import IO_PATHS
from eco_trio.wire.protocol import DEFAULT_MAX_LINE

log = logging.getLogger("eco_trio.server")


def add_parser(commands: argparse._SubParsersAction[Parser]) -> None:
    server = commands.add_parser(
        "servidor",
        help="run the server",
        description="Run the server. Stops on DESCONEXION, Ctrl-C, SIGTERM or SIGHUP, telling clients first. "
        "Who may send DESCONEXION: nobody with --no-remote-shutdown; otherwise a client whose "
        "certificate name is a --tls-admin (mutual TLS); otherwise, with --token, anyone who sends "
        "'DESCONEXION TOKEN'; without a token, any loopback client. SIGUSR2 reads the TLS "
        "certificate files again, and with --workers replaces the workers one at a time.",
    )
    defaults = ServerConfig()
    server.add_argument("--host", default=defaults.host, help="address to listen on (default: %(default)s)")
    server.add_argument(
        "--port",
        type=port_number,
        default=defaults.port,
        help="port; 0 picks a free one (default: %(default)s)",
    )
    server.add_argument(
        "--grace",
        type=positive(float),
        default=defaults.grace,
        metavar="SECONDS",
        help="on shutdown, time clients get to receive the notice (default: %(default)s)",
    )
    server.add_argument(
        "--pause",
        type=positive(float),
        default=defaults.pause,
        metavar="SECONDS",
        help="silence after which an unterminated message is answered (default: %(default)s)",
    )
    server.add_argument(
        "--max-line",
        type=positive(int),
        default=DEFAULT_MAX_LINE,
        metavar="BYTES",
        help="longest accepted line; longer closes the connection (default: %(default)s)",
    )
    server.add_argument(
        "--max-clients",
        type=positive(int),
        default=defaults.max_clients,
        metavar="N",
        help="connections served at once; more are turned away (default: %(default)s)",
    )
    server.add_argument(
        "--max-clients-per-ip",
        type=not_negative_int,
        default=None,
        metavar="N",
        help="connections served at once from one address (IPv6: one /64); 0: no limit (default: none "
        f"on loopback, {REMOTE_MAX_CLIENTS_PER_IP} when listening beyond it)",
    )
    server.add_argument(
        "--idle-timeout",
        type=not_negative,
        default=None,
        metavar="SECONDS",
        help="close a connection after this long without a complete line (ended by a newline; a message "
        "answered after --pause does not count); 0: never (default: never "
        f"on loopback, {REMOTE_IDLE_TIMEOUT:g} s when listening beyond it)",
    )
    server.add_argument(
        "--send-timeout",
        type=positive(float),
        default=defaults.send_timeout,
        metavar="SECONDS",
        help="close a connection that takes none of our replies for this long (default: %(default)s)",
    )
    secret = server.add_mutually_exclusive_group()
    secret.add_argument(
        "--token",
        default=None,
        help="require the token (AUTENTICAR TOKEN, or 'DESCONEXION TOKEN') to shut down, for ESTADO, and "
        "for LISTAR beyond loopback; one word, any bytes. It shows in ps: prefer --token-file or "
        "$ECO_TRIO_TOKEN (default: $ECO_TRIO_TOKEN; unset: DESCONEXION only from loopback)",
    )
    secret.add_argument(
        "--token-file",
        metavar="FILE",
        help="read the token from FILE (its first line), which keeps it out of ps",
    )
    server.add_argument("--no-remote-shutdown", action="store_true", help="refuse DESCONEXION entirely")
    server.add_argument(
        "--tls-cert", metavar="FILE", help="certificate (PEM): --port then speaks TLS (1.2 or later)"
    )
    server.add_argument("--tls-key", metavar="FILE", help="the certificate's private key (PEM)")
    server.add_argument(
        "--tls-ca",
        metavar="FILE_OR_DIR",
        help="require client certificates signed by these CAs (mutual TLS)",
    )
    server.add_argument(
        "--tls-handshake-timeout",
        type=positive(float),
        default=defaults.tls_handshake_timeout,
        metavar="SECONDS",
        help="close a connection whose TLS handshake takes longer (default: %(default)s)",
    )
    server.add_argument(
        "--tls-admin",
        action="append",
        default=[],
        metavar="FIELD=NAME",
        help="a client certificate name that may send DESCONEXION without the token, with the field "
        "it must be in: CN=, DNS=, email=, URI= or IP= (e.g. CN=admin; a certificate with two CNs "
        "matches no CN=); repeat for more (needs --tls-ca)",
    )
    server.add_argument(
        "--max-handshakes",
        type=positive(int),
        default=defaults.max_handshakes,
        metavar="N",
        help="TLS connections still in their handshake at once, apart from --max-clients; past it the "
        "oldest is dropped (default: %(default)s)",
    )
    server.add_argument(
        "--handshake-rate",
        type=not_negative,
        default=defaults.handshake_rate,
        metavar="PER_SECOND",
        help="TLS handshakes started per second, in all; more wait their turn; 0: no bound "
        "(default: %(default)g)",
    )
    server.add_argument(
        "--handshake-rate-per-ip",
        type=not_negative,
        default=defaults.handshake_rate_per_ip,
        metavar="PER_SECOND",
        help="TLS handshakes started per second from one client address; 0: no bound (default: %(default)g)",
    )
    server.add_argument(
        "--plain-port",
        type=port_number,
        metavar="PORT",
        help="with TLS on --port, also listen in plain text on this port",
    )
    server.add_argument(
        "--metrics",
        metavar="[HOST:]PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (HOST: 127.0.0.1 if left out) "
        "(default: off)",
    )
    cluster = server.add_argument_group(
        "many servers as one (a deployment on Redis; needs pip install eco_trio[cluster])"
    )
    cluster.add_argument(
        "--redis",
        metavar="URL",
        default=os.environ.get("ECO_TRIO_REDIS_URL") or None,
        help="join the deployment on this Redis (redis://, rediss:// or unix://): LISTAR, "
        "DESCONEXION, --max-clients and ESTADO then span every node on it; $ECO_TRIO_REDIS_URL "
        "keeps a password out of ps (default: off)",
    )
    cluster.add_argument(
        "--deployment",
        metavar="NAME",
        default=defaults.deployment,
        help="the deployment's name: its keys' prefix in Redis (default: %(default)s)",
    )
    cluster.add_argument(
        "--node", metavar="NAME", help="this node's name in the deployment (default: HOSTNAME:PORT)"
    )
    cluster.add_argument(
        "--heartbeat",
        type=positive(float),
        default=defaults.heartbeat,
        metavar="SECONDS",
        help="how often a node tells Redis it lives, and sends its counters (default: %(default)s)",
    )
    cluster.add_argument(
        "--lease",
        type=positive(float),
        default=defaults.lease,
        metavar="SECONDS",
        help="how long a silent node still counts; past it, its clients leave LISTAR and its share "
        "of --max-clients is freed, and a node cut off from Redis refuses new clients (default: "
        "%(default)s)",
    )
    server.add_argument(
        "--workers",
        metavar="N",
        help="run N worker processes (auto: one per usable core) under a supervisor that keeps them "
        "alive, as one deployment (a private redis-server unless --redis is given); SIGUSR2 "
        "replaces them one at a time without dropping a connection (default: one process)",
    )
    server.add_argument(
        "--proxy-protocol",
        action="store_true",
        help="behind a load balancer (HAProxy, nginx stream, a cloud one): connections from a trusted "
        "proxy start with a PROXY header (v1 or v2) naming the client, whose address is then used "
        "everywhere: LISTAR, the log, the limits, the DESCONEXION rule (default: off)",
    )
    server.add_argument(
        "--trusted-proxy",
        metavar="CIDR",
        action="append",
        default=[],
        help="with --proxy-protocol: an address or network allowed to send PROXY headers; repeatable "
        "(default: loopback)",
    )
    server.add_argument(
        "--reuse-port",
        action="store_true",
        help="with --workers (Linux): each worker listens on the port itself (SO_REUSEPORT) and the "
        "kernel spreads connections evenly; but connections queued for a worker that hangs wait "
        "for it (default: one listener, shared)",
    )
    # How a supervisor starts a worker (not for people): inherited listening
    # sockets, the worker's name, and the pipes it reports on.
    server.add_argument("--listen-fd", type=int, action="append", default=[], help=argparse.SUPPRESS)
    server.add_argument("--metrics-fd", type=int, help=argparse.SUPPRESS)
    server.add_argument("--worker", help=argparse.SUPPRESS)
    # The --redis given is the supervisor's private one: an orphaned worker
    # stops it (where no parent-death signal does: macOS, the BSDs).
    server.add_argument("--private-redis", action="store_true", help=argparse.SUPPRESS)
    server.add_argument(
        "--io",
        choices=IO_PATHS,
        default="auto",
        help="I/O path: epoll is the Linux fast path, portable runs wherever trio does; auto picks "
        "$ECO_TRIO_IO if set, else epoll where it exists (default: %(default)s)",
    )
    server.add_argument(
        "--fifo",
        action="store_true",
        help="run connection tasks first in, first out (a steadier tail at many busy clients); it "
        "relies on trio's private scheduler state and is off unless asked for",
    )
    server.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="(default: %(default)s)",
    )
    server.add_argument(
        "--log-format",
        default="text",
        choices=logs.FORMATS,
        help="text lines, or one JSON object per line (default: %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    # argv and the environment are bytes on POSIX: fsencode gives back the
    # token exactly as typed, even if it is not UTF-8.
    try:
        token = token_from(args)
    except OSError as exc:
        print(f"{args.prog} servidor: error: cannot read the token file: {reason(exc)}", file=sys.stderr)
        return EXIT_USAGE
    try:
        config = ServerConfig(
            host=args.host,
            port=args.port,
            grace=args.grace,
            pause=args.pause,
            max_line=args.max_line,
            max_clients=args.max_clients,
            max_clients_per_ip=args.max_clients_per_ip,
            idle_timeout=args.idle_timeout,
            send_timeout=args.send_timeout,
            token=token,
            remote_shutdown=not args.no_remote_shutdown,
            io=_io_path(args.io),
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_ca=args.tls_ca,
            tls_handshake_timeout=args.tls_handshake_timeout,
            tls_admin=tuple(args.tls_admin),
            max_handshakes=args.max_handshakes,
            handshake_rate=args.handshake_rate,
            handshake_rate_per_ip=args.handshake_rate_per_ip,
            plain_port=args.plain_port,
            metrics=args.metrics,
            redis=args.redis,
            deployment=args.deployment,
            node=args.node,
            heartbeat=args.heartbeat,
            lease=args.lease,
            reuse_port=args.reuse_port,
            proxy_protocol=args.proxy_protocol,
            trusted_proxies=tuple(args.trusted_proxy),
        )
        if config.tls_cert is not None and config.tls_key is not None:
            tls.server_context(config.tls_cert, config.tls_key, config.tls_ca)  # fail now, in one line
    except ValueError as exc:  # tls.TLSFileError among them: it names the file
        print(f"{args.prog} servidor: error: {_in_flag_words(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    if args.worker is not None:
        # A worker is a node named after its slot (within --node's name, if given).
        config = dataclasses.replace(
            config, node=f"{config.node}-{args.worker}" if config.node else args.worker
        )
        if args.metrics_fd is None:
            config = dataclasses.replace(config, metrics=None)  # one endpoint: another worker serves it
    logs.configure(args.log_level, args.log_format, sys.stderr, rewrite=_FlagWords(), worker=args.worker)
    try:
        config = dataclasses.replace(
            config,
            max_clients=open_files.fit_clients(
                config.max_clients, config.max_handshakes if config.tls_cert else 0
            ),
        )
        with _task_order(args.fifo):
            if args.workers is not None:
                return trio.run(_supervise, config, args)
            if args.worker is not None:
                return trio.run(_serve_as_worker, config, args)
            return trio.run(_serve_until_stopped, config)
    except BaseException as exc:
        error = only(exc, OSError)
        if only(exc, KeyboardInterrupt) is not None:
            return EXIT_INTERRUPTED  # Ctrl-C before the signal handling was set up: nothing to tell
        if (unjoined := only(exc, DeploymentError)) is not None:
            print(f"{args.prog} servidor: error: {_in_flag_words(str(unjoined))}", file=sys.stderr)
            return EXIT_FAILURE
        if error is None:
            raise
        address = error.filename or format_address((args.host, args.port))
        print(f"{args.prog} servidor: cannot listen on {address}: {reason(error)}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        logs.stop()  # what is queued goes out, unless stderr is stuck


#: Signals that shut the server down gracefully: Ctrl-C, a service manager's
#: stop, and the terminal or SSH session closing (SIGHUP), where they exist.
#: Reloads the TLS certificate files (and, under --workers, replaces the workers).
_RELOAD_SIGNAL = getattr(signal, "SIGUSR2", None)
_SHUTDOWN_SIGNALS = [
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGBREAK") if hasattr(signal, name)
]


async def _serve_until_stopped(config: ServerConfig) -> int:
    """Serve; the first shutdown signal shuts down gracefully, a second one
    during the grace period stops at once.  Under systemd: READY=1 once
    listening, STOPPING=1 when shutting down, WATCHDOG=1 while the loop
    runs, and the sockets it passed (socket activation)."""
    activated = service.activated_sockets(os.environ)
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)  # (not for the processes we start)
    server = Server(config, listeners=activated or None)
    notifier = service.Notifier.from_environment(os.environ)
    watchdog = service.watchdog_interval(os.environ)
    forced = False
    reload = [_RELOAD_SIGNAL] if _RELOAD_SIGNAL is not None else []
    with trio.open_signal_receiver(*_SHUTDOWN_SIGNALS, *reload) as signals:
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                nonlocal forced
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if signum == _RELOAD_SIGNAL:
                        _reload_tls(server)
                        continue
                    if server.shutting_down:
                        log.warning("%s again: stopping now", name, extra={"event": "signal"})
                        forced = True
                        nursery.cancel_scope.cancel()
                        return
                    log.info(
                        "%s: shutting down (send it again to stop at once)", name, extra={"event": "signal"}
                    )
                    server.shutdown()

            async def tell_the_manager() -> None:
                await server.control.wait_for_shutdown()
                notifier.send(STOPPING=1, STATUS="shutting down")

            async def pet_the_watchdog(interval: float) -> None:
                while True:
                    notifier.send(WATCHDOG=1)
                    await trio.sleep(interval)

            async def serve(task_status: trio.TaskStatus[list[str]]) -> None:
                await server.serve(task_status=task_status)
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch_signals)
            addresses = await nursery.start(serve)
            notifier.send(READY=1, STATUS=f"serving on {', '.join(addresses)}", MAINPID=os.getpid())
            nursery.start_soon(tell_the_manager)
            if watchdog is not None and notifier.active:
                nursery.start_soon(pet_the_watchdog, watchdog)
    if forced:
        server.flush_counts()
        log.warning("server stopped at once: connections still open were cut", extra={"event": "stopped"})
    return EXIT_INTERRUPTED if forced else EXIT_OK


async def _supervise(config: ServerConfig, args: argparse.Namespace) -> int:
    """--workers: bind, then start and keep the workers (server/supervisor.py)."""
    try:
        count = worker_count(args.workers)
    except ValueError:
        raise DeploymentError(
            f"workers takes a number of at least 1, or auto, not {args.workers!r}"
        ) from None
    # With --reuse-port the supervisor only holds the port (bound, not
    # listening: it takes no connections) and each worker listens itself.
    bind = {"reuse_port": config.reuse_port, "listen": not config.reuse_port}
    listeners = await open_listeners(config.host, config.port, config.backlog, **bind)
    plain = (
        await open_listeners(config.host, config.plain_port, config.backlog, **bind)
        if config.plain_port
        else []
    )
    metrics_socket = None
    if config.metrics is not None:
        metrics_socket = await open_one_listener(*parse_address(config.metrics), config.backlog)
        log.info("metrics on http://%s/metrics", format_address(metrics_socket.getsockname()))
    mode = "each worker listens itself (--reuse-port)" if config.reuse_port else "one listener, shared"
    for sock in listeners + plain:
        address = format_address(sock.getsockname())
        log.info("listening on %s (%s)", address, mode, extra={"event": "listening"})
    worker_argv = _worker_argv(args.argv)
    if config.reuse_port:  # the port the supervisor holds, which --port 0 chose
        worker_argv += ["--port", str(listeners[0].getsockname()[1])]
        if plain:
            worker_argv += ["--plain-port", str(plain[0].getsockname()[1])]
    supervisor = Supervisor(
        count,
        worker_argv,
        listeners=[] if config.reuse_port else listeners + plain,
        metrics_socket=metrics_socket,
        redis_url=config.redis,
        deployment=config.deployment,
        grace=config.grace,
    )
    try:
        return await supervisor.run()
    finally:
        for sock in listeners + plain + ([metrics_socket] if metrics_socket else []):
            sock.close()


def _worker_argv(argv: list[str]) -> list[str]:
    """The command line a worker gets: the supervisor's, without the
    command word and --workers."""
    out, skip = [], False
    for arg in argv[1:] if argv[:1] == ["servidor"] else argv:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            out.append(arg)
    return out


async def _serve_as_worker(config: ServerConfig, args: argparse.Namespace) -> int:
    """One worker of a supervisor: serve its sockets, say ``ready`` and then
    ``alive`` every second on standard output, stop when standard input
    ends (the supervisor is gone), drain on SIGUSR2."""
    listeners = [socket.socket(fileno=fd) for fd in args.listen_fd]
    metrics_socket = socket.socket(fileno=args.metrics_fd) if args.metrics_fd is not None else None
    if os.environ.get("ECO_TRIO_FAULT") == "worker-crash-at-start":  # a test hook, documented in CONTRIBUTING
        log.error("ECO_TRIO_FAULT=worker-crash-at-start: crashing as asked")
        return EXIT_FAILURE
    server = Server(config, listeners=listeners or None, metrics_socket=metrics_socket)
    orphaned = False
    reload = [_RELOAD_SIGNAL] if _RELOAD_SIGNAL is not None else []
    with trio.open_signal_receiver(*_SHUTDOWN_SIGNALS, *reload) as received:
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                async for signum in received:
                    if signum == _RELOAD_SIGNAL:
                        log.info("replaced: draining", extra={"event": "drain"})
                        server.drain()
                    elif server.shutting_down:
                        nursery.cancel_scope.cancel()
                        return
                    else:
                        server.shutdown()

            async def watch_supervisor() -> None:
                nonlocal orphaned
                stdin = trio.lowlevel.FdStream(os.dup(0))
                while await stdin.receive_some(4096):
                    pass
                log.warning("the supervisor is gone: shutting down", extra={"event": "orphaned"})
                orphaned = True
                server.shutdown()

            async def report_alive() -> None:
                _report("ready")
                while True:
                    await trio.sleep(1.0)
                    _report("alive")

            async def serve(task_status: trio.TaskStatus[list[str]]) -> None:
                await server.serve(task_status=task_status)  # until every connection is closed
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch_signals)
            nursery.start_soon(watch_supervisor)
            await nursery.start(serve)
            nursery.start_soon(report_alive)
    if orphaned and args.private_redis and config.redis:
        await _stop_private_redis(config.redis)
    if server.control.stopped_by_desconexion:
        _report("desconexion")
    return EXIT_OK


async def _stop_private_redis(url: str) -> None:
    """The supervisor died without stopping its redis-server (SIGKILL):
    stop it from here, once this worker's clients are told.  Every orphaned
    worker tries; the first one succeeds, and a Redis already gone is
    what was wanted.  Linux has a parent-death signal for this too."""
    from eco_trio.server.cluster import resp

    with trio.move_on_after(2), contextlib.suppress(OSError, trio.BrokenResourceError, resp.ReplyError):
        link = resp.Link(url)
        try:
            await link.call("SHUTDOWN", "NOSAVE")
        finally:
            await link.aclose()
    log.info("stopped the supervisor's private redis-server", extra={"event": "orphaned"})


def _reload_tls(server: Server) -> None:
    try:
        server.reload_tls()
    except (OSError, ValueError) as exc:  # TLSFileError names the file
        log.error("TLS certificate not reloaded, the old one stays: %s", exc, extra={"event": "tls_reload"})


def _report(line: str) -> None:
    """A line to the supervisor; a supervisor that is gone is no error."""
    with contextlib.suppress(OSError):
        os.write(1, line.encode() + b"\n")


def _flag_words_pattern() -> re.Pattern[str]:
    names = sorted((field.name for field in dataclasses.fields(ServerConfig)), key=len, reverse=True)
    return re.compile(rf"\b(?P<name>{'|'.join(names)})\b(?:=(?P<value>[\w.:-]+))?")


#: A setting's name in library text: ``max_clients`` or ``max_clients=10``.
_SETTING = _flag_words_pattern()


def _in_flag_words(message: str) -> str:
    """Library text names settings (``io=portable``, ``(max_clients)``);
    the command line's user knows them as flags (``--io portable``,
    ``(--max-clients)``).  A name is taken for a setting when it has a
    value, an underscore, or starts the text: ``port``, ``host`` and
    ``token`` are words too."""

    def flag(match: re.Match[str]) -> str:
        name, value = match["name"], match["value"]
        if value is None and "_" not in name and match.start() != 0:
            return match[0]
        if name == "remote_shutdown" and value == "False":
            return "--no-remote-shutdown"
        if value == "True":  # a switch: the flag alone
            value = None
        text = "--" + name.replace("_", "-")
        return text if value is None else f"{text} {value}"

    return _SETTING.sub(flag, message)


class _FlagWords(logging.Filter):
    """Every log line in the command line's words (see _in_flag_words)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        # (A setting in a log line has an underscore or a value: the check
        # spares the usual connect and disconnect lines the regex.)
        if ("_" in message or "=" in message) and _SETTING.search(message) is not None:
            record.msg, record.args = _in_flag_words(message), None
        return True


def _task_order(fifo: bool) -> contextlib.AbstractContextManager[object]:
    """--fifo: first-in, first-out task order (transport/fifo.py), which
    reaches into trio's private state, so its module is loaded only then."""
    if not fifo:
        return contextlib.nullcontext()
    from eco_trio.transport.fifo import fifo_order

    return fifo_order()


def _io_path(requested: str) -> str:
    """--io, where ``auto`` defers to $ECO_TRIO_IO when it is set."""
    return (os.environ.get("ECO_TRIO_IO") or "auto") if requested == "auto" else requested
