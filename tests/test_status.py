"""ESTADO's counters after a scripted session, the disconnect log, and the
token that guards ESTADO like DESCONEXION."""

from __future__ import annotations

import logging
import sys
import urllib.request

import pytest
import trio

from .helpers import WAIT, Peer, start_server


async def status(peer: Peer, request: bytes = b"ESTADO") -> dict[str, str]:
    header = await peer.request(request)
    assert header.startswith(b"ESTADO "), header
    rows = await peer.lines(int(header.split()[1]))
    pairs = [row.decode().partition(" ") for row in rows]
    return {key: value for key, _, value in pairs}


async def test_counters_after_a_known_session(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "eco_trio.server")
    running = await start_server(nursery, max_clients=2, max_line=1024)
    async with running.peer() as first:
        assert await first.request(b"hola") == b"HOLA"
        assert (await first.request(b"AYUDA")).startswith(b"COMANDOS")
        async with running.peer() as second:
            async with running.peer(greeted=False) as refused:
                assert (await refused.line()).startswith(b"ERROR demasiados clientes")
            await second.send(b"x" * 2000 + b"\n")
            assert (await second.line()).startswith(b"ERROR")
            assert await second.expect_eof() == b""
        async with running.peer() as leaving:
            assert await leaving.request(b"APAGAR") == "ADIOS: conexión cerrada.".encode()
            assert await leaving.expect_eof() == b""
        # Two clients that close their side: after a whole line (the quick
        # close) and after a fragment (answered first).
        for last, reply in ((b"chau\n", b"CHAU"), (b"frag", b"FRAG")):
            async with running.peer() as closer:
                await closer.send(last)
                await closer.stream.send_eof()
                assert await closer.line() == reply
                assert await closer.expect_eof() == b""
        await trio.testing.wait_all_tasks_blocked()
        counters = await status(first)
        closed = [r for r in caplog.records if ": the client closed, after " in r.getMessage()]
    assert counters["clients"] == "1"
    assert counters["connections_total"] == "5"
    assert counters["disconnects_the_client_closed"] == "2"
    assert counters["refused_full"] == "1"
    assert counters["command_ayuda"] == "1" and counters["command_apagar"] == "1"
    assert counters["command_estado"] == "1"
    assert counters["disconnects_line_too_long"] == "1" and counters["disconnects_apagar"] == "1"
    # first: hola, AYUDA, ESTADO; second; leaving; the two closers
    assert int(counters["lines_in"]) == 3 + 1 + 1 + 2
    assert counters["io_path"] in ("epoll", "portable") and counters["version"]
    reasons = [r.getMessage() for r in caplog.records if r.getMessage().startswith("disconnected")]
    assert any(": line too long, after " in reason and "1 line in" in reason for reason in reasons)
    assert any(": APAGAR, after " in reason for reason in reasons)
    assert len(closed) == 2  # (first is still connected at that point)


async def test_with_a_token_estado_needs_it(nursery: trio.Nursery) -> None:
    running = await start_server(nursery, token="s3creto")
    async with running.peer() as peer:
        assert (await peer.request(b"ESTADO")).startswith(b"ERROR ESTADO requiere el token")
        assert "clients" in await status(peer, b"ESTADO s3creto")


async def test_the_prometheus_scrape_counts_what_estado_counts(nursery: trio.Nursery) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    running = await start_server(nursery, max_clients=1, metrics="127.0.0.1:0")
    address = running.server.metrics_address
    assert address is not None
    async with running.peer() as peer:
        await peer.request(b"hola")
        await peer.request(b"AYUDA")
        async with running.peer(greeted=False) as refused:
            await refused.line()
        counters = await status(peer)

        def scrape() -> str:
            with urllib.request.urlopen(f"http://{address}/metrics", timeout=WAIT) as response:
                return str(response.read().decode())

        text = await trio.to_thread.run_sync(scrape)
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert samples["eco_trio_clients", ()] == int(counters["clients"]) == 1
    assert samples["eco_trio_connections_total", ()] == int(counters["connections_total"])
    assert samples["eco_trio_refused_total", (("cause", "full"),)] == int(counters["refused_full"]) == 1
    assert samples["eco_trio_commands_total", (("command", "ayuda"),)] == int(counters["command_ayuda"]) == 1
    # Label values are ESTADO's words, snake_case.
    for (name, labels), value in samples.items():
        for label, word in labels:
            if name == "eco_trio_disconnects_total":
                assert counters[f"disconnects_{word}"] == str(int(value))
            assert word == word.lower() and " " not in word, (name, label, word)
    if sys.platform == "linux":
        assert samples["process_open_fds", ()] > 0
    assert int(counters["peak_rss_bytes"]) >= int(counters["rss_bytes"])
    assert samples["eco_trio_lines_received_total", ()] == int(counters["lines_in"])


async def test_listar_rows_carry_counts_and_the_last_command(nursery: trio.Nursery) -> None:
    running = await start_server(nursery)
    async with running.peer() as other, running.peer() as asker:
        assert (await other.request(b"ayuda")).startswith(b"COMANDOS")
        assert await other.request(b"hola") == b"HOLA"
        header = await asker.request(b"LISTAR")
        rows = [row.decode() for row in await asker.lines(int(header.split()[1]))]
    assert " lineas=2/2 " in rows[0] and " ultimo=AYUDA" in rows[0]
    assert rows[1].endswith(" ultimo=LISTAR (tú)")


async def test_line_counts_include_fragments_and_replies_before_a_listing(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    """Every line answered counts, in and out: a fragment answered after a
    pause or at end of input is a line in, and replies sent in the same
    write as LISTAR are already counted in the requester's own row."""
    caplog.set_level(logging.INFO, "eco_trio.server")
    running = await start_server(nursery, pause=0.05)
    async with running.peer() as peer:
        await peer.send(b"uno\ndos\nLISTAR\n")
        assert await peer.lines(3) == [b"UNO", b"DOS", b"CLIENTES 1"]
        (row,) = await peer.lines(1)
        assert b" lineas=3/2 " in row, row  # LISTAR itself is counted in, not yet out
        await peer.send(b"tres")  # a fragment: answered after the pause
        assert await peer.line() == b"TRES"
        await peer.send(b"cuatro")  # a fragment the end of input answers
        await peer.stream.send_eof()
        assert await peer.line() == b"CUATRO"
        assert await peer.expect_eof() == b""
    await trio.testing.wait_all_tasks_blocked()
    (reason,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("disconnected")]
    assert "5 lines in, 6 out" in reason, reason
