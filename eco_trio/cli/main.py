"""The command line: ``python -m eco_trio servidor | cliente | bench``.

The only module that touches argv, stdin/stdout, print and trio.run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import signal
import socket
import ssl
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn, TypeVar

import trio

from eco_trio._version import __version__
from eco_trio.bench.core import MODES, BenchConfig, format_result, run_bench
from eco_trio.client.core import (
    DEFAULT_CONNECT_TIMEOUT,
    Client,
    ConnectionClosed,
    HandshakeFailed,
    ServerRefused,
    open_client,
)
from eco_trio.client.interactive import Link, run_interactive
from eco_trio.client.sessions import (
    DEFAULT_CLOSE_WAIT,
    DEFAULT_REPLY_TIMEOUT,
    SessionEnd,
    run_messages,
    run_piped,
)
from eco_trio.client.terminal import input_chunks, open_prompt, print_line, write_lines
from eco_trio.server import logs, open_files
from eco_trio.server.config import REMOTE_IDLE_TIMEOUT, REMOTE_MAX_CLIENTS_PER_IP, ServerConfig
from eco_trio.server.core import Server
from eco_trio.server.registry import format_address
from eco_trio.transport import tls
from eco_trio.transport.readiness import IO_PATHS
from eco_trio.wire.protocol import DEFAULT_MAX_LINE, is_closing_command
from eco_trio.wire.visible import escape

log = logging.getLogger("eco_trio.server")
_E = TypeVar("_E", bound=BaseException)
_N = TypeVar("_N", int, float)

EXIT_OK = 0
EXIT_FAILURE = 1
#: cliente, with arguments or piped input: the server answered with ERROR.
EXIT_ERROR_REPLY = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
#: bench: the server left requests unanswered (closed, refused, said ERROR).
EXIT_UNANSWERED = 3


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr, not a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, not {port}")
    return port


def _number(kind: Callable[[str], _N], *, zero: bool, what: str = "number") -> Callable[[str], _N]:
    """An argparse type: a ``kind`` greater than 0 (or, with ``zero``, 0 or more)."""

    def parse(text: str) -> _N:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {what} {text!r}") from None
        if zero and not value >= 0:
            raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
        if not zero and not value > 0:
            raise argparse.ArgumentTypeError(f"must be greater than 0, not {text}")
        return value

    parse.__name__ = getattr(kind, "__name__", "number")
    return parse


def _positive(kind: Callable[[str], _N]) -> Callable[[str], _N]:
    return _number(kind, zero=False)


_not_negative = _number(float, zero=True)
_not_negative_int = _number(int, zero=True, what="whole number")


def program_name(argv0: str | None = None) -> str:
    """The program as the user invoked it: ``python -m eco_trio`` or the
    ``eco_trio`` script."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    name = os.path.basename(argv0)
    if not name or name in ("__main__.py", "-c") or name.startswith("python"):
        return "python -m eco_trio"
    return name.removesuffix(".exe").removesuffix("-script.py")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog or program_name(),
        description="A line-oriented TCP server that answers in uppercase, and its client.",
    )
    parser.add_argument("-V", "--version", action="version", version=f"eco_trio {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{servidor,cliente,bench}")

    server = commands.add_parser(
        "servidor",
        help="run the server",
        description="Run the server. Stops on DESCONEXION, Ctrl-C, SIGTERM or SIGHUP, telling clients first. "
        "Who may send DESCONEXION: nobody with --no-remote-shutdown; otherwise a client whose "
        "certificate name is a --tls-admin (mutual TLS); otherwise, with --token, anyone who sends "
        "'DESCONEXION TOKEN'; without a token, any loopback client.",
    )
    defaults = ServerConfig()
    server.add_argument("--host", default=defaults.host, help="address to listen on (default: %(default)s)")
    server.add_argument(
        "--port", type=_port, default=defaults.port, help="port; 0 picks a free one (default: %(default)s)"
    )
    server.add_argument(
        "--grace",
        type=_positive(float),
        default=defaults.grace,
        metavar="SECONDS",
        help="on shutdown, time clients get to receive the notice (default: %(default)s)",
    )
    server.add_argument(
        "--pause",
        type=_positive(float),
        default=defaults.pause,
        metavar="SECONDS",
        help="silence after which an unterminated message is answered (default: %(default)s)",
    )
    server.add_argument(
        "--max-line",
        type=_positive(int),
        default=DEFAULT_MAX_LINE,
        metavar="BYTES",
        help="longest accepted line; longer closes the connection (default: %(default)s)",
    )
    server.add_argument(
        "--max-clients",
        type=_positive(int),
        default=defaults.max_clients,
        metavar="N",
        help="connections served at once; more are turned away (default: %(default)s)",
    )
    server.add_argument(
        "--max-clients-per-ip",
        type=_not_negative_int,
        default=None,
        metavar="N",
        help="connections served at once from one address (IPv6: one /64); 0: no limit (default: none "
        f"on loopback, {REMOTE_MAX_CLIENTS_PER_IP} when listening beyond it)",
    )
    server.add_argument(
        "--idle-timeout",
        type=_not_negative,
        default=None,
        metavar="SECONDS",
        help="close a connection after this long without a complete line (ended by a newline; a message "
        "answered after --pause does not count); 0: never (default: never "
        f"on loopback, {REMOTE_IDLE_TIMEOUT:g} s when listening beyond it)",
    )
    server.add_argument(
        "--send-timeout",
        type=_positive(float),
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
        type=_positive(float),
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
        type=_positive(int),
        default=defaults.max_handshakes,
        metavar="N",
        help="TLS connections still in their handshake at once, apart from --max-clients; past it the "
        "oldest is dropped (default: %(default)s)",
    )
    server.add_argument(
        "--handshake-rate",
        type=_not_negative,
        default=defaults.handshake_rate,
        metavar="PER_SECOND",
        help="TLS handshakes started per second, in all; more wait their turn; 0: no bound "
        "(default: %(default)g)",
    )
    server.add_argument(
        "--handshake-rate-per-ip",
        type=_not_negative,
        default=defaults.handshake_rate_per_ip,
        metavar="PER_SECOND",
        help="TLS handshakes started per second from one client address; 0: no bound (default: %(default)g)",
    )
    server.add_argument(
        "--plain-port",
        type=_port,
        metavar="PORT",
        help="with TLS on --port, also listen in plain text on this port",
    )
    server.add_argument(
        "--metrics",
        metavar="[HOST:]PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (HOST: 127.0.0.1 if left out) "
        "(default: off)",
    )
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

    client = commands.add_parser(
        "cliente",
        help="talk to a server",
        description="Talk to a server: interactively, from piped input, or with MENSAJE arguments.",
    )
    _add_address_options(client, "localhost")
    client.add_argument(
        "--connect-timeout",
        type=_positive(float),
        default=DEFAULT_CONNECT_TIMEOUT,
        metavar="SECONDS",
        help="give up connecting (and waiting for the greeting) after this long (default: %(default)s)",
    )
    client.add_argument(
        "--timeout",
        type=_positive(float),
        default=DEFAULT_REPLY_TIMEOUT,
        metavar="SECONDS",
        help="with MENSAJE arguments, give up on a reply after this long (default: %(default)s)",
    )
    client.add_argument("--tls", action="store_true", help="speak TLS (implied by the other --tls options)")
    client.add_argument(
        "--tls-ca", metavar="FILE_OR_DIR", help="trust these CAs (default: the system's store)"
    )
    client.add_argument("--tls-cert", metavar="FILE", help="client certificate (PEM), for mutual TLS")
    client.add_argument("--tls-key", metavar="FILE", help="the client certificate's private key (PEM)")
    client.add_argument(
        "--tls-server-name",
        metavar="NAME",
        help="the name the server's certificate must carry (default: --host)",
    )
    client.add_argument(
        "--close-wait",
        type=_positive(float),
        default=DEFAULT_CLOSE_WAIT,
        metavar="SECONDS",
        help="after APAGAR, DESCONEXION or end of input, how long to wait for the server "
        "to close (default: %(default)s)",
    )
    client.add_argument(
        "--token-file",
        metavar="FILE",
        help="prove the server's token when connecting (AUTENTICAR), read from FILE's first line "
        "(default: $ECO_TRIO_TOKEN, if set)",
    )
    client.add_argument(
        "--no-confirm",
        action="store_true",
        help="interactively, send DESCONEXION without asking first (it is never asked in pipes or "
        "with MENSAJE arguments)",
    )
    client.add_argument(
        "--verbose", action="store_true", help="interactively, show the technical detail of errors too"
    )
    client.add_argument(
        "--raw",
        action="store_true",
        help="show what the server sends exactly, control characters included, even on a terminal "
        "(default: escaped as \\x1b on a terminal, exact into a pipe or file)",
    )
    client.add_argument(
        "-r",
        "--repeat",
        type=_positive(int),
        default=None,
        metavar="N",
        help="with MENSAJE arguments, send them N times (redis-cli's -r); with --latency, take N samples "
        "(default: once; --latency: until Ctrl-C)",
    )
    client.add_argument(
        "-i",
        "--interval",
        type=_not_negative,
        default=None,
        metavar="SECONDS",
        help="wait this long between repeats, or between --latency samples (default: 0; --latency: 0.01)",
    )
    client.add_argument(
        "--latency",
        action="store_true",
        help="measure the round trip of a line, again and again, and show min, max and average "
        "(redis-cli's --latency); on a terminal the figures update in place",
    )
    client.add_argument(
        "messages",
        nargs="*",
        metavar="MENSAJE",
        help="send these lines one by one, print each reply and exit",
    )
    _add_bench_parser(commands)
    return parser


