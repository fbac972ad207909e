"""Telnet's in-band commands (RFC 854, 855, 860), sans-IO.

``telnet host port`` is still the first client many people try, and the
only one built into Windows.  It sends commands inside the data: ``IAC``
(byte 255) and a command byte, sometimes an option byte too.  Left in the
data, they turn lines into encoding errors, and telnet itself goes silent
after Ctrl-C: it sends ``IAC IP IAC DO TIMING-MARK`` and discards all output
until the server answers the timing mark.

:class:`TelnetFilter` takes the commands out of the byte stream and says
what to answer: every option is refused (``WONT`` / ``DONT``), so telnet
stays in its line mode; ``DO TIMING-MARK`` is answered ``WILL TIMING-MARK``
(RFC 860), which is what Ctrl-C waits for; ``AYT`` (are you there) gets a
short line; ``IAC IAC`` is a data byte 255; a subnegotiation is skipped
whole; ``CR NUL`` (telnet's bare carriage return) ends a line.  The state
carries over from one chunk to the next, so a command may be split anywhere.

Byte 255 never occurs in UTF-8 text, so the server only needs this once it
has seen one: ordinary clients never pay for it.
"""

from __future__ import annotations

from typing import Final

IAC: Final = 255
DONT: Final = 254
DO: Final = 253
WONT: Final = 252
WILL: Final = 251
SB: Final = 250
AYT: Final = 246
SE: Final = 240
TIMING_MARK: Final = 6

#: The answer to Are You There, a line of its own.
AYT_REPLY: Final = "[eco_trio: aquí estoy]\n".encode()

_DATA, _COMMAND, _OPTION, _SUBNEGOTIATION, _SUBNEGOTIATION_IAC = range(5)


class TelnetFilter:
    __slots__ = ("_held_cr", "_state", "_verb")

    def __init__(self) -> None:
        self._state = _DATA
        self._verb = 0  # WILL, WONT, DO or DONT, while its option byte is awaited
        self._held_cr = False  # a CR at the end of a chunk: CR NUL or not?

    def feed(self, data: bytes | bytearray) -> tuple[bytes, bytes]:
        """``data`` without telnet commands, and the bytes to answer with."""
        text = bytearray()
        answer = bytearray()
        if self._held_cr:
            self._held_cr = False
            text += b"\r"
        state, position, end = self._state, 0, len(data)
        answered_ayt = False
        while position < end:
            if state == _DATA:
                iac = data.find(IAC, position)
                stop = end if iac < 0 else iac
                text += data[position:stop]
                position = stop
                if iac >= 0:
                    state, position = _COMMAND, position + 1
                continue
            byte = data[position]
            position += 1
            if state == _COMMAND:
                if byte == IAC:
                    text.append(IAC)  # IAC IAC: the data byte 255
                    state = _DATA
                elif byte in (WILL, WONT, DO, DONT):
                    self._verb, state = byte, _OPTION
                elif byte == SB:
                    state = _SUBNEGOTIATION
                else:
                    if byte == AYT and not answered_ayt:
                        # One answer per part of input: a stream of AYT
                        # must not make us send 12 bytes for each 2.
                        answer += AYT_REPLY
                        answered_ayt = True
                    state = _DATA  # IP, BRK, NOP, GA, ...: nothing to show
            elif state == _OPTION:
                answer += _refusal(self._verb, byte)
                state = _DATA
            elif state == _SUBNEGOTIATION:
                if byte == IAC:
                    state = _SUBNEGOTIATION_IAC
            else:  # _SUBNEGOTIATION_IAC
                state = _DATA if byte == SE else _SUBNEGOTIATION
        self._state = state
        text = text.replace(b"\r\x00", b"\n")
        if text.endswith(b"\r"):
            del text[-1:]
            self._held_cr = True
        return bytes(text), bytes(answer)

    def flush(self) -> bytes:
        """What is held back at end of input."""
        held, self._held_cr = self._held_cr, False
        return b"\r" if held else b""


def _refusal(verb: int, option: int) -> bytes:
    if verb == DO:
        # The one "yes": a timing mark is answered, not enabled (RFC 860).
        reply = WILL if option == TIMING_MARK else WONT
        return bytes((IAC, reply, option))
    if verb == WILL:
        return bytes((IAC, DONT, option))
    return b""  # WONT and DONT are already the state we are in: no answer, no loop
