"""The sans-IO protocol, with no event loop: bytes in, events out."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eco_trio import protocol
from eco_trio.protocol import (
    Close,
    Event,
    LineReader,
    ListClients,
    Reply,
    ServerProtocol,
    Shutdown,
    is_closing_command,
)

FAREWELL = protocol.encode_line(protocol.FAREWELL)


def wire(events: list[Event]) -> bytes:
    """What the server would send for ``events`` (placeholders for the
    events that need server state)."""
    out = b""
    for event in events:
        match event:
            case Reply(data=data):
                out += data
            case ListClients():
                out += b"<LISTAR>\n"
            case Shutdown(token=token):
                out += f"<DESCONEXION {token}>\n".encode()
            case Close():
                out += b"<CLOSE>"
    return out


def feed(chunks: list[bytes], *, max_line: int = protocol.DEFAULT_MAX_LINE) -> bytes:
    parser = ServerProtocol(max_line)
    out = b""
    for chunk in chunks:
        if chunk:  # b"" would mean end of input
            out += wire(parser.receive_data(chunk))
    return out


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        ("hola", "HOLA"),
        ("ñandú straße", "ÑANDÚ STRASSE"),
        ("ﬁn", "FIN"),
        ("mixed Case 123 !?", "MIXED CASE 123 !?"),
        ("", ""),
        ("  espacios  ", "  ESPACIOS  "),
        ("hola servidor", "HOLA CLIENTE"),
        ("  Hola   SERVIDOR ", "HOLA CLIENTE"),
        ("hola servidor!", "HOLA SERVIDOR!"),
        ("apagar ahora", "APAGAR AHORA"),
        ("listar todo", "LISTAR TODO"),
        ("servidores", "SERVIDORES"),
    ],
)
def test_ordinary_lines_come_back_uppercased(line: str, reply: str) -> None:
    assert feed([(line + "\n").encode()]) == (reply + "\n").encode()


@pytest.mark.parametrize("word", ["APAGAR", "apagar", " Apagar\t", "aPaGaR\r"])
def test_apagar_says_goodbye_and_closes(word: str) -> None:
    assert feed([f"{word}\nnot answered\n".encode()]) == FAREWELL + b"<CLOSE>"


@pytest.mark.parametrize("word", ["LISTAR", "listar", "  Listar  "])
def test_listar_asks_the_server(word: str) -> None:
    assert feed([f"a\n{word}\nb\n".encode()]) == b"A\n<LISTAR>\nB\n"


@pytest.mark.parametrize(
    ("line", "token"),
    [
        ("DESCONEXION", None),
        ("desconexion", None),
        ("DESCONEXIÓN", None),
        ("desconexión", None),
        (" DESCONEXION  MiToken ", "MiToken"),
    ],
)
def test_desconexion_asks_the_server(line: str, token: str | None) -> None:
    assert ServerProtocol().receive_data(f"{line}\n".encode()) == [Shutdown(token)]


def test_ayuda_lists_the_commands() -> None:
    reply = feed([b"ayuda\n"]).decode()
    for command in ("AYUDA", "LISTAR", "APAGAR", "DESCONEXION"):
        assert command in reply
    assert reply.count("\n") == 1


def test_crlf_is_accepted_and_a_lone_cr_kept() -> None:
    assert feed([b"hola\r\nun\rcr\r\n"]) == b"HOLA\nUN\rCR\n"


def test_merged_lines_get_one_reply_event() -> None:
    events = ServerProtocol().receive_data(b"uno\ndos\ntres\n")
    assert events == [Reply(b"UNO\nDOS\nTRES\n")]


MESSAGES = "hola\nñandú straße\r\nLISTAR\n€uro 𝄞\nAYUDA\n\nDESCONEXION clave\nfin\n".encode()


@pytest.mark.parametrize("cut", range(len(MESSAGES) + 1))
def test_any_split_point_gives_the_same_replies(cut: int) -> None:
    assert feed([MESSAGES[:cut], MESSAGES[cut:]]) == feed([MESSAGES])


def test_byte_at_a_time_gives_the_same_replies() -> None:
    assert feed([bytes([b]) for b in MESSAGES]) == feed([MESSAGES])


def test_partial_line_waits_for_the_rest() -> None:
    parser = ServerProtocol()
    assert parser.receive_data(b"ho") == []
    assert parser.has_fragment
    assert parser.receive_data(b"la\n") == [Reply(b"HOLA\n")]
    assert not parser.has_fragment


def test_flush_answers_a_fragment_as_a_line() -> None:
    parser = ServerProtocol()
    parser.receive_data(b"sin salto")
    assert parser.flush_fragment() == [Reply(b"SIN SALTO\n")]
    assert parser.flush_fragment() == []


def test_flush_keeps_a_cut_utf8_character_for_the_next_line() -> None:
    parser = ServerProtocol()
    n_tilde = "ñ".encode()
    parser.receive_data(b"a" + n_tilde[:1])
    assert parser.flush_fragment() == [Reply(b"A\n")]
    assert parser.receive_data(n_tilde[1:] + b"\n") == [Reply("Ñ\n".encode())]


def test_flush_of_a_fragment_command_runs_it() -> None:
    parser = ServerProtocol()
    parser.receive_data(b"apagar")
    assert parser.flush_fragment() == [Reply(FAREWELL), Close()]


def test_end_of_input_answers_the_fragment_then_closes() -> None:
    parser = ServerProtocol()
    assert wire(parser.receive_data(b"uno\ndos") + parser.receive_data(b"")) == b"UNO\nDOS\n<CLOSE>"
    parser = ServerProtocol()
    assert parser.receive_data(b"") == [Close()]
    assert parser.receive_data(b"more\n") == []


def test_invalid_utf8_is_answered_with_an_error_and_the_next_line_served() -> None:
    out = feed([b"bien\n\xff\xfe mal\notra\n"]).split(b"\n")
    assert out[0] == b"BIEN"
    assert out[1].startswith(b"ERROR")
    assert out[2] == b"OTRA"


@pytest.mark.parametrize(
    "chunks", [[b"x" * 11], [b"x" * 6, b"x" * 5], [b"x" * 11 + b"\n"], [b"ok\n" + b"y" * 11 + b"\n"]]
)
def test_a_line_over_the_limit_is_refused_and_closes(chunks: list[bytes]) -> None:
    out = feed(chunks, max_line=10)
    assert out.endswith(b"<CLOSE>")
    assert b"ERROR" in out and b"10 bytes" in out
    assert out.count(b"\n") == out.startswith(b"OK\n") + 1


def test_lines_at_the_limit_pass() -> None:
    assert (
        feed([b"x" * 10 + b"\r\n" + b"y" * 10 + b"\n"], max_line=10) == b"X" * 10 + b"\n" + b"Y" * 10 + b"\n"
    )


def test_is_closing_command() -> None:
    assert is_closing_command("apagar")
    assert is_closing_command(" DESCONEXION tok")
    assert not is_closing_command("listar")
    assert not is_closing_command("apagar ya")


def test_line_reader_splits_and_flushes() -> None:
    reader = LineReader()
    assert reader.feed(b"UNO\r\nDO") == ["UNO"]
    assert reader.feed(b"S\nTR") == ["DOS"]
    assert reader.flush() == "TR"
    assert reader.flush() is None
    assert reader.feed(b"\xff\n") == ["\ufffd"]


def test_line_reader_caps_its_buffer() -> None:
    reader = LineReader(max_line=4)
    assert reader.feed(b"abcdefghij") == ["abcd", "efgh"]
    assert reader.flush() == "ij"


def test_protocol_module_imports_no_io() -> None:
    source = Path(protocol.__file__).read_text()
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"trio", "socket", "asyncio", "time", "selectors", "select"}


# --- properties ---------------------------------------------------------------

LIMIT = 64

line_text = st.one_of(
    st.sampled_from(["hola", "LISTAR", "ayuda", "hola servidor", "ñandú", "straße", "€𝄞", "", " x "]),
    st.text(max_size=20),
)


def slow_reference(lines: list[bytes]) -> bytes:
    """Line by line, one at a time: the reference the fast path must match."""
    out = b""
    parser = ServerProtocol(LIMIT)
    for line in lines:
        out += wire(parser.receive_data(line))
    return out


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(line_text.map(lambda s: s.encode() + b"\n"), max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
)
def test_fast_batches_match_line_by_line(lines: list[bytes], cuts: list[int]) -> None:
    data = b"".join(lines)
    positions = sorted({c % (len(data) + 1) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *positions], [*positions, len(data)], strict=True)]
    assert feed(chunks, max_line=LIMIT) == slow_reference(lines)


def reference(data: bytes) -> bytes:
    """An independent model of the protocol, line by line, for the property test."""
    out = []
    *lines, last = data.split(b"\n")
    for raw in [*lines, last] if last else lines:
        raw = raw.removesuffix(b"\r")
        if len(raw) > LIMIT:
            out.append(b"<TOO LONG>\n")
            break
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            out.append(b"<INVALID>\n")
            continue
        words = text.upper().split()
        if words == ["APAGAR"]:
            out.append(b"<FAREWELL>\n")
            break
        if words == ["LISTAR"]:
            out.append(b"<LISTAR>\n")
        elif words[:1] in (["DESCONEXION"], ["DESCONEXIÓN"]) and len(words) <= 2:
            token = text.split()[1] if len(words) == 2 else None
            out.append(f"<DESCONEXION {token}>\n".encode())
        elif words == ["AYUDA"]:
            out.append(protocol.encode_line(protocol.HELP))
        elif words == ["HOLA", "SERVIDOR"]:
            out.append(b"HOLA CLIENTE\n")
        else:
            out.append((text.upper() + "\n").encode())
    return b"".join(out)


def normalise(out: bytes) -> bytes:
    """Our output with the fixed texts replaced by the reference's tags."""
    out = out.replace(FAREWELL, b"<FAREWELL>\n").replace(b"<CLOSE>", b"")
    out = out.replace(protocol.encode_line(protocol.INVALID_UTF8), b"<INVALID>\n")
    return out.replace(protocol.encode_line(protocol.line_too_long(LIMIT)), b"<TOO LONG>\n")


binary_lines = st.lists(
    st.one_of(
        st.binary(max_size=80),
        line_text.map(str.encode),
        st.sampled_from([b"apagar", b"x" * LIMIT + b"\r", b"\xc3", b"\xf0\x9d\x84", b"DESCONEXION t"]),
    ),
    max_size=10,
).map(lambda parts: b"\n".join(parts))


@settings(max_examples=500, deadline=None)
@given(data=binary_lines, cuts=st.lists(st.integers(min_value=0, max_value=1000), max_size=10))
def test_any_bytes_in_any_chunking_match_the_reference_and_stay_bounded(data: bytes, cuts: list[int]) -> None:
    parser = ServerProtocol(LIMIT)
    positions = sorted({c % (len(data) + 1) for c in cuts})
    out = b""
    for a, b in zip([0, *positions], [*positions, len(data)], strict=True):
        if a < b:
            out += wire(parser.receive_data(data[a:b]))
        assert len(parser._buffer) <= LIMIT + 1
    end = parser.receive_data(b"")
    out += wire(end)
    assert out.endswith(b"<CLOSE>")
    assert normalise(out) == reference(data)
