"""``cliente`` in scripts (issue 19, items 1, 3, 6 and 7): whole
multi-line replies, ERROR replies as a failing status, arguments that are
not UTF-8, and the original project's server in argument mode."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys

import pytest

from .processes import TIMEOUT, client, eco, one_client_server, server_process


def test_estado_in_argument_mode_prints_the_whole_reply() -> None:
    with server_process() as server:
        result = client(server.port, "ESTADO", "hola")
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stderr
    count = int(lines[0].split()[1])
    assert lines[0].startswith("ESTADO ") and len(lines) == 1 + count + 1
    assert lines[-1] == "HOLA" and any(line.startswith("clients ") for line in lines)


def test_an_error_reply_fails_the_script() -> None:
    with server_process("--token", "s3creto") as server:
        assert client(server.port, "hola").returncode == 0
        refused = client(server.port, "DESCONEXION")
        assert refused.returncode == 1 and refused.stdout.startswith("ERROR")
        piped = client(server.port, stdin="hola\nESTADO\n")
        assert piped.returncode == 1 and "ERROR ESTADO" in piped.stdout
        too_long = client(server.port, "x" * 70_000)
        assert too_long.returncode == 1 and too_long.stdout.startswith("ERROR")
        assert server.process.poll() is None


@pytest.mark.skipif(sys.platform == "win32", reason="argv is text on Windows")
def test_an_argument_that_is_not_utf8_goes_out_as_its_bytes() -> None:
    with server_process() as server:
        result = subprocess.run(
            [os.fsencode(arg) for arg in eco("cliente", "-H", "127.0.0.1", "-p", str(server.port))]
            + [b"a\xe9", "ñandú".encode()],
            capture_output=True,
            timeout=TIMEOUT,
        )
    assert b"Traceback" not in result.stderr
    assert result.stdout.splitlines() == [
        "ERROR la línea no es UTF-8 válido; se ignora.".encode(),
        "ÑANDÚ".encode(),
    ]
    assert result.returncode == 1  # an ERROR reply


def _original(conn: socket.socket, peer: tuple[str, int]) -> None:
    """The original project's server, as it behaves: replies without a
    newline (a greeting, 'Eco: ' and the text uppercased), and LISTAR as a
    title line and the addresses, the last one unterminated."""
    conn.sendall(b"Conectado al servidor")  # a greeting, unterminated too
    while data := conn.recv(1024):
        text = data.decode().strip()
        if text == "LISTAR":
            conn.sendall(f"Clientes conectados:\n{peer[0]}:{peer[1]}".encode())
        else:
            conn.sendall(f"Eco: {text.upper()}".encode())


def original_server() -> contextlib.AbstractContextManager[int]:
    return one_client_server(_original)


def test_argument_mode_against_the_original_server_keeps_replies_apart() -> None:
    with original_server() as port:
        result = client(port, "LISTAR", "hola")
    lines = result.stdout.splitlines()
    assert lines[0] == "Clientes conectados:"
    assert lines[1].startswith("127.0.0.1:") and lines[1].count(":") == 1
    assert lines[2] == "Eco: HOLA"
    assert result.returncode == 0, result.stderr


def test_repeat_and_interval_as_redis_cli() -> None:
    with server_process() as server:
        result = client(server.port, "-r", "3", "-i", "0.05", "hola", "mundo")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["HOLA", "MUNDO"] * 3


def test_latency_reports_min_max_and_average() -> None:
    with server_process() as server:
        result = client(server.port, "--latency", "-r", "20", "-i", "0")
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(
        r"min: \d+\.\d\d, max: \d+\.\d\d, avg: \d+\.\d\d ms \(20 samples\)\n", result.stdout
    ), result.stdout
