"""With a token set, who may see the other clients and the counters, and
how slow guessing is (issue 18, item 7)."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from eco_trio.server import auth
from eco_trio.server.config import ServerConfig
from eco_trio.server.core import Server

from .helpers import GREETING_PREFIX, Peer, memory_peer

TOKEN = b"s3creto"


async def _peer(nursery: trio.Nursery, server: Server, address: str) -> Peer:
    peer = await memory_peer(nursery, server, address)
    assert (await peer.line()).startswith(GREETING_PREFIX)
    return peer


async def test_remote_clients_must_authenticate_to_list_or_see_counters(nursery: trio.Nursery) -> None:
    server = Server(ServerConfig(token=TOKEN))
    remote = await _peer(nursery, server, "198.51.100.7:4000")
    assert (await remote.request(b"LISTAR")).startswith(b"ERROR LISTAR requiere AUTENTICAR")
    assert (await remote.request(b"ESTADO")).startswith(b"ERROR ESTADO requiere el token")
    assert await remote.request(b"AUTENTICAR " + TOKEN) == b"OK autenticado."
    assert (await remote.request(b"LISTAR")) == b"CLIENTES 1"
    assert (await remote.line()).startswith(b"198.51.100.7:4000 ")
    assert (await remote.request(b"ESTADO")).startswith(b"ESTADO ")


async def test_loopback_keeps_the_plain_listar_and_tokenless_servers_need_nothing(
    nursery: trio.Nursery,
) -> None:
    guarded = Server(ServerConfig(token=TOKEN))
    local = await _peer(nursery, guarded, "127.0.0.1:4000")
    assert await local.request(b"LISTAR") == b"CLIENTES 1"
    open_server = Server(ServerConfig())
    remote = await _peer(nursery, open_server, "198.51.100.7:4000")
    assert await remote.request(b"LISTAR") == b"CLIENTES 1"
    await remote.line()
    assert (await remote.request(b"AUTENTICAR x")).startswith(b"ERROR este servidor no tiene token")


async def test_token_lines_do_not_show_their_length_to_others(nursery: trio.Nursery) -> None:
    server = Server(ServerConfig(token=TOKEN))
    guesser = await _peer(nursery, server, "127.0.0.1:1")
    watcher = await _peer(nursery, server, "127.0.0.1:2")
    assert await guesser.request(b"hola") == b"HOLA"
    assert (await guesser.request(b"DESCONEXION " + b"x" * 17)).startswith(b"ERROR")
    assert (await guesser.request(b"AUTENTICAR " + TOKEN)).startswith(b"OK")
    assert await watcher.request(b"LISTAR") == b"CLIENTES 2"
    row = await watcher.line()
    assert b" bytes=5/" in row and b"ultimo=AUTENTICAR" in row and TOKEN not in row
    await watcher.line()


async def test_a_connection_is_closed_after_its_tries(nursery: trio.Nursery) -> None:
    server = Server(ServerConfig(token=TOKEN))
    guesser = await _peer(nursery, server, "203.0.113.1:1")
    for n in range(auth.MAX_TRIES):
        reply = await guesser.request(b"ESTADO guess%d" % n)
        assert reply.startswith(b"ERROR")
    assert b"conexi\xc3\xb3n cerrada" in reply
    assert await guesser.expect_eof() == b""


async def test_wrong_tokens_are_bounded_per_source_and_logged_once_a_second(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "eco_trio.server")
    server = Server(ServerConfig(token=TOKEN))
    for connection in range(3):
        guesser = await _peer(nursery, server, f"203.0.113.1:{connection}")
        for n in range(auth.MAX_TRIES - 1):
            await guesser.request(b"AUTENTICAR guess%d" % n)
    # Six wrong guesses from one address, past the burst: even the right
    # token is not compared now...
    throttled = await guesser.request(b"AUTENTICAR " + TOKEN)
    assert throttled.startswith(b"ERROR demasiados tokens incorrectos")
    # ... and is again once the bound allows one more.
    await trio.sleep(10)
    assert await guesser.request(b"AUTENTICAR " + TOKEN) == b"OK autenticado."
    other = await _peer(nursery, server, "203.0.113.2:1")  # another address is not held back
    assert (await other.request(b"AUTENTICAR wrong")).startswith(b"ERROR AUTENTICAR requiere")
    wrong = [r for r in caplog.records if r.getMessage().startswith("wrong token")]
    assert 1 <= len(wrong) <= 3  # not one per guess