def _add_address_options(parser: argparse.ArgumentParser, host: str) -> None:
    """-H/--host and -p/--port for the programs that connect.  -H, not
    redis-cli's -h: -h is --help, as in every argparse program."""
    parser.add_argument(
        "-H",
        "--host",
        default=os.environ.get("ECO_TRIO_HOST") or host,
        help=f"server address (default: $ECO_TRIO_HOST, else {host})",
    )
    parser.add_argument(
        "-p",
        "--port",
        type=_port,
        default=os.environ.get("ECO_TRIO_PORT") or "5000",
        help="server port (default: $ECO_TRIO_PORT, else 5000)",
    )


def _add_bench_parser(commands: argparse._SubParsersAction[_Parser]) -> None:
    bench = commands.add_parser(
        "bench",
        help="measure a server",
        epilog="Exit status: 0 every reply right; 1 a wrong reply; 2 a usage error; 3 requests left "
        "unanswered (the server closed, refused or said ERROR; the reason is printed in its own words).",
        description="Load-test a server (eco_trio or any line-uppercasing one) and check every reply. "
        "On a small machine, pin the server and the benchmark to different cores, e.g. "
        "'taskset -c 1 python -m eco_trio servidor' and 'taskset -c 0 python -m eco_trio bench'.",
    )
    _add_address_options(bench, "127.0.0.1")
    bench.add_argument(
        "--clients",
        type=_positive(int),
        default=50,
        metavar="N",
        help="connections (connect mode: concurrent slots) (default: %(default)s)",
    )
    bench.add_argument(
        "--seconds",
        type=_positive(float),
        default=3.0,
        metavar="S",
        help="measurement window, a hard bound (hold: how long to hold) (default: %(default)s)",
    )
    bench.add_argument(
        "--mode",
        choices=MODES,
        default="pingpong",
        help="pingpong: 1 line in flight per connection; pipeline: --pipeline lines in "
        "flight; connect: connect, greeting, one line, close, repeat; hold: open and hold "
        "--clients connections (default: %(default)s)",
    )
    bench.add_argument(
        "--pipeline",
        type=_positive(int),
        default=16,
        metavar="K",
        help="lines in flight per connection in pipeline mode (default: %(default)s)",
    )
    bench.add_argument(
        "--size",
        type=_positive(int),
        default=64,
        metavar="BYTES",
        help="bytes per line, without the newline (default: %(default)s)",
    )
    bench.add_argument(
        "--greeting-lines",
        type=_not_negative_int,
        default=1,
        metavar="N",
        help="lines the server sends on connect, skipped (default: %(default)s)",
    )
    bench.add_argument(
        "--warmup",
        type=_not_negative,
        default=0.5,
        metavar="S",
        help="seconds of load before measuring (default: %(default)s)",
    )
    bench.add_argument(
        "--server-pid",
        type=int,
        default=None,
        metavar="PID",
        help="hold mode: read this process's memory from /proc to report it per connection",
    )
    bench.add_argument(
        "--cpu",
        type=int,
        default=None,
        metavar="N",
        help="run the benchmark on CPU N only (pin the server elsewhere, e.g. with taskset)",
    )
    bench.add_argument(
        "--tls-ca",
        metavar="FILE",
        help="speak TLS, trusting this CA ('' for the system's store) (default: plain text)",
    )
    bench.add_argument("--tls-server-name", metavar="NAME", help="the name to check the certificate against")
    bench.add_argument("--json", action="store_true", help="print one JSON object instead of text")


