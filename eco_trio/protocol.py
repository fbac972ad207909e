"""The eco_trio wire protocol, sans-IO.

Bytes in, events out, bytes back: :class:`ServerProtocol` is fed what a
client sent (``b""`` means end of input) and answers with a list of events.
Everything the protocol can answer on its own (uppercased lines, greetings,
help, encoding errors) comes out as ready-to-send :class:`Reply` bytes; only
what needs the server's state (the client list, shutting the server down)
comes out as a request event for the I/O layer to act on.

This module never imports trio, socket or asyncio, and never looks at a clock:
the I/O layer decides *when* an unterminated fragment has waited long enough
and then calls :meth:`ServerProtocol.flush_fragment`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

DEFAULT_MAX_LINE: Final = 64 * 1024

GREETING: Final = (
    "BIENVENIDO a eco_trio: escribe una línea y te la devuelvo en mayúsculas. "
    "Comandos: AYUDA, LISTAR, APAGAR, DESCONEXION."
)
HELP: Final = (
    "COMANDOS: AYUDA (esta ayuda), LISTAR (clientes conectados), "
    "APAGAR (cerrar esta conexión), DESCONEXION (apagar el servidor); "
    "cualquier otra línea vuelve en mayúsculas."
)
FAREWELL: Final = "ADIOS: conexión cerrada."
HELLO_REPLY: Final = "HOLA CLIENTE"
SHUTDOWN_ACK: Final = "DESCONEXION: apagando el servidor."
SHUTDOWN_NOTICE: Final = "AVISO: el servidor se está apagando; conexión cerrada."
INVALID_UTF8: Final = "ERROR la línea no es UTF-8 válido; se ignora."
LISTING_HEADER: Final = "CLIENTES"


def line_too_long(limit: int) -> str:
    return f"ERROR línea demasiado larga (máximo {limit} bytes); conexión cerrada."


def encode_line(text: str) -> bytes:
    """One reply line as it goes on the wire."""
    return (text + "\n").encode()


def encode_lines(lines: Iterable[str]) -> bytes:
    return "".join(line + "\n" for line in lines).encode()


# --- events -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """Bytes to send as they are: one or more complete reply lines."""

    data: bytes


@dataclass(frozen=True, slots=True)
class ListClients:
    """``LISTAR``: the server answers with :func:`encode_lines` of its listing."""


@dataclass(frozen=True, slots=True)
class Shutdown:
    """``DESCONEXION [token]``: the server decides whether to honour it."""

    token: str | None


@dataclass(frozen=True, slots=True)
class Close:
    """The protocol is done with this connection (APAGAR, a fatal error or
    end of input): send any replies before this event, then close."""


Event = Reply | ListClients | Shutdown | Close


# --- recognising commands ---------------------------------------------------

# Commands are matched on the stripped, uppercased line.  str.upper() maps
# character by character, so if a line is a command its uppercased text
# contains one of these markers, and a batch whose uppercased text contains
# none of them holds no command: the fast path needs one search per marker per
# batch rather than a parse per line.
_MARKERS: Final = ("APAGAR", "LISTAR", "AYUDA", "DESCONEXI", "SERVIDOR")

_CLOSE: Final = Close()
_LIST: Final = ListClients()


def _command(text: str) -> tuple[Reply | ListClients | Shutdown, bool] | None:
    """The command ``text`` is, with whether it ends the connection; None
    when ``text`` is an ordinary line."""
    words = text.upper().split()
    if not words:
        return None
    if len(words) == 1:
        match words[0]:
            case "APAGAR":
                return Reply(encode_line(FAREWELL)), True
            case "LISTAR":
                return _LIST, False
            case "AYUDA":
                return Reply(encode_line(HELP)), False
            case "DESCONEXION" | "DESCONEXIÓN":
                return Shutdown(None), False
    elif words == ["HOLA", "SERVIDOR"]:
        return Reply(encode_line(HELLO_REPLY)), False
    elif len(words) == 2 and words[0] in ("DESCONEXION", "DESCONEXIÓN"):
        # The token is case-sensitive: take it from the original text.
        return Shutdown(text.split()[1]), False
    return None


def _incomplete_utf8_tail(data: bytes) -> int:
    """How many bytes at the end of ``data`` start a UTF-8 character that has
    not fully arrived yet (0 to 3)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:
            return 0
        if byte >= 0xC0:  # a lead byte: how long should its sequence be?
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return back if back < need else 0
    return 0


def _take_fragment(buffer: bytearray, *, final: bool) -> bytes:
    """Empty ``buffer`` into a fragment to be answered or shown as a line;
    unless ``final``, a UTF-8 character cut short stays in ``buffer``."""
    fragment = bytes(buffer)
    keep = 0 if final else _incomplete_utf8_tail(fragment)
    if keep:
        del buffer[:-keep]
        return fragment[:-keep]
    buffer.clear()
    return fragment


