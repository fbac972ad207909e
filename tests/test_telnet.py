"""Telnet's in-band commands, sans-IO: split anywhere, answered right, and
never in the way of the lines around them."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eco_trio.wire import protocol, telnet
from eco_trio.wire.protocol import Reply, ServerProtocol
from eco_trio.wire.telnet import AYT, DO, DONT, IAC, SB, SE, TIMING_MARK, WILL, WONT, TelnetFilter

IP, BRK = 244, 243
ECHO, SUPPRESS_GO_AHEAD, LINEMODE, NAWS = 1, 3, 34, 31

CTRL_C = bytes((IAC, IP, IAC, DO, TIMING_MARK))
MODE_CHARACTER = bytes((IAC, DO, SUPPRESS_GO_AHEAD, IAC, WILL, ECHO))  # asked by "mode character"


def filtered(chunks: list[bytes]) -> tuple[bytes, bytes]:
    telnet_filter = TelnetFilter()
    text, answer = b"", b""
    for chunk in chunks:
        more_text, more_answer = telnet_filter.feed(chunk)
        text, answer = text + more_text, answer + more_answer
    return text + telnet_filter.flush(), answer


SESSION = (
    b"hola\r\n"
    + CTRL_C
    + b"sigo\r\n"
    + bytes((IAC, AYT))
    + MODE_CHARACTER
    + bytes((IAC, SB, NAWS, 0, 80, 0, 24, IAC, SE))
    + b"a"
    + bytes((IAC, IAC))
    + b"b\r\x00"
    + bytes((IAC, BRK, IAC, WONT, LINEMODE, IAC, DONT, ECHO))
    + b"fin\r\n"
)
EXPECTED_TEXT = b"hola\r\nsigo\r\na\xffb\nfin\r\n"
EXPECTED_ANSWER = (
    bytes((IAC, WILL, TIMING_MARK))
    + telnet.AYT_REPLY
    + bytes((IAC, WONT, SUPPRESS_GO_AHEAD, IAC, DONT, ECHO))
)


@pytest.mark.parametrize("cut", range(len(SESSION) + 1))
def test_commands_are_taken_out_wherever_the_data_is_split(cut: int) -> None:
    assert filtered([SESSION[:cut], SESSION[cut:]]) == (EXPECTED_TEXT, EXPECTED_ANSWER)


def test_byte_at_a_time() -> None:
    assert filtered([bytes([b]) for b in SESSION]) == (EXPECTED_TEXT, EXPECTED_ANSWER)


def test_ctrl_c_is_answered_so_telnet_shows_output_again() -> None:
    parser = ServerProtocol()
    assert parser.receive_data(b"hola\r\n") == [Reply(b"HOLA\n")]
    assert parser.receive_data(CTRL_C) == [Reply(bytes((IAC, WILL, TIMING_MARK)))]
    assert parser.receive_data(b"sigo\r\n") == [Reply(b"SIGO\n")]


def test_every_option_is_refused_so_telnet_stays_in_line_mode() -> None:
    parser = ServerProtocol()
    events = parser.receive_data(MODE_CHARACTER + bytes((IAC, DO, LINEMODE, IAC, WILL, NAWS)))
    assert events == [
        Reply(bytes((IAC, WONT, SUPPRESS_GO_AHEAD, IAC, DONT, ECHO, IAC, WONT, LINEMODE, IAC, DONT, NAWS)))
    ]


def test_refusals_are_not_answered_so_nothing_loops() -> None:
    parser = ServerProtocol()
    assert parser.receive_data(bytes((IAC, WONT, ECHO, IAC, DONT, ECHO))) == []


def test_are_you_there_gets_a_line_and_break_is_silent() -> None:
    parser = ServerProtocol()
    assert parser.receive_data(bytes((IAC, AYT))) == [Reply(telnet.AYT_REPLY)]
    assert parser.receive_data(bytes((IAC, BRK))) == []


def test_cr_nul_ends_a_line_and_iac_iac_is_a_data_byte() -> None:
    parser = ServerProtocol()
    assert parser.receive_data(bytes((IAC, NOP := 241)) + b"uno\r\x00") == [Reply(b"UNO\n")]
    invalid = protocol.encode_line(protocol.INVALID_UTF8)
    assert parser.receive_data(b"x" + bytes((IAC, IAC)) + b"\r\n") == [Reply(invalid)]
    assert NOP == 241


def test_a_cr_held_at_the_end_of_input_is_not_lost() -> None:
    parser = ServerProtocol()
    parser.receive_data(bytes((IAC, AYT)) + b"fin\r")
    events = parser.receive_data(b"")
    assert Reply(b"FIN\n") in events


def test_ordinary_clients_never_meet_the_filter() -> None:
    parser = ServerProtocol()
    parser.receive_data("ñandú\nhola\r\n".encode())
    assert parser._telnet is None


@settings(max_examples=300, deadline=None)
@given(
    data=st.lists(
        st.one_of(
            st.binary(max_size=12), st.sampled_from([CTRL_C, MODE_CHARACTER, bytes((IAC, IAC)), b"\r\x00"])
        ),
        max_size=12,
    ).map(b"".join),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=6),
)
def test_any_bytes_in_any_chunking_filter_the_same(data: bytes, cuts: list[int]) -> None:
    positions = sorted({c % (len(data) + 1) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *positions], [*positions, len(data)], strict=True)]
    assert filtered(chunks) == filtered([data])
