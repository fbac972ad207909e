"""``cliente``: its options, and the piped, message and interactive sessions."""

from __future__ import annotations

import argparse
import math
import os
import socket
import ssl
import sys
from collections.abc import Callable
from typing import Any

import trio

from eco_trio.cli.common import (
    EXIT_BROKEN_PIPE,
    EXIT_ERROR_REPLY,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    Parser,
    add_address_options,
    not_negative,
    only,
    positive,
    reason,
    root_cause,
    token_from,
)
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
from eco_trio.server.registry import format_address
from eco_trio.transport import tls
from eco_trio.wire.protocol import is_closing_command
from eco_trio.wire.visible import escape


def add_parser(commands: argparse._SubParsersAction[Parser]) -> None:
    client = commands.add_parser(
        "cliente",
        help="talk to a server",
        description="Talk to a server: interactively, from piped input, or with MENSAJE arguments.",
    )
    add_address_options(client, "localhost")
    client.add_argument(
        "--connect-timeout",
        type=positive(float),
        default=DEFAULT_CONNECT_TIMEOUT,
        metavar="SECONDS",
        help="give up connecting (and waiting for the greeting) after this long (default: %(default)s)",
    )
    client.add_argument(
        "--timeout",
        type=positive(float),
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
        type=positive(float),
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
        type=positive(int),
        default=None,
        metavar="N",
        help="with MENSAJE arguments, send them N times (redis-cli's -r); with --latency, take N samples "
        "(default: once; --latency: until Ctrl-C)",
    )
    client.add_argument(
        "-i",
        "--interval",
        type=not_negative,
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


def run(args: argparse.Namespace) -> int:
    try:
        args.ssl_context = _client_tls(args)
    except ValueError as exc:  # tls.TLSFileError: it names the file
        _say(args, f"error: {exc}")
        return EXIT_USAGE
    try:
        args.token = token_from(args)
    except OSError as exc:
        _say(args, f"error: cannot read the token file: {reason(exc)}")
        return EXIT_USAGE
    try:
        return trio.run(_talk, args)
    except BaseException as exc:
        if only(exc, KeyboardInterrupt) is not None:
            print(file=sys.stderr)
            return EXIT_INTERRUPTED
        if only(exc, BrokenPipeError) is not None:
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
        case OSError() if isinstance(root_cause(exc), ConnectionRefusedError):
            return (
                f"cannot connect to {address}: {reason(exc)}. Is the server running? Start it with: "
                f"{args.prog} servidor --host {args.host} --port {args.port}",
                f"no hay servidor en {address}; la próxima línea (o CONECTAR) vuelve a probar",
            )
        case OSError():
            return f"cannot connect to {address}: {reason(exc)}", f"no puedo conectar con {address}"
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
