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

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from eco_trio.wire.telnet import TelnetFilter

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
_SPECIAL_FIRST_LINE: Final = re.compile(_SPECIAL_START)
#: The bytes such a line can start with (most batches start with none: no
#: regular expression call for them).
_MAY_START_SPECIAL: Final = frozenset(b" \t\r\x0b\x0cALDEH")
_SPECIAL_LATER_LINE: Final = re.compile(rb"\n" + _SPECIAL_START)

_CLOSE: Final = Close()
_LIST: Final = ListClients()
_SHUTDOWN_WORDS: Final = (b"DESCONEXION", "DESCONEXIÓN".encode(), "DESCONEXIóN".encode())
_Command = Reply | ListClients | Shutdown | Status | Authenticate
_SINGLE_WORD: Final[dict[bytes, tuple[_Command, bool]]] = {
    b"APAGAR": (Reply(encode_line(FAREWELL)), True),
    b"LISTAR": (_LIST, False),
    b"ESTADO": (Status(None), False),
    b"AYUDA": (Reply(encode_line(HELP)), False),
    b"AUTENTICAR": (Authenticate(None), False),
    **{word: (Shutdown(None), False) for word in _SHUTDOWN_WORDS},
}
_HELLO: Final = (Reply(encode_line(HELLO_REPLY)), False)

#: An HTTP/1.x request line (RFC 9112: method SP target SP version) or the
#: HTTP/2 preface ("PRI * HTTP/2.0"); methods are tokens, in any case.
_HTTP_REQUEST_LINE: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+ \S+ HTTP/\d(\.\d)?")


def _command(raw: bytes | bytearray) -> tuple[_Command, bool] | None:
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


def _command_name(raw: bytes | bytearray) -> str:
    """The name a command line is counted under (after :func:`_command`
    recognised it)."""
    words = raw.split()
    first = bytes(words[0].upper())
    if first.startswith(b"DESCONEXI"):
        return "DESCONEXION"
    return "HOLA SERVIDOR" if first == b"HOLA" else first.decode()


def _is_http(raw: bytes | bytearray) -> bool:
    """Whether ``raw`` is an HTTP request line or a ``Host:`` header."""
    return raw[:5].lower() == b"host:" or _HTTP_REQUEST_LINE.fullmatch(raw) is not None


def _is_tls_client_hello(data: bytes | bytearray) -> bool:
    """A TLS record header: handshake (0x16), version 3.x (SSL 3 to TLS 1.3)."""
    return len(data) >= 3 and data[0] == 0x16 and data[1] == 0x03 and data[2] <= 0x04


def _may_become_tls_header(data: bytes | bytearray) -> bool:
    """Whether ``data`` is shorter than a TLS record header but could still
    become one: the first read is then held until it can be told (a
    ClientHello sent a byte at a time), so what the server decides never
    depends on how the bytes were split."""
    return 0 < len(data) < 3 and data[0] == 0x16 and (len(data) < 2 or data[1] == 0x03)


# The second byte a UTF-8 sequence may have after each lead byte (RFC 3629:
# no overlong forms, no surrogates, nothing past U+10FFFF); later bytes are
# plain continuation bytes.
_SECOND_BYTE: Final = {
    **{lead: (0x80, 0xBF) for lead in range(0xC2, 0xF5)},
    0xE0: (0xA0, 0xBF),
    0xED: (0x80, 0x9F),
    0xF0: (0x90, 0xBF),
    0xF4: (0x80, 0x8F),
}


def _incomplete_utf8_tail(data: bytes | bytearray) -> int:
    """How many bytes at the end of ``data`` are a true prefix of a UTF-8
    character that has not fully arrived (0 to 3).  Bytes that can never
    start or continue a character (0xFF, Latin-1 text, telnet's IAC) are
    not held: they are invalid now, and waiting will not fix them."""
    for back in range(1, min(3, len(data)) + 1):
        lead = data[-back]
        if lead < 0x80:
            return 0
        if lead < 0xC0:
            continue  # a continuation byte: look further back for its lead
        if lead not in _SECOND_BYTE:
            return 0
        need = 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
        if back >= need:
            return 0  # complete (valid or not): nothing to wait for
        if back >= 2:
            low, high = _SECOND_BYTE[lead]
            if not low <= data[-back + 1] <= high:
                return 0
        return back
    return 0


def _take_fragment(buffer: bytearray, *, final: bool) -> bytes:
    """Empty ``buffer`` into a fragment to be shown as a line; unless
    ``final``, a UTF-8 character cut short stays in ``buffer``."""
    fragment = bytes(buffer)
    keep = 0 if final else _incomplete_utf8_tail(fragment)
    if keep:
        del buffer[:-keep]
        return fragment[:-keep]
    buffer.clear()
    return fragment


