"""TLS under attack (issue 18, items 2, 5, 6 and 9): handshakes have their
own budget and rate, certificate names are matched by field and shown
escaped, and a ClientHello on the plain port is seen whatever its writes."""

from __future__ import annotations

import logging
import re
import ssl
import time
from pathlib import Path

import pytest
import trio

from eco_trio.client.core import Client, open_client
from eco_trio.server.config import ServerConfig
from eco_trio.server.handshakes import Handshakes, RateBound
from eco_trio.transport import tls
from eco_trio.wire.visible import escape, escape_word

from .helpers import WAIT, Peer, start_server
from .pki import Pki
from .processes import TIMEOUT, client, free_port, server_process


def _mtls_client(pki: Pki, *names: str, common_name: str | None = None) -> ssl.SSLContext:
    cert, key = pki.files(*names, common_name=common_name)
    return tls.client_context(pki.ca_file, cert, key)


async def _connect(port: int, context: ssl.SSLContext) -> Client:
    return await open_client("127.0.0.1", port, ssl_context=context, server_hostname="localhost")


async def test_silent_tls_connections_hold_no_client_slot(nursery: trio.Nursery, pki: Pki) -> None:
    """Connections that never finish their handshake neither fill
    --max-clients (the plain port beside stays open) nor keep a valid
    mutual-TLS client out: past --max-handshakes the oldest is dropped."""
    cert, key = pki.files("localhost", "127.0.0.1")
    plain_port = free_port()
    running = await start_server(
        nursery, tls_cert=cert, tls_key=key, tls_ca=pki.ca_file, max_clients=3, max_handshakes=4,
        plain_port=plain_port,
    )  # fmt: skip
    silent = [await trio.open_tcp_stream("127.0.0.1", running.port) for _ in range(12)]
    try:
        with trio.fail_after(WAIT):
            while running.server.handshakes.dropped < 8:  # noqa: ASYNC110
                await trio.sleep(0.01)
        assert len(running.server.handshakes) == 4 and len(running.server.registry) == 0
        context = _mtls_client(pki, "bueno")
        for _ in range(3):
            client = await _connect(running.port, context)
            async with client.stream:
                assert await client.request("hola") == "HOLA"
        plain = await trio.open_tcp_stream("127.0.0.1", plain_port)
        async with plain:
            assert (await Peer(plain).line()).startswith(b"BIENVENIDO")
    finally:
        for stream in silent:
            await stream.aclose()


async def test_shutdown_drops_pending_handshakes_at_once(nursery: trio.Nursery, pki: Pki) -> None:
    cert, key = pki.files("localhost", "127.0.0.1")
    running = await start_server(nursery, tls_cert=cert, tls_key=key, grace=30)
    async with await trio.open_tcp_stream("127.0.0.1", running.port) as silent:
        with trio.fail_after(WAIT):
            while not len(running.server.handshakes):  # noqa: ASYNC110
                await trio.sleep(0.01)
        running.server.shutdown()
        with trio.fail_after(1):  # not the 30 s grace
            assert await silent.receive_some(100) == b""


async def test_an_oversized_client_certificate_is_refused(
    nursery: trio.Nursery, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "eco_trio.server")
    cert, key = pki.files("localhost", "127.0.0.1")
    running = await start_server(nursery, tls_cert=cert, tls_key=key, tls_ca=pki.ca_file)
    names = [f"name-{n:05d}.a-long-domain-to-make-the-certificate-large.example" for n in range(800)]
    context = _mtls_client(pki, *names)

    async def converse() -> None:
        async with (await _connect(running.port, context)).stream as stream:
            await stream.send_all(b"hola\n")
            await stream.receive_some(100)

    with pytest.raises(Exception):  # noqa: B017, PT011 - whichever way the client sees the close
        await converse()
    running.server.flush_counts()
    assert any("KiB of handshake" in record.getMessage() for record in caplog.records)