# --- servidor -----------------------------------------------------------------


def run_server(args: argparse.Namespace) -> int:
    # argv and the environment are bytes on POSIX: fsencode gives back the
    # token exactly as typed, even if it is not UTF-8.
    try:
        token = _token(args)
    except OSError as exc:
        print(f"{args.prog} servidor: error: cannot read the token file: {_reason(exc)}", file=sys.stderr)
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
        )
        if config.tls_cert is not None and config.tls_key is not None:
            tls.server_context(config.tls_cert, config.tls_key, config.tls_ca)  # fail now, in one line
    except ValueError as exc:  # tls.TLSFileError among them: it names the file
        print(f"{args.prog} servidor: error: {_in_flag_words(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    logs.configure(args.log_level, args.log_format, sys.stderr, rewrite=_FlagWords())
    try:
        config = dataclasses.replace(
            config,
            max_clients=open_files.fit_clients(
                config.max_clients, config.max_handshakes if config.tls_cert else 0
            ),
        )
        with _task_order(args.fifo):
            return trio.run(_serve_until_stopped, config)
    except BaseException as exc:
        error = _only(exc, OSError)
        if _only(exc, KeyboardInterrupt) is not None:
            return EXIT_INTERRUPTED  # Ctrl-C before the signal handling was set up: nothing to tell
        if error is None:
            raise
        address = error.filename or format_address((args.host, args.port))
        print(f"{args.prog} servidor: cannot listen on {address}: {_reason(error)}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        logs.stop()  # what is queued goes out, unless stderr is stuck


#: Signals that shut the server down gracefully: Ctrl-C, a service manager's
#: stop, and the terminal or SSH session closing (SIGHUP), where they exist.
_SHUTDOWN_SIGNALS = [
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGBREAK") if hasattr(signal, name)
]


async def _serve_until_stopped(config: ServerConfig) -> int:
    """Serve; the first shutdown signal shuts down gracefully, a second one
    during the grace period stops at once."""
    server = Server(config)
    forced = False
    with trio.open_signal_receiver(*_SHUTDOWN_SIGNALS) as signals:
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                nonlocal forced
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if server.shutting_down:
                        log.warning("%s again: stopping now", name, extra={"event": "signal"})
                        forced = True
                        nursery.cancel_scope.cancel()
                        return
                    log.info(
                        "%s: shutting down (send it again to stop at once)", name, extra={"event": "signal"}
                    )
                    server.shutdown()

            nursery.start_soon(watch_signals)
            await server.serve()
            nursery.cancel_scope.cancel()
    if forced:
        server.flush_counts()
        log.warning("server stopped at once: connections still open were cut", extra={"event": "stopped"})
    return EXIT_INTERRUPTED if forced else EXIT_OK


# --- cliente ------------------------------------------------------------------

#: What a shell reports for a program ended by a closed pipe (128 + SIGPIPE).
EXIT_BROKEN_PIPE = 141


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


def _token(args: argparse.Namespace) -> bytes | None:
    """The token from --token, --token-file or $ECO_TRIO_TOKEN, as bytes
    (argv, the environment and files are bytes on POSIX: the token comes
    back exactly as written, UTF-8 or not)."""
    if getattr(args, "token_file", None):
        with open(args.token_file, "rb") as file:
            first = file.readline()
        return first.rstrip(b"\r\n")
    if getattr(args, "token", None) is not None:
        return os.fsencode(args.token)
    value = os.environb.get(b"ECO_TRIO_TOKEN") if os.supports_bytes_environ else None
    if value is None and (text := os.environ.get("ECO_TRIO_TOKEN")) is not None:
        value = text.encode()
    return value


def run_client(args: argparse.Namespace) -> int:
    try:
        args.ssl_context = _client_tls(args)
    except ValueError as exc:  # tls.TLSFileError: it names the file
        _say(args, f"error: {exc}")
        return EXIT_USAGE
    try:
        args.token = _token(args)
    except OSError as exc:
        _say(args, f"error: cannot read the token file: {_reason(exc)}")
        return EXIT_USAGE
    try:
        return trio.run(_talk, args)
    except BaseException as exc:
        if _only(exc, KeyboardInterrupt) is not None:
            print(file=sys.stderr)
            return EXIT_INTERRUPTED
        if _only(exc, BrokenPipeError) is not None:
            # Whoever read our output has gone (``| head -1``): end quietly,
            # as nc and redis-cli do, and keep Python from complaining about
            # the unflushed rest at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_BROKEN_PIPE
        raise


def _say(args: argparse.Namespace, message: str) -> None:
    """One line on stderr; what the server said in it is escaped."""
    print(f"{args.prog} cliente: {escape(message)}", file=sys.stderr)


def _client_tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    if not (args.tls or args.tls_ca or args.tls_cert or args.tls_key or args.tls_server_name):
        return None
    return tls.client_context(args.tls_ca, args.tls_cert, args.tls_key)


async def _open(args: argparse.Namespace, *, in_session: bool = False) -> Client | str:
    """A connected client, or one line saying why not: in English for
    stderr; ``in_session``, short and in Spanish, as the rest of what the
    interactive session shows (the English detail with --verbose)."""
    plain = args.ssl_context is None
    try:
        return await open_client(
            args.host,
            args.port,
            connect_timeout=args.connect_timeout,
            greeting_timeout=min(args.connect_timeout, GREETING_WAIT) if plain else None,
            ssl_context=args.ssl_context,
            server_hostname=args.tls_server_name,
            token=args.token,
        )
    except (HandshakeFailed, trio.TooSlowError, ConnectionClosed, OSError) as exc:
        english, spanish = _why_not(args, exc)
        if not in_session:
            return english
        return f"{spanish} ({english})" if args.verbose else spanish


#: How long a plain-text client waits for the greeting: a TLS port says
#: nothing until it hears a ClientHello, and must be suspected soon.
GREETING_WAIT = 3.0


def _why_not(args: argparse.Namespace, exc: BaseException) -> tuple[str, str]:
    """Why connecting failed: in English, and in Spanish, in few words."""
    address = format_address((args.host, args.port))
    tls_hint = args.ssl_context is None
    match exc:
        case HandshakeFailed():
            return f"TLS with {address} failed: {exc}", f"TLS con {address} falló: {exc}"
        case socket.gaierror():
            return (
                f"cannot find host {args.host!s}: {exc.strerror or exc}",
                f"no encuentro el servidor {args.host!s}",
            )
        case trio.TooSlowError():
            if tls_hint:
                waited = min(args.connect_timeout, GREETING_WAIT)
                return (
                    f"no answer from {address} within {waited:g} s (if it is a TLS port, add --tls)",
                    f"{address} no saluda en {waited:g} s; si es un puerto TLS, añade --tls",
                )
            return f"no answer from {address} within {args.connect_timeout:g} s", f"{address} no responde"
        case ServerRefused():
            return f"{address} refused the connection: {exc.line}", exc.line
        case ConnectionClosed():
            return f"{address}: {exc}", f"{address} cerró la conexión"
        case OSError() if isinstance(_root(exc), ConnectionRefusedError):
            return (
                f"cannot connect to {address}: {_reason(exc)}. Is the server running? Start it with: "
                f"{args.prog} servidor --host {args.host} --port {args.port}",
                f"no hay servidor en {address}; la próxima línea (o CONECTAR) vuelve a probar",
            )
        case OSError():
            return f"cannot connect to {address}: {_reason(exc)}", f"no puedo conectar con {address}"
    raise exc


async def _talk(args: argparse.Namespace) -> int:
    interactive = not args.messages and not args.latency and sys.stdin.isatty()
    if interactive:
        return await _talk_interactively(args)
    outcome = await _open(args)
    if isinstance(outcome, str):
        _say(args, outcome)
        return EXIT_FAILURE
    client = outcome
    address = format_address((args.host, args.port))
    async with client.stream:
        if args.latency:
            return await _measure_latency(args, client, address)
        if args.messages:
            return await _send_messages(args, client, address)
        errors = _ErrorReplies(write_lines(sys.stdout, raw=args.raw))
        write = errors.write
        write([client.greeting or ""])
        try:
            end = await run_piped(
                client,
                input_chunks(sys.stdin.buffer),
                write,
                close_wait=args.close_wait,
                reply_timeout=args.timeout,
            )
        except trio.TooSlowError:
            _say(args, f"no reply from {address} within {args.timeout:g} s")
            return EXIT_FAILURE
    return _session_status(args, end) or errors.status()


async def _send_messages(args: argparse.Namespace, client: Client, address: str) -> int:
    errors = _ErrorReplies(print_line(sys.stdout, raw=args.raw))
    try:
        for round_ in range(args.repeat or 1):
            if round_ and args.interval:
                await trio.sleep(args.interval)
            unsent = await run_messages(client, args.messages, errors.show, reply_timeout=args.timeout)
            if unsent or any(is_closing_command(message) for message in args.messages):
                break  # the connection is closing: no more rounds
    except (ConnectionClosed, trio.BrokenResourceError):
        _say(args, "the server closed the connection before answering")
        return EXIT_FAILURE
    except trio.TooSlowError:
        _say(args, f"no reply from {address} within {args.timeout:g} s")
        return EXIT_FAILURE
    if unsent:
        _say(args, f"not sent, the connection was closed before them: {' '.join(unsent)}")
        return EXIT_FAILURE
    return errors.status()


#: The line --latency sends (any ordinary line would do).
_LATENCY_PROBE = "hola"


async def _measure_latency(args: argparse.Namespace, client: Client, address: str) -> int:
    """redis-cli's --latency: one line at a time, its round trip measured;
    min, max and average in ms, updated in place on a terminal, printed
    once at the end elsewhere."""
    interval = 0.01 if args.interval is None else args.interval
    samples = args.repeat  # None: until Ctrl-C
    live = sys.stdout.isatty()
    back = "\r" if live else ""
    low, high, total, count = math.inf, 0.0, 0.0, 0

    def report(end: str) -> None:
        sys.stdout.write(
            f"{back}min: {low * 1e3:.2f}, max: {high * 1e3:.2f}, "
            f"avg: {total / count * 1e3:.2f} ms ({count} samples){end}"
        )
        sys.stdout.flush()

    try:
        while samples is None or count < samples:
            start = trio.current_time()
            with trio.fail_after(args.timeout):
                reply = await client.request(_LATENCY_PROBE)
            if reply != _LATENCY_PROBE.upper():
                _say(args, f"unexpected reply: {reply!r}")
                return EXIT_FAILURE
            took = trio.current_time() - start
            low, high, total, count = min(low, took), max(high, took), total + took, count + 1
            if live:
                report("")
            await trio.sleep(interval)
    except trio.TooSlowError:
        _say(args, f"no reply from {address} within {args.timeout:g} s")
        return EXIT_FAILURE
    except (ConnectionClosed, trio.BrokenResourceError):
        _say(args, "the server closed the connection")
        return EXIT_FAILURE
    finally:
        if count:
            report("\n")
    return EXIT_OK


class _ErrorReplies:
    """Passes server lines on, and remembers whether one was an ``ERROR``
    reply: a script must be able to tell (redis-cli's ``-e``)."""

    def __init__(self, output: Callable[[Any], None]) -> None:
        self._output = output
        self.seen = False

    def show(self, line: str) -> None:
        self.seen = self.seen or line.startswith("ERROR")
        self._output(line)

    def write(self, lines: list[str]) -> None:
        self.seen = self.seen or any(line.startswith("ERROR") for line in lines)
        self._output(lines)

    def status(self) -> int:
        return EXIT_ERROR_REPLY if self.seen else EXIT_OK


async def _talk_interactively(args: argparse.Namespace) -> int:
    link = Link()
    prompt = open_prompt(link.prompt, sys.stdout, lambda message: _say(args, message), raw=args.raw)
    confirm = None if args.no_confirm else getattr(prompt, "confirm", None)
    try:
        await run_interactive(
            lambda: _open(args, in_session=True),
            prompt.read,
            prompt.show,
            link,
            close_wait=args.close_wait,
            confirm=confirm,
        )
    finally:
        prompt.close()
    return EXIT_OK


def _session_status(args: argparse.Namespace, end: SessionEnd) -> int:
    if end is SessionEnd.SERVER_CLOSED:
        _say(args, "the server closed the connection")
        return EXIT_FAILURE
    if end is SessionEnd.TIMED_OUT:
        _say(args, f"the server did not close the connection within {args.close_wait:g} s")
        return EXIT_FAILURE
    return EXIT_OK


# --- helpers --------------------------------------------------------------------


def _only(exc: BaseException, kind: type[_E]) -> _E | None:
    """``exc`` if it is a ``kind``, or a group holding just one (nurseries wrap)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, kind) else None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what caused it, down to the innermost cause (through
    exception groups, by their first member: what trio wraps)."""
    cause: BaseException | None = exc
    while cause is not None:
        yield cause
        cause = cause.exceptions[0] if isinstance(cause, BaseExceptionGroup) else cause.__cause__


def _root(exc: BaseException) -> BaseException:
    """The innermost cause of ``exc``."""
    *_, root = _chain(exc)
    return root


def _reason(exc: OSError) -> str:
    """The most specific explanation an OSError (or its cause) carries, in
    the system's words: trio's own messages embed Python reprs of socket
    addresses (``Error connecting to ('::1', 1, 0, 0): ...``)."""
    for cause in _chain(exc):
        if isinstance(cause, OSError) and cause.errno is not None and not isinstance(cause, socket.gaierror):
            return os.strerror(cause.errno)
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
    return str(exc)


# --- bench --------------------------------------------------------------------------


def run_benchmark(args: argparse.Namespace) -> int:
    try:
        config = BenchConfig(
            host=args.host,
            port=args.port,
            clients=args.clients,
            seconds=args.seconds,
            mode=args.mode,
            pipeline=args.pipeline,
            size=args.size,
            greeting_lines=args.greeting_lines,
            warmup=args.warmup,
            server_pid=args.server_pid,
            tls_ca=args.tls_ca,
            tls_server_name=args.tls_server_name,
        )
    except ValueError as exc:
        print(f"{args.prog} bench: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.cpu is not None:
        if not hasattr(os, "sched_setaffinity"):
            print(
                f"{args.prog} bench: error: --cpu needs CPU affinity, which this platform does not offer "
                "(Linux has it); leave it out",
                file=sys.stderr,
            )
            return EXIT_USAGE
        try:
            os.sched_setaffinity(0, {args.cpu})
        except (OSError, ValueError) as exc:
            print(f"{args.prog} bench: error: cannot run on CPU {args.cpu}: {exc}", file=sys.stderr)
            return EXIT_USAGE
    live = sys.stderr.isatty() and not args.json

    def progress(elapsed: float, replies: int) -> None:
        left = max(0.0, args.seconds - elapsed)
        rate = replies / elapsed if elapsed else 0
        sys.stderr.write(
            f"\r\x1b[2K  {elapsed:4.1f} s done, {left:4.1f} s left  {replies:>12,} replies  {rate:>12,.0f}/s"
        )
        sys.stderr.flush()

    try:
        result = run_bench(config, progress if live else None)
    except OSError as exc:
        print(f"{args.prog} bench: {exc.strerror or exc}. Is the server running?", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    if live:
        sys.stderr.write("\r\x1b[2K")
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        print(format_result(result))
    if result.mismatches:
        return EXIT_FAILURE
    if result.errors or not (result.replies or result.connections_held):
        return EXIT_UNANSWERED
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.prog = parser.prog
    if args.command == "servidor":
        return run_server(args)
    if args.command == "bench":
        return run_benchmark(args)
    return run_client(args)