class ServerProtocol:
    """The server side of one connection.

    Feed it with :meth:`receive_data`; it returns the events that data
    completes.  Lines end with ``\\n``; a ``\\r`` before it is dropped.  The
    buffer never holds more than ``max_line`` bytes of an unfinished line:
    past that the protocol answers with an error and a :class:`Close`.
    """

    __slots__ = ("_buffer", "_closed", "_max_line")

    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        if max_line < 1:
            raise ValueError("max_line must be at least 1")
        # A fragment grows in place: re-joining bytes on every read would make
        # a client trickling one byte at a time cost quadratic copying.
        self._buffer = bytearray()
        self._max_line = max_line
        self._closed = False

    @property
    def has_fragment(self) -> bool:
        """Whether bytes of an unterminated line are waiting."""
        return bool(self._buffer)

    def receive_data(self, data: bytes | bytearray) -> list[Event]:
        """Take bytes from the client (``b""``: end of input)."""
        if self._closed:
            return []
        if not data:
            events = self._fragment_events(final=True)
            if not self._closed:
                self._closed = True
                events.append(_CLOSE)
            return events
        if self._buffer:
            self._buffer += data
            if b"\n" not in data:
                return self._check_fragment_size([])
            buffer: bytes | bytearray = bytes(self._buffer)
            self._buffer.clear()
        else:
            buffer = data
        end = buffer.rfind(b"\n") + 1
        if end == 0:
            self._buffer += buffer
            return self._check_fragment_size([])
        if end == len(buffer):
            complete = buffer
        else:
            complete = buffer[:end]
            self._buffer += memoryview(buffer)[end:]
        batch = self._fast_batch(complete)
        if batch is None:
            batch = self._line_by_line(complete.split(b"\n")[:-1])
        return self._check_fragment_size(batch) if self._buffer else batch

    def flush_fragment(self) -> list[Event]:
        """The client paused mid-line: answer what is buffered as a line.

        A UTF-8 character cut by the pause stays buffered, so it comes out
        whole in the next line rather than as an encoding error.
        """
        if self._closed:
            return []
        return self._fragment_events(final=False)

    # --- internals ----------------------------------------------------------

    def _fast_batch(self, complete: bytes | bytearray) -> list[Event] | None:
        """All complete lines of one read as one reply, or None when some line
        needs a closer look (a command, bad UTF-8, an over-long line)."""
        if len(complete) > self._max_line + 1:  # some line may be too long
            return None
        try:
            upper = complete.decode().upper()
        except UnicodeDecodeError:
            return None
        for marker in _MARKERS:
            if marker in upper:
                return None
        if "\r" in upper:
            upper = upper.replace("\r\n", "\n")
        return [Reply(upper.encode())]

    def _line_by_line(self, lines: list[bytes] | list[bytearray]) -> list[Event]:
        events: list[Event] = []
        replies: list[bytes] = []  # consecutive replies go out as one write
        for raw in lines:
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            if len(raw) > self._max_line:
                replies.append(encode_line(line_too_long(self._max_line)))
                self._closed = True
                break
            try:
                text = raw.decode()
            except UnicodeDecodeError:
                replies.append(encode_line(INVALID_UTF8))
                continue
            command = _command(text)
            if command is None:
                replies.append(encode_line(text.upper()))
                continue
            event, closes = command
            if isinstance(event, Reply):
                replies.append(event.data)
            else:
                if replies:
                    events.append(Reply(b"".join(replies)))
                    replies = []
                events.append(event)
            if closes:
                self._closed = True
                break
        if replies:
            events.append(Reply(b"".join(replies)))
        if self._closed:
            self._buffer.clear()
            events.append(_CLOSE)
        return events

    def _fragment_events(self, *, final: bool) -> list[Event]:
        fragment = _take_fragment(self._buffer, final=final)
        if not fragment:
            return []
        return self._line_by_line([fragment])

    def _check_fragment_size(self, events: list[Event]) -> list[Event]:
        # A trailing \r may be the first half of a \r\n: it does not count.
        limit = self._max_line + self._buffer.endswith(b"\r")
        if len(self._buffer) > limit and not self._closed:
            self._buffer.clear()
            self._closed = True
            events.append(Reply(encode_line(line_too_long(self._max_line))))
            events.append(_CLOSE)
        return events


class LineReader:
    """Splits what a server sends into lines, for clients.

    Lines end with ``\\n`` (a ``\\r`` before it is dropped); bytes that are not
    valid UTF-8 are shown as U+FFFD rather than raising.  A server that never
    ends its lines is still readable: the I/O layer calls :meth:`flush` after
    a pause and gets the fragment as a line.  Memory is capped: a fragment
    longer than ``max_line`` is handed out in pieces of that size.
    """

    __slots__ = ("_buffer", "_max_line")

    def __init__(self, max_line: int = 1024 * 1024) -> None:
        self._buffer = bytearray()  # grows in place, as in ServerProtocol
        self._max_line = max_line

    @property
    def has_fragment(self) -> bool:
        return bool(self._buffer)

    def feed(self, data: bytes) -> list[str]:
        self._buffer += data
        lines: list[bytes] = []
        if b"\n" in data:
            *lines, rest = bytes(self._buffer).split(b"\n")
            self._buffer[:] = rest
        while len(self._buffer) > self._max_line:
            lines.append(bytes(self._buffer[: self._max_line]))
            del self._buffer[: self._max_line]
        return [_decode_shown(line) for line in lines]

    def flush(self, *, final: bool = False) -> str | None:
        """The fragment waiting for its newline, as a line (None if empty).

        Unless ``final``, a UTF-8 character cut short stays buffered."""
        fragment = _take_fragment(self._buffer, final=final)
        return _decode_shown(fragment) if fragment else None


def _decode_shown(raw: bytes) -> str:
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    return raw.decode(errors="replace")


def is_closing_command(line: str) -> bool:
    """Whether sending ``line`` asks the server to close this connection
    (``APAGAR``, or ``DESCONEXION`` with or without a token)."""
    command = _command(line)
    return command is not None and (command[1] or isinstance(command[0], Shutdown))


def is_listing_command(line: str) -> bool:
    command = _command(line)
    return command is not None and isinstance(command[0], ListClients)


def parse_listing_header(line: str) -> int | None:
    """The client count of a ``CLIENTES <n>`` header, or None."""
    words = line.split()
    if len(words) == 2 and words[0] == LISTING_HEADER and words[1].isdigit():
        return int(words[1])
    return None