async def test_handshake_rate_is_bounded_per_source_and_in_all(autojump_clock: trio.abc.Clock) -> None:
    handshakes = Handshakes(limit=1000, rate=100, rate_per_source=10)
    start = trio.current_time()
    for _ in range(30):  # one source: 10 at once, then 10 a second
        await handshakes.wait_turn("10.0.0.1:1000")
    assert 1.9 <= trio.current_time() - start <= 2.1
    start = trio.current_time()
    for n in range(300):  # many sources: 100 a second in all
        await handshakes.wait_turn(f"10.1.{n // 250}.{n % 250}:1000")
    assert 1.9 <= trio.current_time() - start <= 3.1


def test_rate_bound_zero_is_no_bound() -> None:
    bound = RateBound(0)
    assert all(bound.reserve(0.0) == 0 for _ in range(1000))


async def test_tls_admin_matches_only_the_named_field(nursery: trio.Nursery, pki: Pki) -> None:
    cert, key = pki.files("localhost", "127.0.0.1")
    running = await start_server(
        nursery, tls_cert=cert, tls_key=key, tls_ca=pki.ca_file, tls_admin=("CN=admin",), token="s3creto"
    )

    async def desconexion(context: ssl.SSLContext) -> str:
        client = await _connect(running.port, context)
        async with client.stream:
            return await client.request("DESCONEXION")

    # A SAN (DNS name, e-mail) that says "admin" is not the CN.
    assert (await desconexion(_mtls_client(pki, "admin", common_name="bob"))).startswith("ERROR")
    assert (await desconexion(_mtls_client(pki, "admin@example.org", common_name="bob"))).startswith("ERROR")
    client = await _connect(running.port, _mtls_client(pki, "x.example", common_name="admin"))
    async with client.stream:
        listing = await client.request_lines("LISTAR")
        assert "cert=CN=admin" in listing[1]
        assert (await client.request("DESCONEXION")).startswith("DESCONEXION")


def test_tls_admin_names_its_field() -> None:
    base = {"tls_cert": "a.crt", "tls_key": "a.key", "tls_ca": "ca.pem"}
    with pytest.raises(ValueError, match="FIELD=value"):
        ServerConfig(tls_admin=("admin",), **base)  # type: ignore[arg-type]
    assert ServerConfig(tls_admin=("cn=admin",), **base).tls_admin == ("CN=admin",)  # type: ignore[arg-type]
    assert tls.admin_name(["CN=bob", "CN=admin"], ("CN=admin",)) is None  # two CNs: none counts
    assert tls.admin_name(["CN=admin", "DNS=admin"], ("DNS=admin",)) == "DNS=admin"
    assert tls.admin_name(["DNS=admin"], ("CN=admin",)) is None


async def test_a_certificate_name_cannot_add_rows_or_escapes(nursery: trio.Nursery, pki: Pki) -> None:
    cert, key = pki.files("localhost", "127.0.0.1")
    running = await start_server(nursery, tls_cert=cert, tls_key=key, tls_ca=pki.ca_file)
    evil = _mtls_client(pki, "x.example", common_name="bob\n10.0.0.9:1 conectado=0s\x1b]0;pwned\x07")
    client = await _connect(running.port, evil)
    async with client.stream:
        rows = await client.request_lines("LISTAR")
        assert rows[0] == "CLIENTES 1" and len(rows) == 2
        assert (
            "\x1b" not in rows[1] and "cert=CN=bob\\n10.0.0.9:1\\x20conectado=0s\\x1b]0;pwned\\x07" in rows[1]
        )
        assert await client.request("hola") == "HOLA"  # still in step


def test_escape() -> None:
    assert escape("plain text ñ") == "plain text ñ"
    assert escape("a\nb\x1b[2J\u202e\\") == "a\\nb\\x1b[2J\\u202e\\\\"
    assert escape_word("a b") == "a\\x20b"


@pytest.mark.parametrize("sizes", [[1] * 8, [2, 1, 5], [1, 2, 5]])
async def test_a_client_hello_in_small_writes_is_seen_on_the_plain_port(
    nursery: trio.Nursery, sizes: list[int]
) -> None:
    running = await start_server(nursery)
    hello = bytes.fromhex("16030100a5010000a10303") + bytes(100)
    async with running.peer() as peer:
        position = 0
        received = b""
        with trio.fail_after(WAIT):
            try:
                for size in sizes:
                    await peer.send(hello[position : position + size])
                    position += size
                    await trio.sleep(0.02)  # separate reads
                received = await peer.expect_eof()
            except trio.BrokenResourceError:
                pass  # closed as we wrote: as it should be
        assert received == b""  # not one line answered
        assert running.server.totals.refused["TLS on the plain port"] == 1


