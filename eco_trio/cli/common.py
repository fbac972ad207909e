"""What the command line's programs share: exit statuses, argument types,
the connection options, the token, and reading errors.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Callable, Iterator
from typing import NoReturn, TypeVar

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


class Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr, not a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def port_number(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, not {port}")
    return port


def number(kind: Callable[[str], _N], *, zero: bool, what: str = "number") -> Callable[[str], _N]:
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


def positive(kind: Callable[[str], _N]) -> Callable[[str], _N]:
    return number(kind, zero=False)


not_negative = number(float, zero=True)
not_negative_int = number(int, zero=True, what="whole number")


def program_name(argv0: str | None = None) -> str:
    """The program as the user invoked it: ``python -m eco_trio`` or the
    ``eco_trio`` script."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    name = os.path.basename(argv0)
    if not name or name in ("__main__.py", "-c") or name.startswith("python"):
        return "python -m eco_trio"
    return name.removesuffix(".exe").removesuffix("-script.py")


def add_address_options(parser: argparse.ArgumentParser, host: str) -> None:
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
        type=port_number,
        default=os.environ.get("ECO_TRIO_PORT") or "5000",
        help="server port (default: $ECO_TRIO_PORT, else 5000)",
    )


#: What a shell reports for a program ended by a closed pipe (128 + SIGPIPE).
EXIT_BROKEN_PIPE = 141


def token_from(args: argparse.Namespace) -> bytes | None:
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


def only(exc: BaseException, kind: type[_E]) -> _E | None:
    """``exc`` if it is a ``kind``, or a group holding just one (nurseries wrap)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, kind) else None


def chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what caused it, down to the innermost cause (through
    exception groups, by their first member: what trio wraps)."""
    cause: BaseException | None = exc
    while cause is not None:
        yield cause
        cause = cause.exceptions[0] if isinstance(cause, BaseExceptionGroup) else cause.__cause__


def root_cause(exc: BaseException) -> BaseException:
    """The innermost cause of ``exc``."""
    *_, root = chain(exc)
    return root


def reason(exc: OSError) -> str:
    """The most specific explanation an OSError (or its cause) carries, in
    the system's words: trio's own messages embed Python reprs of socket
    addresses (``Error connecting to ('::1', 1, 0, 0): ...``)."""
    for cause in chain(exc):
        if isinstance(cause, OSError) and cause.errno is not None and not isinstance(cause, socket.gaierror):
            return os.strerror(cause.errno)
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
    return str(exc)
