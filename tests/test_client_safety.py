"""The client when the server is the attacker, and the client's secrets
(issue 18, items 10 to 13): escape sequences shown escaped on a terminal,
bounded memory under a flood, no token in the history or in ps, and a
refused DESCONEXION that does not end the session."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trio.testing

from eco_trio.client import terminal
from eco_trio.client.core import Client, open_client
from eco_trio.client.interactive import Link, run_interactive
from eco_trio.wire.visible import escape

from .helpers import start_server
from .processes import TIMEOUT, client, eco, one_client_server, server_process
from .test_client import Screen, typed

EVIL = b"\x1b]0;pwned\x07\x1b]52;c;ZXZpbA==\x07\x1b[2Jhola\r"


def _evil(conn: socket.socket, peer: tuple[str, int]) -> None:
    """Greets, then answers any line with escape sequences: set the title,
    write the clipboard, clear the screen."""
    with conn.makefile("rb") as lines:
        conn.sendall(b"BIENVENIDO al servidor malo\n")
        while lines.readline():
            conn.sendall(EVIL + b"\n")


def evil_server() -> contextlib.AbstractContextManager[int]:
    return one_client_server(_evil)


def _run_on_a_terminal(*args: str) -> bytes:
    """Run the client with its stdout on a pseudo-terminal; what it wrote."""
    import pty  # POSIX only

    leader, follower = pty.openpty()
    try:
        process = subprocess.Popen(
            eco("cliente", *args), stdin=subprocess.DEVNULL, stdout=follower, stderr=subprocess.PIPE
        )
        os.close(follower)
        output = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other side is closed
                break
            if not chunk:
                break
            output += chunk
        assert process.wait(TIMEOUT) == 0
        assert process.stderr is not None
        process.stderr.close()
        return output
    finally:
        os.close(leader)


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
def test_escape_sequences_are_shown_escaped_on_a_terminal_and_exact_into_a_pipe() -> None:
    with evil_server() as port:
        shown = _run_on_a_terminal("-H", "127.0.0.1", "-p", str(port), "hola")
    assert b"\x1b" not in shown and b"\x07" not in shown
    assert b"\\x1b]0;pwned\\x07" in shown and b"\\x1b[2Jhola" in shown
    with evil_server() as port:
        piped = subprocess.run(
            eco("cliente", "-H", "127.0.0.1", "-p", str(port), "hola"), capture_output=True, timeout=TIMEOUT
        )
    assert piped.stdout == EVIL.rstrip(b"\r") + b"\n"  # (a \r before \n ends the line)
    with evil_server() as port:
        raw = _run_on_a_terminal("--raw", "-H", "127.0.0.1", "-p", str(port), "hola")
    assert b"\x1b]0;pwned\x07" in raw


def test_server_text_in_an_error_message_is_escaped() -> None:
    def refuse(conn: socket.socket, peer: tuple[str, int]) -> None:
        conn.sendall(b"ERROR lleno\x1b[2J\x1b]0;x\x07\n")

    with one_client_server(refuse) as port:
        result = client(port, "hola")
    assert result.returncode == 1 and "\x1b" not in result.stderr
    assert "ERROR lleno\\x1b[2J" in result.stderr


def test_escape_shows_bytes_that_were_not_utf8() -> None:
    assert escape(b"caf\xe9\x1b".decode("utf-8", "surrogateescape")) == "caf\\xe9\\x1b"


def test_waiting_lines_are_bounded_under_a_flood() -> None:
    output = io.StringIO()
    prompt = terminal.Prompt(lambda: "eco> ", output, lambda message: None)
    prompt._in_progress = prompt._drawn = True  # a prompt is up, its loop not started
    for n in range(10 * terminal.MAX_WAITING):
        prompt.show(f"linea {n}")
    waiting = len(prompt._pending) + len(prompt._handed_over)
    assert waiting <= terminal.MAX_WAITING
    prompt._write([*prompt._handed_over, *prompt._pending])
    text = output.getvalue().splitlines()
    assert "líneas del servidor omitidas" in text[0]
    assert text[-1] == f"linea {10 * terminal.MAX_WAITING - 1}"  # the newest are kept


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")
def test_the_history_keeps_no_token_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "eco_trio" / "history"
    history = terminal._history(path, lambda message: None)
    for line in ["hola", "AUTENTICAR s3creto", "DESCONEXION s3creto", "estado s3creto", "ESTADO", "LISTAR"]:
        history.append_string(line)
    kept = path.read_text()
    assert "s3creto" not in kept and "hola" in kept and "LISTAR" in kept and "ESTADO" in kept
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_token_files_keep_the_token_out_of_ps(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_bytes(b"s3creto\n")
    with server_process("--token-file", str(secret)) as server:
        assert "s3creto" not in " ".join(server.process.args)  # type: ignore[arg-type]
        refused = client(server.port, "DESCONEXION")
        assert refused.stdout.startswith("ERROR") and server.process.poll() is None
        listing = client(server.port, "--token-file", str(secret), "ESTADO")
        assert listing.stdout.startswith("ESTADO ")
        accepted = client(server.port, "--token-file", str(secret), "DESCONEXION")
        assert accepted.stdout == "DESCONEXION: apagando el servidor.\n"
        assert server.process.wait(TIMEOUT) == 0


def test_a_missing_token_file_is_one_line() -> None:
    result = subprocess.run(
        eco("servidor", "--token-file", "/nonexistent/token"), capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "token file" in result.stderr


async def test_a_refused_desconexion_does_not_end_the_session(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    running = await start_server(nursery, token="s3creto")

    async def connect() -> Client | str:
        return await open_client("127.0.0.1", running.port)

    link, screen = Link(), Screen()
    await run_interactive(connect, typed("DESCONEXION", "sigo", "APAGAR"), screen, link, close_wait=5)
    assert screen.lines[1].startswith("ERROR DESCONEXION requiere")
    assert screen.lines[2] == "SIGO"
    assert screen.lines[3] == "ADIOS: conexión cerrada."
    # Leaving on purpose is not a disconnection to recover from.
    assert not any("vuelve a conectar" in line for line in screen.lines)


async def test_a_reply_faster_than_the_send_leaves_no_overdue_mark(nursery: trio.Nursery) -> None:
    """The reply arrives before send_all returns: the prompt must not then
    say the reply is overdue (waiting_since set after it was cleared)."""
    client_side, server_side = trio.testing.memory_stream_pair()

    class Eager(trio.abc.HalfCloseableStream):
        """Delivers each reply to the reader before the send returns."""

        async def send_all(self, data: bytes | bytearray | memoryview) -> None:
            await client_side.send_all(data)
            await server_side.send_all(bytes(data).upper())
            await trio.testing.wait_all_tasks_blocked()

        async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
            return await client_side.receive_some(max_bytes)

        async def wait_send_all_might_not_block(self) -> None:
            await trio.lowlevel.checkpoint()

        async def send_eof(self) -> None:
            await client_side.send_eof()

        async def aclose(self) -> None:
            await client_side.aclose()

    async def drain() -> None:
        while await server_side.receive_some(100):
            pass

    nursery.start_soon(drain)
    now = [0.0]
    link, screen = Link(clock=lambda: now[0]), Screen()
    prompts: list[str] = []
    pending: list[str | None] = ["hola", "otra"]

    async def read_line() -> str | None:
        await trio.testing.wait_all_tasks_blocked()
        now[0] += 60  # a minute at the prompt
        prompts.append(link.prompt())
        return pending.pop(0) if pending else None

    async def connect() -> Client | str:
        return Client(Eager())

    with trio.fail_after(5):
        await run_interactive(connect, read_line, screen, link, close_wait=0.1)
    assert screen.lines[:2] == ["HOLA", "OTRA"]
    assert all("sin respuesta" not in prompt for prompt in prompts), prompts