async def test_plain_text_on_the_tls_port_is_told_so(nursery: trio.Nursery, pki: Pki) -> None:
    """nc or telnet on the TLS port: one plain line that says what to use."""
    cert, key = pki.files("localhost", "127.0.0.1")
    running = await start_server(nursery, tls_cert=cert, tls_key=key)
    async with await trio.open_tcp_stream("127.0.0.1", running.port) as stream:
        await stream.send_all(b"hola\n")
        peer = Peer(stream)
        line = await peer.line()
        assert line.startswith(b"ERROR este puerto habla TLS") and b"--tls" in line
    assert running.server.totals.refused["plain text on the TLS port"] == 1


def test_tls_file_errors_name_the_file(pki: Pki, tmp_path: Path) -> None:
    cert, key = pki.files("localhost")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    cases = [
        (
            (str(tmp_path / "missing.pem"), key),
            'certificate "' + str(tmp_path / "missing.pem") + '": no such file',
        ),
        ((str(junk), key), f'certificate "{junk}": no PEM certificate in it'),
        ((cert, str(junk)), f'key "{junk}": not a PEM private key'),
        ((cert, key, str(tmp_path / "noca.pem")), "CA certificates"),
    ]
    for args, expected in cases:
        with pytest.raises(tls.TLSFileError, match=re.escape(expected)):
            tls.server_context(*args)


def test_a_plain_client_on_the_tls_port_suspects_tls_soon(pki: Pki) -> None:
    """It waited 10.5 s for a greeting that never comes, then blamed the
    server; now it says what to add after a few seconds."""
    cert, key = pki.files("localhost", "127.0.0.1")
    with server_process("--tls-cert", cert, "--tls-key", key) as server:
        result = client(server.port, "hola")
    assert result.returncode == 1 and "add --tls" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


async def test_ipv6_handshakes_share_the_rate_of_their_64(autojump_clock: trio.abc.Clock) -> None:
    handshakes = Handshakes(limit=1000, rate=1000, rate_per_source=10)
    start = trio.current_time()
    for n in range(30):  # 30 addresses of one /64: one source, 10 a second
        await handshakes.wait_turn(f"[2001:db8::{n + 1:x}]:1000")
    assert 1.9 <= trio.current_time() - start <= 2.1


def test_sigusr2_reloads_the_certificate_without_a_restart(pki: Pki, tmp_path: Path) -> None:
    """A renewed certificate is served to new connections after SIGUSR2;
    files that cannot be used keep the old one, with an error logged."""
    import shutil
    import signal as signals
    import socket as sockets

    cert, key = tmp_path / "server.crt", tmp_path / "server.key"

    def install(common_name: str) -> None:
        new_cert, new_key = pki.files("localhost", "127.0.0.1", common_name=common_name)
        shutil.copy(new_cert, cert)
        shutil.copy(new_key, key)

    def served_name(port: int) -> str:
        context = tls.client_context(pki.ca_file)
        with (
            sockets.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as conn,
        ):
            names = tls.certificate_names(conn.getpeercert())
        return next(name.removeprefix("CN=") for name in names if name.startswith("CN="))

    install("primero")
    with server_process("--tls-cert", str(cert), "--tls-key", str(key)) as server:
        assert served_name(server.port) == "primero"
        install("segundo")
        server.process.send_signal(signals.SIGUSR2)
        deadline = time.monotonic() + TIMEOUT
        while not any("TLS certificate reloaded" in line for line in server.log):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert served_name(server.port) == "segundo"
        key.write_text("not a key")
        server.process.send_signal(signals.SIGUSR2)
        while not any("not reloaded" in line for line in server.log):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert served_name(server.port) == "segundo"  # the old one stays
