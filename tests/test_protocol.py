"""The sans-IO protocol, with no event loop: bytes in, events out."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eco_trio.wire import protocol
from eco_trio.wire.protocol import (
    Authenticate,
    Close,
    Event,
    ForeignProtocol,
    LineReader,
    ListClients,
    Reply,
    ServerProtocol,
    Shutdown,
    Status,
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
                out += b"<DESCONEXION " + (token or b"None") + b">\n"
            case ForeignProtocol(name=name):
                out += f"<{name}>".encode()
            case Status(token=token):
                out += b"<ESTADO " + (token or b"None") + b">\n"
            case Authenticate(token=token):
                out += b"<AUTENTICAR " + (token or b"None") + b">\n"
            case Close():
                out += b"<CLOSE>"
    return out


def receive(parser: ServerProtocol, data: bytes) -> list[Event]:
    """Every event ``data`` completes, over as many turns as it takes."""
    events = parser.receive_data(data)
    while parser.has_backlog:
        events += parser.next_events()
    return events


def feed(chunks: list[bytes], *, max_line: int = protocol.DEFAULT_MAX_LINE) -> bytes:
    parser = ServerProtocol(max_line)
    out = b""
    for chunk in chunks:
        if chunk:  # b"" would mean end of input
            out += wire(receive(parser, chunk))
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
        ("DesconexióN", None),
        (" DESCONEXION  MiToken ", b"MiToken"),
        ("desconexion ñ€\t", "ñ€".encode()),
    ],
)
def test_desconexion_asks_the_server(line: str, token: bytes | None) -> None:
    assert ServerProtocol().receive_data(f"{line}\n".encode()) == [Shutdown(token)]


def test_a_token_may_be_any_bytes() -> None:
    assert ServerProtocol().receive_data(b"DESCONEXION \xfe\xc0\x80\n") == [Shutdown(b"\xfe\xc0\x80")]


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        ("deſconexion", "DESCONEXION"),  # long s: only Unicode case mapping makes it a command
        ("lıstar", "LISTAR"),  # dotless i
        ("ａｐａｇａｒ", "ＡＰＡＧＡＲ"),  # fullwidth letters
        ("AYUDA\u00a0", "AYUDA\u00a0"),  # no-break space is not ASCII whitespace
        ("ﬁn", "FIN"),
    ],
)
def test_commands_are_ascii_words_so_look_alikes_are_ordinary_lines(line: str, reply: str) -> None:
    assert feed([(line + "\n").encode()]) == (reply + "\n").encode()


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


@pytest.mark.parametrize(("character", "cut"), [("ñ", 1), ("€", 1), ("€", 2), ("𝄞", 1), ("𝄞", 2), ("𝄞", 3)])
def test_a_character_cut_by_the_pause_is_kept_for_one_more_pause(character: str, cut: int) -> None:
    encoded = character.encode()
    parser = ServerProtocol()
    parser.receive_data(b"a" + encoded[:cut])
    assert parser.flush_fragment() == []  # the first pause waits
    assert parser.receive_data(encoded[cut:] + b"\n") == [Reply(f"A{character.upper()}\n".encode())]
    parser.receive_data(b"b" + encoded[:cut])  # held again: the allowance is per fragment
    assert parser.flush_fragment() == []
    assert parser.receive_data(encoded[cut:]) == []
    assert parser.flush_fragment() == [Reply(f"B{character.upper()}\n".encode())]


@pytest.mark.parametrize("cut_short", [b"\xc3", b"\xe2\x82", b"\xf0\x9d\x84"])
def test_a_cut_character_that_never_completes_is_answered_at_the_next_pause(cut_short: bytes) -> None:
    parser = ServerProtocol()
    parser.receive_data(b"abc" + cut_short)
    assert parser.flush_fragment() == []
    assert parser.flush_fragment() == [Reply(protocol.encode_line(protocol.INVALID_UTF8))]
    assert not parser.has_fragment
    assert receive(parser, b"def\n") == [Reply(b"DEF\n")]


@pytest.mark.parametrize(
    "fragment",
    [
        b"abc\xfe",  # never valid in UTF-8
        "café".encode("latin-1"),  # \xe9 followed by nothing: Latin-1, not a cut character
        b"x\xc1",  # an overlong lead byte
        b"\xc0",  # overlong lead byte
        b"\xe0\x80",  # overlong second byte
        b"\xed\xa0",  # a surrogate
        b"\xf4\x90",  # past U+10FFFF
        b"\xf5",  # no such lead byte
    ],
)
def test_bytes_that_cannot_start_a_character_are_not_held(fragment: bytes) -> None:
    parser = ServerProtocol()
    parser.receive_data(fragment)
    expected = [Reply(protocol.encode_line(protocol.INVALID_UTF8))]
    if fragment == "café".encode("latin-1"):
        # \xe9 alone could start a 3-byte character: held for one pause only.
        assert parser.flush_fragment() == []
    assert parser.flush_fragment() == expected
    assert receive(parser, b"def\n") == [Reply(b"DEF\n")]  # the next line is not spoilt


def test_flush_of_a_fragment_command_runs_it() -> None:
    parser = ServerProtocol()
    parser.receive_data(b"apagar")
    assert parser.flush_fragment() == [Reply(FAREWELL), Close()]


@pytest.mark.parametrize(
    "opener",
    [
        b"POST / HTTP/1.1",
        b"GET /index.html HTTP/1.0",
        b"get / HTTP/1.1",
        b"OPTIONS * HTTP/1.1",
        b"PRI * HTTP/2.0",
        b"Host: 127.0.0.1:5000",
        b"host:example",
        b"HOST: \xfe",
    ],
)
def test_an_http_line_closes_at_once_and_nothing_after_it_runs(opener: bytes) -> None:
    data = b"hola\n" + opener + b"\r\nContent-Length: 13\r\n\r\n\nDESCONEXION\nLISTAR\n"
    assert feed([data]) == b"HOLA\n<HTTP><CLOSE>"
    assert feed([bytes([b]) for b in data]) == b"HOLA\n<HTTP><CLOSE>"


@pytest.mark.parametrize(
    "line", [b"GET / HTTP", b"GET /HTTP/1.1", b"hosting: yes", b"the host: me", b"GET  / HTTP/1.1 x"]
)
def test_lines_that_merely_mention_http_are_ordinary(line: bytes) -> None:
    assert feed([line + b"\n"]) == line.upper() + b"\n"


def test_a_tls_client_hello_closes_without_a_reply() -> None:
    hello = bytes.fromhex("16030100f5010000f10303") + bytes(32) + b"\x00\x0a\xc0\x2b\n"
    parser = ServerProtocol()
    assert parser.receive_data(hello) == [ForeignProtocol("TLS"), Close()]
    assert parser.receive_data(b"LISTAR\n") == []
    # Only as the first bytes of a connection: later it is just bad input.
    assert feed([b"hola\n", hello])[:5] == b"HOLA\n"


def test_work_is_handed_out_in_bounded_turns() -> None:
    parser = ServerProtocol()
    events = parser.receive_data(b"AYUDA\n" * 10_000)
    turns = [events]
    while parser.has_backlog:
        turns.append(parser.next_events())
    help_line = protocol.encode_line(protocol.HELP)
    assert b"".join(wire(turn) for turn in turns) == help_line * 10_000
    for turn in turns:
        assert len(wire(turn)) <= protocol.TURN_OUTPUT + len(help_line)
    assert not parser._backlog  # released once answered


def test_each_listar_is_a_turn_of_its_own() -> None:
    parser = ServerProtocol()
    assert parser.receive_data(b"a\nLISTAR\nLISTAR\nb\n") == [Reply(b"A\n"), ListClients()]
    assert parser.next_events() == [ListClients()]
    assert parser.next_events() == [Reply(b"B\n")]
    assert not parser.has_backlog and parser.next_events() == []


def test_many_cheap_lines_are_still_split_into_turns() -> None:
    parser = ServerProtocol()
    parser.receive_data(b"\xfe\n" + b"\n" * 5000)
    turns = 1
    while parser.has_backlog:
        parser.next_events()
        turns += 1
    assert turns == -(-5001 // protocol.TURN_LINES)


def test_end_of_input_answers_the_fragment_then_closes() -> None:
    parser = ServerProtocol()
    assert wire(parser.receive_data(b"uno\ndos") + parser.receive_data(b"")) == b"UNO\nDOS\n<CLOSE>"
    parser = ServerProtocol()
    assert parser.receive_data(b"") == [Close()]
    assert parser.receive_data(b"more\n") == []


def test_invalid_utf8_is_answered_with_an_error_and_the_next_line_served() -> None:
    out = feed([b"bien\n\xfe\xc0 mal\notra\n"]).split(b"\n")
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


# --- properties ---------------------------------------------------------------

LIMIT = 64

line_text = st.one_of(
    st.sampled_from(
        # Commands anywhere in a line or after whitespace, look-alikes, HTTP
        # lines: what the fast path's filter must send to the slow path.
        [
            "hola",
            "LISTAR",
            "ayuda",
            "hola servidor",
            "ñandú",
            "straße",
            "€𝄞",
            "",
            " x ",
            " \tlistar",
            "\x0bEstado tok",
            "x listar",
            "listar x y",
            "deſconexion",
            "ESTADOS",
            "Host: a",
            " host:",
            "GET / HTTP/1.1",
            "get /x http/1.0",
            "a/b",
            "hola\r",
            "desconexión t",
            "estado",
            "Estado tok",
            "desconexion",
            "autenticar t",
            " AUTENTICAR",
            "autenticarse ya",
        ]
    ),
    st.text(max_size=20),
)


def slow_reference(lines: list[bytes]) -> bytes:
    """Line by line, one at a time: the reference the fast path must match."""
    out = b""
    parser = ServerProtocol(LIMIT)
    for line in lines:
        out += wire(receive(parser, line))
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


SHUTDOWN_WORDS = ([b"DESCONEXION"], ["DESCONEXIÓN".encode()], ["DESCONEXIóN".encode()])


def reference(data: bytes) -> bytes:
    """An independent model of the protocol, line by line, for the property test."""
    out = []
    *lines, last = data.split(b"\n")
    for raw in [*lines, last] if last else lines:
        raw = raw.removesuffix(b"\r")
        if len(raw) > LIMIT:
            out.append(b"<TOO LONG>\n")
            break
        # Commands: ASCII words in any ASCII case (bytes.upper is ASCII-only).
        words = raw.upper().split()
        if words == [b"APAGAR"]:
            out.append(b"<FAREWELL>\n")
            break
        if words == [b"LISTAR"]:
            out.append(b"<LISTAR>\n")
        elif (
            words[:1] in ([b"DESCONEXION"], ["DESCONEXIÓN".encode()], ["DESCONEXIóN".encode()])
            and len(words) <= 2
        ):
            token = raw.split()[1] if len(words) == 2 else b"None"
            out.append(b"<DESCONEXION " + token + b">\n")
        elif words[:1] == [b"ESTADO"] and len(words) <= 2:
            token = raw.split()[1] if len(words) == 2 else b"None"
            out.append(b"<ESTADO " + token + b">\n")
        elif words[:1] == [b"AUTENTICAR"] and len(words) <= 2:
            token = raw.split()[1] if len(words) == 2 else b"None"
            out.append(b"<AUTENTICAR " + token + b">\n")
        elif words == [b"AYUDA"]:
            out.append(protocol.encode_line(protocol.HELP))
        elif words == [b"HOLA", b"SERVIDOR"]:
            out.append(b"HOLA CLIENTE\n")
        elif raw.lower().startswith(b"host:") or raw.startswith(b"GET / HTTP/1.1"):
            out.append(b"<HTTP>")
            break
        else:
            try:
                out.append((raw.decode().upper() + "\n").encode())
            except UnicodeDecodeError:
                out.append(b"<INVALID>\n")
    return b"".join(out)


def normalise(out: bytes) -> bytes:
    """Our output with the fixed texts replaced by the reference's tags."""
    out = out.replace(FAREWELL, b"<FAREWELL>\n").replace(b"<CLOSE>", b"")
    out = out.replace(protocol.encode_line(protocol.INVALID_UTF8), b"<INVALID>\n")
    return out.replace(protocol.encode_line(protocol.line_too_long(LIMIT)), b"<TOO LONG>\n")


