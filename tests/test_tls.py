"""TLS and mutual TLS over loopback, with certificates made at run time
(trustme): the conversation, client certificates accepted and refused,
the handshake deadline, the wrong protocol on the TLS port, DESCONEXION by
certificate, and real clients (openssl s_client) end to end."""

from __future__ import annotations

import contextlib
import datetime
import logging
import shutil
import socket
import subprocess

import pytest
import trio
import trio.testing
import trustme

from eco_trio.client.core import ConnectionClosed, HandshakeFailed, open_client

from .helpers import WAIT, start_server
from .pki import Pki
from .processes import TIMEOUT, eco, server_process


async def tls_server(nursery: trio.Nursery, pki: Pki, **options: object) -> int:
    cert, key = pki.files("localhost", "127.0.0.1")
    running = await start_server(nursery, tls_cert=cert, tls_key=key, **options)
    return running.port


async def test_a_whole_conversation_over_tls(nursery: trio.Nursery, pki: Pki) -> None:
    port = await tls_server(nursery, pki, pause=0.05)
    client = await open_client("127.0.0.1", port, ssl_context=pki.client(), server_hostname="localhost")
    async with client.stream:
        assert client.greeting is not None and client.greeting.startswith("BIENVENIDO")
        assert await client.request("ñandú straße") == "ÑANDÚ STRASSE"
        listing = await client.request_lines("LISTAR")
        assert listing[0] == "CLIENTES 1" and listing[1].endswith("(tú)")
        await client.stream.send_all(b"sin salto")  # a partial line, answered after the pause
        assert await client.receive_line() == "SIN SALTO"
        assert await client.request("APAGAR") == "ADIOS: conexión cerrada."


async def test_the_server_name_is_checked(nursery: trio.Nursery, pki: Pki) -> None:
    port = await tls_server(nursery, pki)
    with pytest.raises(HandshakeFailed, match=r"certificate verify failed.*otro\.example"):
        await open_client("127.0.0.1", port, ssl_context=pki.client(), server_hostname="otro.example")


@pytest.mark.parametrize("case", ["no certificate", "another CA", "expired"])
async def test_mutual_tls_refuses_bad_client_certificates(
    nursery: trio.Nursery, pki: Pki, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    caplog.set_level(logging.INFO, "eco_trio.server")
    port = await tls_server(nursery, pki, tls_ca=pki.ca_file)
    if case == "no certificate":
        context = pki.client()
    elif case == "another CA":
        context = pki.client("intruso", ca=trustme.CA())
    else:
        past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=2)
        context = pki.client("caducado", not_before=past - datetime.timedelta(days=30), not_after=past)
    with pytest.raises((HandshakeFailed, ConnectionClosed)):
        await open_client("127.0.0.1", port, ssl_context=context, server_hostname="localhost")
    with trio.fail_after(WAIT):
        while not [r for r in caplog.records if "TLS handshake failed" in r.getMessage()]:  # noqa: ASYNC110
            await trio.sleep(0.01)  # the server logs in its own task; nothing to wait on
    failures = [r for r in caplog.records if "TLS handshake failed" in r.getMessage()]
    assert len(failures) == 1 and failures[0].levelno == logging.INFO and failures[0].exc_info is None
    good = await open_client("127.0.0.1", port, ssl_context=pki.client("bueno"), server_hostname="localhost")
    async with good.stream:
        listing = await good.request_lines("LISTAR")
        assert listing == ["CLIENTES 1", listing[1]] and "cert=DNS=bueno" in listing[1]


async def test_a_handshake_that_never_comes_is_closed(
    nursery: trio.Nursery, pki: Pki, mock_clock: trio.testing.MockClock
) -> None:
    """Real sockets, frozen clock: the slot comes back after the deadline."""
    port = await tls_server(nursery, pki, max_clients=1, tls_handshake_timeout=10)
    silent = socket.create_connection(("127.0.0.1", port))
    silent.setblocking(False)
    try:
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(11)
        with trio.fail_after(WAIT):
            await trio.lowlevel.wait_readable(silent)
        assert silent.recv(100) == b""  # closed, without a word
    finally:
        silent.close()
    client = await open_client("127.0.0.1", port, ssl_context=pki.client(), server_hostname="localhost")
    await client.aclose()  # the slot was free again


async def test_plain_text_on_the_tls_port_is_closed_and_logged_once(
    nursery: trio.Nursery, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "eco_trio.server")
    port = await tls_server(nursery, pki)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"hola\n")
        with trio.fail_after(WAIT):
            while await stream.receive_some():
                pass
    failures = [r.getMessage() for r in caplog.records if "plain text on the TLS port" in r.getMessage()]
    assert len(failures) == 1, failures
    client = await open_client("127.0.0.1", port, ssl_context=pki.client(), server_hostname="localhost")
    await client.aclose()


async def test_a_plain_port_beside_the_tls_one(nursery: trio.Nursery, pki: Pki) -> None:
    cert, key = pki.files("localhost")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        plain_port = probe.getsockname()[1]
    await start_server(nursery, tls_cert=cert, tls_key=key, plain_port=plain_port)
    client = await open_client("127.0.0.1", plain_port)
    async with client.stream:
        assert await client.request("hola") == "HOLA"


async def test_desconexion_by_certificate(nursery: trio.Nursery, pki: Pki) -> None:
    port = await tls_server(nursery, pki, tls_ca=pki.ca_file, tls_admin=("DNS=operadora",), token="s3creto")
    other = await open_client(
        "127.0.0.1", port, ssl_context=pki.client("visita"), server_hostname="localhost"
    )
    async with other.stream:
        assert (await other.request("DESCONEXION")).startswith("ERROR")  # the token is still needed
    admin = await open_client(
        "127.0.0.1", port, ssl_context=pki.client("operadora"), server_hostname="localhost"
    )
    async with admin.stream:
        assert await admin.request("DESCONEXION") == "DESCONEXION: apagando el servidor."


