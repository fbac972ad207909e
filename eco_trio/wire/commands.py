"""The eco_trio wire's words, sans-IO: the lines the server says, the
events its protocol hands the I/O layer, and how a line is recognised as a
command (by the server, and by clients that must know what they send).

Never imports trio, socket or asyncio (an import-linter contract).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

DEFAULT_MAX_LINE: Final = 64 * 1024

GREETING: Final = (
    "BIENVENIDO a eco_trio: escribe una línea y te la devuelvo en mayúsculas. "
    "Comandos: AYUDA, LISTAR, ESTADO, APAGAR, DESCONEXION."
)
HELP: Final = (
    "COMANDOS: AYUDA (esta ayuda), LISTAR (clientes conectados), ESTADO (contadores del servidor), "
    "APAGAR (cerrar esta conexión), DESCONEXION (apagar el servidor), "
    "AUTENTICAR <token> (con token en el servidor); "
    "cualquier otra línea vuelve en mayúsculas."
)
FAREWELL: Final = "ADIOS: conexión cerrada."
HELLO_REPLY: Final = "HOLA CLIENTE"
SHUTDOWN_ACK: Final = "DESCONEXION: apagando el servidor."
SHUTDOWN_NOTICE: Final = "AVISO: el servidor se está apagando; conexión cerrada."
INVALID_UTF8: Final = "ERROR la línea no es UTF-8 válido; se ignora."
LISTING_HEADER: Final = "CLIENTES"
STATUS_HEADER: Final = "ESTADO"


def line_too_long(limit: int) -> str:
    return f"ERROR línea demasiado larga (máximo {limit} bytes); conexión cerrada."


def encode_line(text: str) -> bytes:
    """One reply line as it goes on the wire."""
    return (text + "\n").encode()


def encode_lines(lines: Iterable[str]) -> bytes:
    return "".join(line + "\n" for line in lines).encode()


# --- events -----------------------------------------------------------------


@dataclass(slots=True)
class Reply:
    """Bytes to send as they are: one or more complete reply lines.

    The one event not frozen: one is built for every read on the hot path,
    and a frozen dataclass costs twice as much to build (its ``__init__``
    goes through ``object.__setattr__``).  Treat it as immutable."""

    data: bytes


@dataclass(frozen=True, slots=True)
class ListClients:
    """``LISTAR``: the server answers with :func:`encode_lines` of its listing."""


@dataclass(frozen=True, slots=True)
class Shutdown:
    """``DESCONEXION [token]``: the server decides whether to honour it.  The
    token is the bytes the client sent, whatever they are."""

    token: bytes | None


@dataclass(frozen=True, slots=True)
class Status:
    """``ESTADO [token]``: the server answers with its counters."""

    token: bytes | None


@dataclass(frozen=True, slots=True)
class Authenticate:
    """``AUTENTICAR <token>``: prove the token once for this session (as
    Redis' ``AUTH``), for LISTAR, ESTADO and DESCONEXION."""

    token: bytes | None


@dataclass(frozen=True, slots=True)
class ForeignProtocol:
    """The peer speaks another protocol (``"HTTP"``, ``"TLS"``): nothing it
    sent after this is acted on, and the connection should close at once,
    without a reply.  A browser's request to this port, for one, must never
    reach DESCONEXION (the cross-protocol attack Redis guards against too)."""

    name: str


@dataclass(frozen=True, slots=True)
class Close:
    """The protocol is done with this connection (APAGAR, a fatal error or
    end of input): send any replies before this event, then close.
    ``reason`` says which, for the log (it takes no part in equality)."""

    reason: str = field(default="end of input", compare=False)


Event = Reply | ListClients | Shutdown | Status | Authenticate | ForeignProtocol | Close


# --- recognising commands ---------------------------------------------------

# Commands are ASCII words matched in any ASCII case on the raw bytes, so a
# look-alike that only Unicode case mapping turns into a command (the long s
# in "deſconexion", the dotless i in "lıstar") stays an ordinary line, and a
# DESCONEXION token may be any bytes.  A command's first word starts its line
# (after ASCII whitespace), so a batch whose ASCII-uppercased lines start with
# none of these words needs no parse per line.  HTTP look-alikes go to the
# slow path too, where the cross-protocol guard looks at them: a Host: header
# starts its line; a request line has "HTTP/" in it, searched for only when
# the batch has a "/" at all (one memchr).  One regular expression finds the
# line starts: at 1 KiB it costs a third of six substring searches.
_SPECIAL_START: Final = rb"[ \t\r\x0b\x0c]*(?:APAGAR|LISTAR|AYUDA|AUTENTICAR|DESCONEXI|ESTADO|HOLA|HOST:)"
SPECIAL_FIRST_LINE: Final = re.compile(_SPECIAL_START)
#: The bytes such a line can start with (most batches start with none: no
#: regular expression call for them).
MAY_START_SPECIAL: Final = frozenset(b" \t\r\x0b\x0cALDEH")
SPECIAL_LATER_LINE: Final = re.compile(rb"\n" + _SPECIAL_START)

CLOSE: Final = Close()
LIST: Final = ListClients()
_SHUTDOWN_WORDS: Final = (b"DESCONEXION", "DESCONEXIÓN".encode(), "DESCONEXIóN".encode())
Command = Reply | ListClients | Shutdown | Status | Authenticate
_SINGLE_WORD: Final[dict[bytes, tuple[Command, bool]]] = {
    b"APAGAR": (Reply(encode_line(FAREWELL)), True),
    b"LISTAR": (LIST, False),
    b"ESTADO": (Status(None), False),
    b"AYUDA": (Reply(encode_line(HELP)), False),
    b"AUTENTICAR": (Authenticate(None), False),
    **{word: (Shutdown(None), False) for word in _SHUTDOWN_WORDS},
}
_HELLO: Final = (Reply(encode_line(HELLO_REPLY)), False)

#: An HTTP/1.x request line (RFC 9112: method SP target SP version) or the
#: HTTP/2 preface ("PRI * HTTP/2.0"); methods are tokens, in any case.
_HTTP_REQUEST_LINE: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+ \S+ HTTP/\d(\.\d)?")


def command_of(raw: bytes | bytearray) -> tuple[Command, bool] | None:
    """The command the line ``raw`` is, with whether it ends the connection;
    None when it is an ordinary line."""
    words = raw.split()
    if len(words) == 1:
        return _SINGLE_WORD.get(bytes(words[0].upper()))
    if len(words) == 2:
        first = words[0].upper()
        if first == b"HOLA" and words[1].upper() == b"SERVIDOR":
            return _HELLO
        if first in _SHUTDOWN_WORDS:
            return Shutdown(bytes(words[1])), False  # the token, byte for byte
        if first == b"ESTADO":
            return Status(bytes(words[1])), False
        if first == b"AUTENTICAR":
            return Authenticate(bytes(words[1])), False
    return None


def command_name(raw: bytes | bytearray) -> str:
    """The name a command line is counted under (after :func:`_command`
    recognised it)."""
    words = raw.split()
    first = bytes(words[0].upper())
    if first.startswith(b"DESCONEXI"):
        return "DESCONEXION"
    return "HOLA SERVIDOR" if first == b"HOLA" else first.decode()


def is_http(raw: bytes | bytearray) -> bool:
    """Whether ``raw`` is an HTTP request line or a ``Host:`` header."""
    return raw[:5].lower() == b"host:" or _HTTP_REQUEST_LINE.fullmatch(raw) is not None


def is_tls_client_hello(data: bytes | bytearray) -> bool:
    """A TLS record header: handshake (0x16), version 3.x (SSL 3 to TLS 1.3)."""
    return len(data) >= 3 and data[0] == 0x16 and data[1] == 0x03 and data[2] <= 0x04


def may_become_tls_header(data: bytes | bytearray) -> bool:
    """Whether ``data`` is shorter than a TLS record header but could still
    become one: the first read is then held until it can be told (a
    ClientHello sent a byte at a time), so what the server decides never
    depends on how the bytes were split."""
    return 0 < len(data) < 3 and data[0] == 0x16 and (len(data) < 2 or data[1] == 0x03)


def is_closing_command(line: str | bytes) -> bool:
    """Whether sending ``line`` asks the server to close this connection
    (``APAGAR``, or ``DESCONEXION`` with or without a token)."""
    command = command_of(line.encode("utf-8", "surrogateescape") if isinstance(line, str) else line)
    return command is not None and (command[1] or isinstance(command[0], Shutdown))


def is_shutdown_command(line: str) -> bool:
    """Whether sending ``line`` asks the server to shut down (DESCONEXION)."""
    command = command_of(line.encode("utf-8", "surrogateescape"))
    return command is not None and isinstance(command[0], Shutdown)


def carries_token(line: str | bytes) -> bool:
    """Whether ``line`` is a command with a token on it (``AUTENTICAR``,
    ``ESTADO``/``DESCONEXION`` with an argument): not to be kept in a
    history or shown."""
    command = command_of(line.encode("utf-8", "surrogateescape") if isinstance(line, str) else line)
    return (
        command is not None
        and isinstance(command[0], (Shutdown, Status, Authenticate))
        and (command[0].token is not None)
    )


#: The header word a multi-line reply starts with, by the kind of command.
_HEADERS: Final = {ListClients: LISTING_HEADER, Status: STATUS_HEADER}


def reply_header(line: str) -> str | None:
    """The header word a multi-line reply to ``line`` would start with
    (``CLIENTES`` for LISTAR, ``ESTADO`` for ESTADO), or None for a
    one-line reply."""
    command = command_of(line.encode("utf-8", "surrogateescape"))
    return None if command is None else _HEADERS.get(type(command[0]))


def parse_reply_header(line: str, word: str = LISTING_HEADER) -> int | None:
    """How many lines follow a ``<word> <n>`` header, or None when ``line``
    is not one (an ERROR, or another server's reply).  A node cut off from
    its deployment adds ``parcial``: it answers with its own part only."""
    words = line.split()
    if words[2:] == ["parcial"]:
        words = words[:2]
    if len(words) == 2 and words[0] == word and words[1].isdigit():
        return int(words[1])
    return None