binary_lines = st.lists(
    st.one_of(
        # Byte 255 is telnet's IAC: tests/test_telnet.py covers it.
        st.binary(max_size=80).map(lambda raw: raw.replace(b"\xff", b"\xfe")),
        line_text.map(str.encode),
        st.sampled_from(
            [
                b"apagar",
                b"x" * LIMIT + b"\r",
                b"\xc3",
                b"\xf0\x9d\x84",
                b"DESCONEXION t",
                b"desconexi\xc3\xb3n \xfe",
                b"GET / HTTP/1.1",
                b"Host: x",
                b"AYUDA\n" * 40,
                b"\n" * 1500,
            ]
        ),
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
            out += wire(receive(parser, data[a:b]))
        assert len(parser._buffer) <= LIMIT + 1
        assert not parser._backlog
    end = parser.receive_data(b"")
    out += wire(end)
    assert out.endswith(b"<CLOSE>")
    assert normalise(out) == reference(data)


@settings(max_examples=300, deadline=None)
@given(
    first=st.binary(max_size=20),
    lines=st.lists(line_text.map(lambda s: s.encode() + b"\n"), min_size=1, max_size=12),
)
def test_the_quick_reply_is_receive_datas_reply_or_none(first: bytes, lines: list[bytes]) -> None:
    """The connection's fast path (quick_reply) answers exactly what
    receive_data would, or leaves the read to it: as the first read (no
    ``first``) or after any first read (which may leave a fragment, telnet
    mode or a closed parser behind)."""
    quick, reference = ServerProtocol(LIMIT), ServerProtocol(LIMIT)
    if first:
        for parser in (quick, reference):
            receive(parser, first)
    data = b"".join(lines)
    reply = quick.quick_reply(data, data.count(b"\n"))  # the count, as the connection passes it
    expected = wire(receive(reference, data))
    if reply is None:
        assert wire(receive(quick, data)) == expected
    else:
        assert reply == expected
        assert not quick.has_fragment and not quick.has_backlog


@settings(max_examples=300, deadline=None)
@given(first=st.binary(max_size=20), second=st.binary(max_size=20))
def test_the_quick_close_is_receive_datas_close_or_declines(first: bytes, second: bytes) -> None:
    """At end of input, the connection's fast path (quick_close) closes
    only when receive_data(b"") would just close, and otherwise leaves
    everything to it."""
    quick, reference = ServerProtocol(LIMIT), ServerProtocol(LIMIT)
    for parser in (quick, reference):
        for data in (first, second):
            if data:
                receive(parser, data)
    expected = receive(reference, b"")
    if quick.quick_close():
        assert expected == [Close()]
        assert quick.receive_data(b"LISTAR\n") == []  # closed, as receive_data(b"") leaves it
    else:
        assert receive(quick, b"") == expected


def test_the_quick_close_declines_what_is_held() -> None:
    # A fragment; a telnet CR that may yet start CR LF; a parser closed by APAGAR.
    for held in (b"sin fin", b"\xff\xfb\x01hola\n\r", b"apagar\n"):
        parser = ServerProtocol(LIMIT)
        parser.receive_data(held)
        assert not parser.quick_close(), held
    assert ServerProtocol(LIMIT).quick_close()  # nothing received, nothing held


def test_the_quick_reply_leaves_foreign_protocols_and_commands_to_receive_data() -> None:
    hello = b"\x16\x03\x01\x02\x00\x01\n"  # a TLS record header, ending in a newline by chance
    parser = ServerProtocol(LIMIT)
    assert parser.quick_reply(hello) is None
    assert receive(parser, hello)[0] == ForeignProtocol("TLS")
    for first in (b"GET / HTTP/1.1\r\n", b"POST /x HTTP/1.0\n", b"apagar\n"):
        assert ServerProtocol(LIMIT).quick_reply(first) is None, first
    parser = ServerProtocol(LIMIT)
    assert parser.quick_reply(b"buenas\n") == b"BUENAS\n"  # an ordinary first read
    assert parser.quick_reply(hello) == hello.upper()  # a TLS hello is looked for first only
    assert parser.quick_reply(b"buenas\nmundo\n") == b"BUENAS\nMUNDO\n"
    for data in (b"LISTAR\n", b"x\n  apagar\n", b"sin fin", b"caf\xc3\n", b"\xff\xfb\x01\n"):
        assert parser.quick_reply(data) is None, data
    closed = ServerProtocol(LIMIT)
    receive(closed, b"apagar\n")
    assert closed.quick_reply(b"x\n") is None  # nothing more after APAGAR
    telnet = ServerProtocol(LIMIT)
    receive(telnet, b"\xff\xfb\x01x\n")
    assert telnet.quick_reply(b"buenas\n") is None  # telnet's CR NUL and its other rules apply


@pytest.mark.parametrize("split", [1, 2])
def test_first_bytes_are_held_only_while_they_could_become_tls(split: int) -> None:
    """What is decided never depends on how the first bytes were split."""
    line = b"\x16\x030 no es TLS\n"
    parser = ServerProtocol()
    assert parser.receive_data(line[:split]) == []  # could still be a TLS header
    assert parser.has_fragment
    assert wire(parser.receive_data(line[split:])) == line.upper()
    hello = bytes.fromhex("160301")
    parser = ServerProtocol()
    for byte in hello[:-1]:
        assert parser.receive_data(bytes([byte])) == []
    assert isinstance(parser.receive_data(hello[-1:])[0], ForeignProtocol)
