"""Lines out of a byte stream, sans-IO: where a UTF-8 character was cut
short by a pause, and the client's :class:`LineReader`.
"""

from __future__ import annotations

from typing import Final

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


def incomplete_utf8_tail(data: bytes | bytearray) -> int:
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


def take_fragment(buffer: bytearray, *, final: bool) -> bytes:
    """Empty ``buffer`` into a fragment to be shown as a line; unless
    ``final``, a UTF-8 character cut short stays in ``buffer``."""
    fragment = bytes(buffer)
    keep = 0 if final else incomplete_utf8_tail(fragment)
    if keep:
        del buffer[:-keep]
        return fragment[:-keep]
    buffer.clear()
    return fragment


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
        fragment = take_fragment(self._buffer, final=final)
        return _decode_shown(fragment) if fragment else None


def _decode_shown(raw: bytes) -> str:
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    return raw.decode(errors="replace")