@pytest.mark.parametrize(
    "options",
    [
        {"tls_cert": "a.crt"},
        {"tls_ca": "ca.pem"},
        {"tls_cert": "a.crt", "tls_key": "a.key", "tls_admin": ("CN=x",)},
    ],
)
def test_tls_options_that_cannot_work_are_refused(options: dict[str, object]) -> None:
    from eco_trio.server.config import ServerConfig

    with pytest.raises(ValueError, match="tls"):
        ServerConfig(**options)  # type: ignore[arg-type]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_openssl_s_client_talks_to_the_tls_server(pki: Pki) -> None:
    cert, key = pki.files("localhost", "127.0.0.1")
    with server_process("--tls-cert", cert, "--tls-key", key) as server:
        result = subprocess.run(
            ["openssl", "s_client", "-quiet", "-verify_return_error", "-CAfile", pki.ca_file,
             "-servername", "localhost", "-connect", f"127.0.0.1:{server.port}"],
            input="hola\nAPAGAR\n", capture_output=True, text=True, timeout=TIMEOUT,
        )  # fmt: skip
    lines = result.stdout.splitlines()
    assert lines[0].startswith("BIENVENIDO") and lines[1:] == ["HOLA", "ADIOS: conexión cerrada."]


def test_the_client_command_line_over_tls(pki: Pki) -> None:
    cert, key = pki.files("localhost", "127.0.0.1")
    with server_process("--tls-cert", cert, "--tls-key", key) as server:
        common = ["cliente", "-H", "127.0.0.1", "-p", str(server.port), "--tls-ca", pki.ca_file]
        ok = subprocess.run(
            eco(*common, "--tls-server-name", "localhost", "hola"),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert ok.returncode == 0 and ok.stdout == "HOLA\n", ok.stderr
        piped = subprocess.run(
            eco(*common, "--tls-server-name", "localhost"),
            input="uno\ndos\n", capture_output=True, text=True, timeout=TIMEOUT,
        )  # fmt: skip
        assert piped.returncode == 0 and piped.stdout.splitlines()[1:] == ["UNO", "DOS"], piped.stderr
        wrong = subprocess.run(
            eco(*common, "--tls-server-name", "otro.example", "hola"),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert wrong.returncode == 1 and wrong.stderr.count("\n") == 1
        assert "certificate verify failed" in wrong.stderr and "otro.example" in wrong.stderr
        assert "Traceback" not in wrong.stderr


# --- the limits, over TLS ------------------------------------------------------------


async def test_an_over_long_line_over_tls_gets_its_error(nursery: trio.Nursery, pki: Pki) -> None:
    port = await tls_server(nursery, pki, max_line=1024)
    client = await open_client("127.0.0.1", port, ssl_context=pki.client(), server_hostname="localhost")
    async with client.stream:
        await client.stream.send_all(b"x" * 5000 + b"\n")
        line = await client.receive_line()
        assert line is not None and line.startswith("ERROR") and "1024" in line
        assert await client.receive_line() is None


async def test_a_full_tls_server_closes_the_newcomer(nursery: trio.Nursery, pki: Pki) -> None:
    port = await tls_server(nursery, pki, max_clients=1)
    first = await open_client("127.0.0.1", port, ssl_context=pki.client(), server_hostname="localhost")
    async with first.stream:
        with pytest.raises((HandshakeFailed, ConnectionClosed)):
            await open_client("127.0.0.1", port, ssl_context=pki.client(), server_hostname="localhost")
        assert await first.request("sigo") == "SIGO"


async def test_a_tls_client_that_never_reads_meets_the_send_timeout(
    nursery: trio.Nursery, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "eco_trio.server")
    port = await tls_server(nursery, pki, send_timeout=0.5)
    hog = await open_client("127.0.0.1", port, ssl_context=pki.client(), server_hostname="localhost")
    bystander = await open_client("127.0.0.1", port, ssl_context=pki.client(), server_hostname="localhost")

    async def flood() -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            for _ in range(2000):
                await hog.stream.send_all(b"AYUDA\n" * 1000)

    async with bystander.stream, hog.stream:
        with trio.fail_after(WAIT * 2):
            async with trio.open_nursery() as flooding:
                flooding.start_soon(flood)
                while not [r for r in caplog.records if "took none of our data" in r.getMessage()]:  # noqa: ASYNC110
                    await trio.sleep(0.05)  # logged by the server's task: nothing to wait on
                flooding.cancel_scope.cancel()
        assert await bystander.request("sigo") == "SIGO"


@pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed")
def test_socat_over_tls_and_its_close_notify_as_end_of_input(pki: Pki) -> None:
    """socat sends close_notify at the end of its input: the server answers
    the last, unterminated line, then closes (TLS's half-close)."""
    cert, key = pki.files("localhost", "127.0.0.1")
    with server_process("--tls-cert", cert, "--tls-key", key) as server:
        result = subprocess.run(
            ["socat", "-t", "5", "-",
             f"OPENSSL:127.0.0.1:{server.port},cafile={pki.ca_file},commonname=localhost"],
            input="hola\nsin salto", capture_output=True, text=True, timeout=TIMEOUT,
        )  # fmt: skip
    lines = result.stdout.splitlines()
    assert lines[0].startswith("BIENVENIDO") and lines[1:] == ["HOLA", "SIN SALTO"], result.stderr
