"""Text a peer chose, made safe to show to someone else (sans-IO).

A certificate's name, a client's address or line: whatever a peer chooses
and the server repeats (in LISTAR, in the log) or the client shows on a
terminal could carry a newline (an extra LISTAR row, a forged log line) or
an escape sequence (a cleared screen, a changed window title, a written
clipboard).  As OpenSSH's ``strnvis`` does, every character that is not
printable is written as an escape: ``\\x1b``, ``\\n``, ``\\u202e``; a
backslash is doubled, so the escaped text reads back unambiguously.
"""

from __future__ import annotations

from typing import Final

_NAMED: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _one(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def escape(text: str) -> str:
    """``text`` with every non-printable character (controls, line and
    paragraph separators, bidirectional overrides, ...) and the backslash
    escaped; printable text, the usual case, comes back as it is."""
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(char if char.isprintable() and char != "\\" else _one(char) for char in text)


def escape_word(text: str) -> str:
    """:func:`escape`, and spaces too: for a ``key=value`` field."""
    return escape(text).replace(" ", "\\x20")