#: Work one turn may do before the connection lets others run (memcached's
#: ``-R``): reply bytes built, and lines looked at.  A turn also ends after
#: each LISTAR or DESCONEXION, whose cost depends on the server's state.
TURN_OUTPUT: Final = 64 * 1024
TURN_LINES: Final = 1024
#: A telnet client's input filtered per turn, when it holds commands: at
#: most 512 two-byte commands, about half a millisecond of work.
TELNET_TURN_INPUT: Final = 1024
IAC_BYTE: Final = 0xFF


class ServerProtocol:
    """The server side of one connection.

    Feed it with :meth:`receive_data`; it returns the events that data
    completes.  Lines end with ``\\n``; a ``\\r`` before it is dropped.  The
    buffer never holds more than ``max_line`` bytes of an unfinished line:
    past that the protocol answers with an error and a :class:`Close`.

    Work is handed out in bounded turns: a read full of commands whose
    replies are large (``AYUDA``, ``LISTAR``, invalid lines) is not answered
    all at once.  While :attr:`has_backlog` is true, the I/O layer sends what
    it got, lets others run, and calls :meth:`next_events` for more; it reads
    nothing new meanwhile, so a client that sends faster than it reads is
    slowed down rather than buffered.
    """

    __slots__ = (
        "_backlog",
        "_buffer",
        "_close_reason",
        "_closed",
        "_commands",
        "_fresh",
        "_held",
        "_max_line",
        "_position",
        "_telnet",
        "_telnet_input",
        "_telnet_position",
        "last_command",
        "secret_bytes",
    )

    def __init__(self, max_line: int = DEFAULT_MAX_LINE, *, commands: Counter[str] | None = None) -> None:
        if max_line < 1:
            raise ValueError("max_line must be at least 1")
        # A fragment grows in place: re-joining bytes on every read would make
        # a client trickling one byte at a time cost quadratic copying.
        self._buffer = bytearray()
        self._max_line = max_line
        self._closed = False
        self._fresh = True  # nothing received yet
        # flush_fragment() kept the fragment back once (it ends in a cut
        # UTF-8 character); the next pause answers it whatever it holds.
        self._held = False
        # Complete lines not answered yet, from _position on (see next_events).
        self._backlog: bytes | bytearray = b""
        self._position = 0
        # Set at the first byte 255 (telnet's IAC), which UTF-8 never has.
        self._telnet: TelnetFilter | None = None
        # A telnet client's read not filtered yet (see _telnet_turn).
        self._telnet_input: bytes | bytearray = b""
        self._telnet_position = 0
        #: Counts each command recognised, by name (for ESTADO), if given.
        self._commands = commands
        self._close_reason = "end of input"
        #: The name of the last command this client sent (LISTAR shows it).
        self.last_command: str | None = None
        #: Bytes of lines that carried a token: left out of the byte counts
        #: LISTAR shows others, which would tell the token's length.
        self.secret_bytes = 0

    @property
    def has_fragment(self) -> bool:
        """Whether bytes of an unterminated line are waiting."""
        return bool(self._buffer)

    @property
    def has_backlog(self) -> bool:
        """Whether complete lines, or telnet input, wait for :meth:`next_events`."""
        return self._position < len(self._backlog) or self._telnet_position < len(self._telnet_input)

    def receive_data(self, data: bytes | bytearray) -> list[Event]:
        """Take bytes from the client (``b""``: end of input).  Call only when
        :attr:`has_backlog` is false."""
        if self._closed:
            return []
        if self._fresh:
            if data:
                start = bytes(self._buffer) + data if self._buffer else data
                if _is_tls_client_hello(start):
                    return self._foreign("TLS")
                if _may_become_tls_header(start):
                    self._buffer += data  # (a fragment, should the client pause here)
                    return []
            self._fresh = False
        if self._telnet is not None or 0xFF in data:
            return self._receive_telnet(data)
        return self._receive(data)

    def quick_reply(self, data: bytes | bytearray) -> bytes | None:
        """The whole reply to ``data`` when it is complete ordinary lines with
        nothing held before them (the usual read), as bytes, without events;
        None: call :meth:`receive_data` instead, which would give the same
        reply as one :class:`Reply`.  The I/O layer's fast path."""
        if self._closed or self._buffer or self._telnet is not None:
            return None
        if not data.endswith(b"\n") or 0xFF in data:
            return None
        if self._fresh:  # (what else a first read may be, _fast_reply sees)
            if data[0] == 0x16:  # a TLS record, perhaps: receive_data tells
                return None
            self._fresh = False
        return self._fast_reply(data)

    def quick_close(self) -> bool:
        """At end of input: True when nothing is held to answer (the usual
        close), and the parser is closed; False: call ``receive_data(b"")``
        instead, which answers what is held and closes.  The I/O layer's
        fast path for a client that closes after its last reply."""
        if self._closed or self._buffer or self._telnet is not None or self.has_backlog:
            return False
        self._closed = True
        return True

    def _receive(self, data: bytes | bytearray) -> list[Event]:
        if not data:
            events = self._fragment_events()
            if not self._closed:
                self._closed = True
                events.append(_CLOSE)
            return events
        if self._buffer:
            self._held = False
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
        elif len(buffer) - end > self._max_line + 1:
            # The unterminated rest is already too long: answer it as a last
            # (over-long) line, in order, after the complete ones.
            complete = buffer
        else:
            complete = buffer[:end]
            self._buffer += memoryview(buffer)[end:]
        reply = self._fast_reply(complete)
        if reply is not None:
            return [Reply(reply)]
        self._backlog, self._position = complete, 0
        return self._turn()

    def _receive_telnet(self, data: bytes | bytearray) -> list[Event]:
        """``data`` from a telnet client: commands out, answers first (a
        timing mark must be answered for telnet to show our replies)."""
        if self._telnet is None:
            self._telnet = TelnetFilter()
        if not data:  # end of input: a CR held back is the last of the text
            held = self._telnet.flush()
            return (self._receive(held) if held else []) + self._receive(b"")
        self._telnet_input, self._telnet_position = data, 0
        return self._telnet_turn()

    def _telnet_turn(self) -> list[Event]:
        """Filter the next part of a telnet client's read.  Commands are
        looked at byte by byte, so a read full of them (a stream of ``IAC
        NOP``) is worked off in parts of TELNET_TURN_INPUT bytes, a turn
        each, as lines are; their answers are bounded by that part's size."""
        assert self._telnet is not None
        data, start = self._telnet_input, self._telnet_position
        end = len(data)
        if end - start > TELNET_TURN_INPUT and data.find(IAC_BYTE, start) >= 0:
            end = start + TELNET_TURN_INPUT
        if end >= len(data):
            self._telnet_input, self._telnet_position = b"", 0
        else:
            self._telnet_position = end
        text, answer = self._telnet.feed(data[start:end] if start or end < len(data) else data)
        events: list[Event] = [Reply(answer)] if answer else []
        if text:  # b"" would mean end of input
            events += self._receive(text)
        return events

    def next_events(self) -> list[Event]:
        """The next turn's worth of events from the backlog: lines first,
        then the telnet input they came out of."""
        if self._position < len(self._backlog):
            return self._turn()
        if self._telnet_position < len(self._telnet_input):
            return self._telnet_turn()
        return []

    def flush_fragment(self) -> list[Event]:
        """The client paused mid-line: answer what is buffered as a line.

        A fragment that ends in a true prefix of a UTF-8 character is kept
        back for one more pause, so a character cut by the pause comes out
        whole; at the next pause it is answered whatever it holds.
        """
        if self._closed or self.has_backlog:
            return []
        if not self._held and _incomplete_utf8_tail(self._buffer):
            self._held = True
            return []
        return self._fragment_events()

    # --- internals ----------------------------------------------------------

    def _fast_reply(self, complete: bytes | bytearray) -> bytes | None:
        """All complete lines of one read as one reply, or None when some line
        needs a closer look (a command, bad UTF-8, an over-long line)."""
        if len(complete) > self._max_line + 1:  # some line may be too long
            return None
        upper = complete.upper()  # ASCII letters only: what commands are matched on
        if upper[0] in _MAY_START_SPECIAL and _SPECIAL_FIRST_LINE.match(upper):
            return None
        if _SPECIAL_LATER_LINE.search(upper, 0, len(upper) - 1):  # (a "\n" last starts no line)
            return None
        if 0x2F in upper and b"HTTP/" in upper:  # 0x2F, "/": an int is found by memchr
            return None
        if not upper.isascii():
            try:
                # Uppercasing grows text at most 3x (U+0390 -> three
                # characters), so this reply is bounded by the read.
                upper = complete.decode().upper().encode()
            except UnicodeDecodeError:
                return None
        if 0x0D in upper:  # "\r"
            upper = upper.replace(b"\r\n", b"\n")
        return upper if type(upper) is bytes else bytes(upper)

    def _turn(self) -> list[Event]:
        """Answer backlog lines until a turn's budget is spent."""
        backlog, position, max_line = self._backlog, self._position, self._max_line
        events: list[Event] = []
        replies: list[bytes] = []  # consecutive replies go out as one write
        size = lines = 0
        while position < len(backlog) and size < TURN_OUTPUT and lines < TURN_LINES:
            end = backlog.find(b"\n", position)
            if end < 0:  # an unterminated last line: a flushed fragment, or an over-long rest
                end = len(backlog)
            raw = backlog[position:end]
            position = end + 1
            lines += 1
            reply = self._answer_line(raw, max_line)
            if isinstance(reply, bytes):
                replies.append(reply)
                size += len(reply)
                if self._closed:
                    break
                continue
            if replies:
                events.append(Reply(b"".join(replies)))
                replies = []
            events.append(reply)
            break  # its cost depends on the server: a turn of its own
        if replies:
            events.append(Reply(b"".join(replies)))
        if self._closed:
            self._release_backlog()
            self._buffer.clear()
            events.append(Close(self._close_reason))
        elif position >= len(backlog):
            self._release_backlog()
        else:
            self._position = position
        return events

    def _release_backlog(self) -> None:
        # An idle connection must not keep its last batch alive.
        self._backlog, self._position = b"", 0

    def _answer_line(self, raw: bytes | bytearray, max_line: int) -> bytes | Event:
        """One line's reply bytes, or the event it calls for.  Sets
        ``_closed`` when the line ends the conversation."""
        length = len(raw) + 1
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if len(raw) > max_line:
            self._closed, self._close_reason = True, "line too long"
            return encode_line(line_too_long(max_line))
        command = _command(raw)
        if command is not None:
            event, closes = command
            self.last_command = _command_name(raw)
            if self._commands is not None:
                self._commands[self.last_command] += 1
            if closes:
                self._closed, self._close_reason = True, "APAGAR"
            if isinstance(event, Reply):
                return event.data
            if not isinstance(event, ListClients) and event.token is not None:
                self.secret_bytes += length
            return event
        if _is_http(raw):
            self._closed, self._close_reason = True, "HTTP request"
            return ForeignProtocol("HTTP")
        try:
            return (raw.decode().upper() + "\n").encode()
        except UnicodeDecodeError:
            return _INVALID_UTF8_LINE

    def _foreign(self, name: str) -> list[Event]:
        self._closed = True
        self._buffer.clear()
        return [ForeignProtocol(name), Close(f"{name} on the plain port")]

    def _fragment_events(self) -> list[Event]:
        """The buffered fragment, answered as a complete line."""
        self._held = self._fresh = False
        if not self._buffer:
            return []
        self._backlog, self._position = bytes(self._buffer), 0
        self._buffer.clear()
        return self._turn()

    def _check_fragment_size(self, events: list[Event]) -> list[Event]:
        # A trailing \r may be the first half of a \r\n: it does not count.
        limit = self._max_line + self._buffer.endswith(b"\r")
        if len(self._buffer) > limit and not self._closed:
            self._buffer.clear()
            self._closed, self._close_reason = True, "line too long"
            events.append(Reply(encode_line(line_too_long(self._max_line))))
            events.append(Close(self._close_reason))
        return events


