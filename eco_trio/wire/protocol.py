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

The words it speaks and how it tells a command from a line are in
:mod:`eco_trio.wire.commands` (all re-exported here, where they always
were); the client's line reader is in :mod:`eco_trio.wire.lines`.
"""

from __future__ import annotations

from collections import Counter
from typing import Final

from eco_trio.wire import proxy
from eco_trio.wire.commands import *  # noqa: F403 (re-exported: the protocol's words)
from eco_trio.wire.commands import (
    CLOSE,
    DEFAULT_MAX_LINE,
    INVALID_UTF8,
    MAY_START_SPECIAL,
    SPECIAL_FIRST_LINE,
    SPECIAL_LATER_LINE,
    Close,
    Event,
    ForeignProtocol,
    ListClients,
    Reply,
    command_name,
    command_of,
    encode_line,
    is_http,
    is_tls_client_hello,
    line_too_long,
    may_become_tls_header,
)
from eco_trio.wire.lines import LineReader as LineReader  # where clients found it before
from eco_trio.wire.lines import incomplete_utf8_tail
from eco_trio.wire.telnet import TelnetFilter

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
        "_refuse_proxy",
        "_telnet",
        "_telnet_input",
        "_telnet_position",
        "last_command",
        "secret_bytes",
    )

    def __init__(
        self,
        max_line: int = DEFAULT_MAX_LINE,
        *,
        commands: Counter[str] | None = None,
        refuse_proxy_headers: bool = False,
    ) -> None:
        """``refuse_proxy_headers``: a first read that is a PROXY protocol
        header is a foreign protocol (behind a load balancer, a client that
        is not a trusted proxy must not name another address)."""
        if max_line < 1:
            raise ValueError("max_line must be at least 1")
        # A fragment grows in place: re-joining bytes on every read would make
        # a client trickling one byte at a time cost quadratic copying.
        self._buffer = bytearray()
        self._max_line = max_line
        self._closed = False
        self._fresh = True  # nothing received yet
        self._refuse_proxy = refuse_proxy_headers
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
                if is_tls_client_hello(start):
                    return self._foreign("TLS")
                if self._refuse_proxy and start.startswith(proxy.SIGNATURES):
                    return self._foreign("PROXY")
                if may_become_tls_header(start):
                    self._buffer += data  # (a fragment, should the client pause here)
                    return []
            self._fresh = False
        if self._telnet is not None or 0xFF in data:
            return self._receive_telnet(data)
        return self._receive(data)

    def quick_reply(self, data: bytes | bytearray, lines: int = 0) -> bytes | None:
        """The whole reply to ``data`` when it is complete ordinary lines with
        nothing held before them (the usual read), as bytes, without events;
        None: call :meth:`receive_data` instead, which would give the same
        reply as one :class:`Reply`.  The I/O layer's fast path, run once per
        read: ``lines``, if the caller knows it, is how many newlines
        ``data`` holds (1 spares a search for commands after the first)."""
        if self._closed or self._buffer or self._telnet is not None or not data.endswith(b"\n"):
            return None
        if self._fresh:  # (what else a first read may be, _fast_reply sees)
            if data[0] == 0x16:  # a TLS record, perhaps: receive_data tells
                return None
            if self._refuse_proxy and data.startswith(proxy.STARTS):
                return None  # a PROXY header, perhaps: receive_data tells
            self._fresh = False
        return self._fast_reply(data, lines)

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
                events.append(CLOSE)
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
        if not self._held and incomplete_utf8_tail(self._buffer):
            self._held = True
            return []
        return self._fragment_events()

    # --- internals ----------------------------------------------------------

    def _fast_reply(self, complete: bytes | bytearray, lines: int = 0) -> bytes | None:
        """All complete lines of one read as one reply, or None when some line
        needs a closer look (a command, bad UTF-8, an over-long line, a
        telnet command).  ``lines``: as for :meth:`quick_reply`."""
        if len(complete) > self._max_line + 1:  # some line may be too long
            return None
        upper = complete.upper()  # ASCII letters only: what commands are matched on
        if upper[0] in MAY_START_SPECIAL and SPECIAL_FIRST_LINE.match(upper):
            return None
        # (A "\n" last starts no line.)
        if lines != 1 and SPECIAL_LATER_LINE.search(upper, 0, len(upper) - 1):
            return None
        if 0x2F in upper and b"HTTP/" in upper:  # 0x2F, "/": an int is found by memchr
            return None
        if not upper.isascii():
            if 0xFF in upper:  # telnet's IAC: receive_data tells
                return None
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
        command = command_of(raw)
        if command is not None:
            event, closes = command
            self.last_command = command_name(raw)
            if self._commands is not None:
                self._commands[self.last_command] += 1
            if closes:
                self._closed, self._close_reason = True, "APAGAR"
            if isinstance(event, Reply):
                return event.data
            if not isinstance(event, ListClients) and event.token is not None:
                self.secret_bytes += length
            return event
        if is_http(raw):
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