_INVALID_UTF8_LINE: Final = encode_line(INVALID_UTF8)


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


def is_closing_command(line: str | bytes) -> bool:
    """Whether sending ``line`` asks the server to close this connection
    (``APAGAR``, or ``DESCONEXION`` with or without a token)."""
    command = _command(line.encode("utf-8", "surrogateescape") if isinstance(line, str) else line)
    return command is not None and (command[1] or isinstance(command[0], Shutdown))


def is_shutdown_command(line: str) -> bool:
    """Whether sending ``line`` asks the server to shut down (DESCONEXION)."""
    command = _command(line.encode("utf-8", "surrogateescape"))
    return command is not None and isinstance(command[0], Shutdown)


def carries_token(line: str | bytes) -> bool:
    """Whether ``line`` is a command with a token on it (``AUTENTICAR``,
    ``ESTADO``/``DESCONEXION`` with an argument): not to be kept in a
    history or shown."""
    command = _command(line.encode("utf-8", "surrogateescape") if isinstance(line, str) else line)
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
    command = _command(line.encode("utf-8", "surrogateescape"))
    return None if command is None else _HEADERS.get(type(command[0]))


def parse_reply_header(line: str, word: str = LISTING_HEADER) -> int | None:
    """How many lines follow a ``<word> <n>`` header, or None when ``line``
    is not one (an ERROR, or another server's reply)."""
    words = line.split()
    if len(words) == 2 and words[0] == word and words[1].isdigit():
        return int(words[1])
    return None
