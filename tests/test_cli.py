"""End to end: ``python -m eco_trio`` run as a user runs it, in subprocesses."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import eco_trio

from .helpers import flood_until_stuck
from .processes import TIMEOUT, client, eco, free_port, server_process


def test_piped_client_gets_greeting_and_replies() -> None:
    with server_process() as server:
        result = client(server.port, stdin="hola\nñandú straße\nhola servidor\n")
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].startswith("BIENVENIDO")
        assert lines[1:] == ["HOLA", "ÑANDÚ STRASSE", "HOLA CLIENTE"]
        assert "Traceback" not in result.stderr
    assert any("connected 127.0.0.1:" in line for line in server.log)
    assert any("disconnected 127.0.0.1:" in line for line in server.log)


def test_piped_client_stops_after_apagar() -> None:
    with server_process() as server:
        result = client(server.port, stdin="uno\nAPAGAR\nnunca\n")
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[1:] == ["UNO", "ADIOS: conexión cerrada."]


def test_message_arguments_print_only_the_replies() -> None:
    with server_process() as server:
        result = client(server.port, "hola", "LISTAR")
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[:2] == ["HOLA", "CLIENTES 1"]
        assert lines[2].startswith("127.0.0.1:") and lines[2].endswith("(tú)")
        assert len(lines) == 3


def test_desconexion_stops_the_server_with_status_0() -> None:
    with server_process() as server:
        result = client(server.port, "DESCONEXION")
        assert result.returncode == 0, result.stderr
        assert result.stdout == "DESCONEXION: apagando el servidor.\n"
        assert server.process.wait(TIMEOUT) == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signals_notify_clients_and_exit_0_with_the_port_free(signum: int) -> None:
    with server_process() as server:
        with (
            socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock,
            sock.makefile("rb") as stream,
        ):
            assert stream.readline().startswith(b"BIENVENIDO")
            server.process.send_signal(signum)
            assert (
                stream.readline() == b"AVISO: el servidor se est\xc3\xa1 apagando; conexi\xc3\xb3n cerrada.\n"
            )
            assert stream.readline() == b""
        assert server.process.wait(TIMEOUT) == 0
    with socket.socket() as again:  # free for an immediate restart
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", server.port))


def test_refused_connection_is_one_clear_line() -> None:
    port = free_port()
    result = client(port, "hola")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert f"127.0.0.1:{port}" in result.stderr
    assert "python -m eco_trio servidor" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_host_is_one_clear_line() -> None:
    result = subprocess.run(
        eco("cliente", "--host", "no-such-host.invalid", "hola"),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "no-such-host.invalid" in result.stderr
    assert "Traceback" not in result.stderr


def test_port_in_use_is_one_clear_line() -> None:
    with server_process() as server:
        result = subprocess.run(
            eco("servidor", "--host", "127.0.0.1", "--port", str(server.port)),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert result.returncode == 1
        assert result.stderr.count("\n") == 1
        assert f"127.0.0.1:{server.port}" in result.stderr and "in use" in result.stderr
        assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["servidor", "--port", "abc"],
        ["servidor", "--port", "70000"],
        ["servidor", "--grace", "-1"],
        ["servidor", "--idle-timeout", "-1"],
        ["servidor", "--token", "dos palabras"],
        ["servidor", "--token", ""],
        ["servidor", "--token", "\udcffIAC"],  # byte 255 (surrogate-escaped): telnet's IAC
        ["bogus"],
    ],
)
def test_bad_options_are_one_clear_line(args: list[str]) -> None:
    result = subprocess.run(eco(*args), capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "error" in result.stderr
    assert "Traceback" not in result.stderr


def test_version_and_help() -> None:
    version = subprocess.run(eco("--version"), capture_output=True, text=True, timeout=TIMEOUT)
    assert version.returncode == 0 and eco_trio.__version__ in version.stdout
    help_text = subprocess.run(
        eco("servidor", "--help"), capture_output=True, text=True, timeout=TIMEOUT
    ).stdout
    for option in (
        "--host",
        "--port",
        "--grace",
        "--pause",
        "--max-line",
        "--max-clients",
        "--idle-timeout",
        "--send-timeout",
        "--token",
        "--no-remote-shutdown",
        "--log-level",
    ):
        assert option in help_text


def test_client_against_a_server_that_never_sends_newlines() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def bare_server() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.sendall(b"HOLA SIN SALTO")
                data = b""
                while b"\n" not in data:
                    data += conn.recv(1024)
                time.sleep(0.5)  # a pause between the two: they are two messages
                conn.sendall(data.strip().upper())
                while conn.recv(1024):  # until the client half-closes
                    pass

        thread = threading.Thread(target=bare_server, daemon=True)
        thread.start()
        result = client(port, stdin="eco\n")
        thread.join(TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["HOLA SIN SALTO", "ECO"]


def test_token_from_the_environment_guards_desconexion(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ECO_TRIO_TOKEN", raising=False)
    with server_process(env={**os.environ, "ECO_TRIO_TOKEN": "s3creto"}) as server:
        refused = client(server.port, "DESCONEXION")
        assert refused.returncode == 1 and refused.stdout.startswith("ERROR")  # an ERROR reply
        assert server.process.poll() is None
        accepted = client(server.port, "DESCONEXION s3creto")
        assert accepted.stdout == "DESCONEXION: apagando el servidor.\n"
        assert server.process.wait(TIMEOUT) == 0
    assert not any("s3creto" in line for line in server.log)


def test_a_token_that_is_not_utf8_works_byte_for_byte(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(os.environb, b"ECO_TRIO_TOKEN", b"\xfe\xc0-clave")
    with server_process() as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
            stream = sock.makefile("rb")
            assert stream.readline().startswith(b"BIENVENIDO")
            for wrong in (b"DESCONEXION \xfe\n", "DESCONEXION þÀ-clave\n".encode(), b"DESCONEXION\n"):
                sock.sendall(wrong)
                assert stream.readline().startswith(b"ERROR DESCONEXION requiere")
            sock.sendall(b"DESCONEXION \xfe\xc0-clave\n")
            assert stream.readline() == b"DESCONEXION: apagando el servidor.\n"
        assert server.process.wait(TIMEOUT) == 0
    assert not any("Traceback" in line for line in server.log)


def test_a_low_open_files_limit_lowers_max_clients_and_every_client_hears_back() -> None:
    with server_process("--log-level", "INFO", file_limit=128) as server:
        assert any("--max-clients lowered from 1000 to 96" in line for line in server.log)
        socks = []
        try:
            for _ in range(150):
                socks.append(socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT))
            first_lines = [sock.makefile("rb").readline() for sock in socks]
        finally:
            for sock in socks:
                sock.close()
    assert [line[:10] for line in first_lines] == [b"BIENVENIDO"] * 96 + [b"ERROR dema"] * 54


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_cannot_shut_the_server_down() -> None:
    """What a web page in a local browser can do: a plain-text POST."""
    with server_process() as server:
        result = subprocess.run(
            [
                "curl",
                "-sS",
                "--max-time",
                "10",
                "--data-binary",
                "\nDESCONEXION\n",
                f"http://127.0.0.1:{server.port}/",
            ],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert result.returncode != 0 and result.stdout == ""  # closed without a reply
        assert client(server.port, "hola").stdout == "HOLA\n"  # still up
        assert server.process.poll() is None
        assert any("WARNING" in line and "spoke HTTP" in line for line in server.log)


def test_second_ctrl_c_stops_at_once() -> None:
    # A client that floods and never reads keeps the graceful shutdown
    # waiting for the whole grace period.
    with (
        server_process("--grace", "60") as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as hog,
    ):
        hog.setblocking(False)
        flood_until_stuck(hog)
        server.process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + TIMEOUT
        while not any("shutting down" in line for line in server.log):
            assert time.monotonic() < deadline, server.log
            time.sleep(0.05)
        time.sleep(0.3)
        assert server.process.poll() is None  # still in its grace period
        server.process.send_signal(signal.SIGINT)
        assert server.process.wait(TIMEOUT) == 130
    assert not any("Traceback" in line for line in server.log)


def test_an_idle_server_does_not_spin() -> None:
    """The reactor looks a few more times before it sleeps; that must never
    become a busy loop when nothing happens."""
    with (
        server_process() as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as idle,
    ):
        idle.recv(1024)  # the greeting
        stat = f"/proc/{server.process.pid}/stat"
        if not os.path.exists(stat):
            pytest.skip("needs /proc")

        def cpu_seconds() -> float:
            with open(stat) as file:
                fields = file.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

        before = cpu_seconds()
        time.sleep(1.0)
        assert cpu_seconds() - before < 0.3  # a spinning loop would use about 1.0


def _controlling_terminal() -> None:
    """In the child: make its pseudo-terminal the controlling one, as a
    terminal emulator does, so Ctrl-C there is a signal, not a byte."""
    import fcntl
    import termios

    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """A program on a pseudo-terminal, read and typed to as a person would."""

    def __init__(self, command: list[str], env: dict[str, str] | None = None) -> None:
        leader, follower = os.openpty()
        self.leader = leader
        self.process = subprocess.Popen(
            command,
            stdin=follower,
            stdout=follower,
            stderr=follower,
            preexec_fn=_controlling_terminal,
            env=env,
        )
        os.close(follower)
        self.screen = b""

    def expect(self, text: bytes, wait: float = TIMEOUT) -> None:
        import select as real_select

        deadline = time.monotonic() + wait
        while text not in self.screen:
            remaining = deadline - time.monotonic()
            ready, _, _ = real_select.select([self.leader], [], [], max(0.0, remaining))
            assert ready, f"{text!r} never showed; the screen: {self.screen!r}"
            try:
                self.screen += os.read(self.leader, 4096)
            except OSError:  # the program ended
                raise AssertionError(f"{text!r} never showed; the screen: {self.screen!r}") from None

    def type(self, keys: bytes) -> None:
        os.write(self.leader, keys)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()  # our own child, by its handle
        self.process.wait(TIMEOUT)
        os.close(self.leader)


@pytest.mark.skipif(shutil.which("telnet") is None, reason="telnet is not installed")
def test_telnet_keeps_working_after_ctrl_c_and_in_character_mode() -> None:
    with server_process() as server:
        session = Terminal(["telnet", "127.0.0.1", str(server.port)])
        try:
            session.expect(b"BIENVENIDO")
            session.type(b"hola\r")
            session.expect(b"HOLA")
            session.type(b"\x03")  # Ctrl-C: IAC IP IAC DO TIMING-MARK
            time.sleep(0.2)
            session.type("sigo aquí\r".encode())
            session.expect("SIGO AQUÍ".encode())  # telnet got its timing mark: output shows again
            session.type(b"\x1d")  # Ctrl-]: telnet's own prompt
            session.expect(b"telnet>")
            session.type(b"send ayt\r")
            session.expect("aquí estoy".encode())
            session.type(b"\x1dmode character\r")
            time.sleep(0.3)
            session.type(b"otra\r")
            session.expect(b"OTRA")
            assert b"ERROR" not in session.screen, session.screen
        finally:
            session.close()


# --- the client as scripts use it ----------------------------------------------------

ORIGINAL_SERVER = """
import socket, sys
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
conn, _ = listener.accept()
conn.sendall(b"Bienvenido al servidor")  # the original project: no newline, ever
while data := conn.recv(1024):
    for line in data.decode().splitlines():
        if line == "LISTAR":
            conn.sendall(b"Clientes conectados:")
            conn.sendall(b" 127.0.0.1:49348")
        else:
            conn.sendall(("Eco: " + line.upper()).encode())
"""


@contextmanager
def original_server() -> Iterator[int]:
    """A stand-in for the original project's server, which never ends a line."""
    process = subprocess.Popen(
        [sys.executable, "-c", ORIGINAL_SERVER], stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL
    )
    try:
        assert process.stdout is not None
        yield int(process.stdout.readline())
    finally:
        process.kill()  # our own child, by its handle
        process.wait(TIMEOUT)
        assert process.stdout is not None
        process.stdout.close()


def test_piped_input_to_a_server_that_never_ends_its_lines() -> None:
    with original_server() as port:
        result = client(port, stdin="hola\nmundo\n")
    assert result.stdout.splitlines() == ["Bienvenido al servidor", "Eco: HOLA", "Eco: MUNDO"]


def test_messages_to_a_server_that_never_ends_its_lines() -> None:
    with original_server() as port:
        result = client(port, "hola", "LISTAR", "adios")
    assert result.stdout.splitlines() == ["Eco: HOLA", "Clientes conectados: 127.0.0.1:49348", "Eco: ADIOS"]


def test_messages_after_a_closing_command_are_reported() -> None:
    with server_process() as server:
        result = client(server.port, "hola", "APAGAR", "hola otra vez")
    assert result.stdout.splitlines() == ["HOLA", "ADIOS: conexión cerrada."]
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "not sent" in result.stderr and "hola otra vez" in result.stderr


def test_a_full_server_says_so() -> None:
    with (
        server_process("--max-clients", "1") as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as first,
    ):
        first.recv(1024)
        result = client(server.port, "hola")
    assert result.returncode == 1
    assert "ERROR demasiados clientes (máximo 1)" in result.stderr and result.stderr.count("\n") == 1


def test_a_closed_stdout_ends_the_client_quietly() -> None:
    with server_process() as server:
        process = subprocess.Popen(
            eco("cliente", "-p", str(server.port), *[f"linea {n}" for n in range(500)]),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert process.stdout is not None and process.stderr is not None
        assert process.stdout.readline() == b"LINEA 0\n"
        process.stdout.close()  # as "| head -1" does
        assert process.wait(TIMEOUT) == 141
        assert process.stderr.read() == b""
        process.stderr.close()


def test_a_server_that_never_answers_times_out() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        result = client(port, "--connect-timeout", "0.5", "hola")
    assert result.returncode == 1
    assert result.stderr == (
        f"python -m eco_trio cliente: no answer from 127.0.0.1:{port} within 0.5 s"
        " (if it is a TLS port, add --tls)\n"
    )


@pytest.mark.parametrize(
    ("host", "expected"),
    [("no-such-host.invalid", "cannot find host no-such-host.invalid"), ("::1", "[::1]:1")],
)
def test_connect_errors_are_one_line_without_python_reprs(host: str, expected: str) -> None:
    result = subprocess.run(
        eco("cliente", "-H", host, "-p", "1", "hola"), capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert expected in result.stderr and "(" not in result.stderr.split(":", 1)[1].split(".")[0]
    if host != "::1":
        assert "Start it with" not in result.stderr  # no server to start on a name that does not resolve


def test_host_and_port_from_short_options_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    with server_process() as server:
        assert client(server.port, "hola").stdout == "HOLA\n"
        short = subprocess.run(
            eco("cliente", "-H", "127.0.0.1", "-p", str(server.port), "uno"),
            capture_output=True, text=True, timeout=TIMEOUT,
        )  # fmt: skip
        assert short.stdout == "UNO\n"
        monkeypatch.setenv("ECO_TRIO_HOST", "127.0.0.1")
        monkeypatch.setenv("ECO_TRIO_PORT", str(server.port))
        from_env = subprocess.run(eco("cliente", "dos"), capture_output=True, text=True, timeout=TIMEOUT)
        assert from_env.stdout == "DOS\n"


def test_dash_capital_v_and_the_program_name_as_invoked() -> None:
    version = subprocess.run(eco("-V"), capture_output=True, text=True, timeout=TIMEOUT)
    assert version.returncode == 0 and version.stdout == f"eco_trio {eco_trio.__version__}\n"
    script = Path(sys.executable).parent / "eco_trio"
    if not script.exists():
        pytest.skip("the eco_trio script is not installed next to this Python")
    usage = subprocess.run(
        [str(script), "cliente", "--port", "x"], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert usage.returncode == 2 and usage.stderr.startswith("eco_trio cliente: error:")


def test_json_logs_one_object_a_line_with_peer_and_event() -> None:
    with server_process("--log-format", "json") as server:
        assert client(server.port, "hola", "APAGAR").returncode == 0
        assert client(server.port, "DESCONEXION").returncode == 0
        assert server.process.wait(TIMEOUT) == 0
    import json

    records = [json.loads(line) for line in server.log if line.strip()]
    assert all({"time", "level", "event", "message"} <= record.keys() for record in records)
    named = {record["event"] for record in records}
    assert {"start", "listening", "desconexion", "shutdown", "stopped"} <= named, named
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", records[0]["time"])
    assert records[0]["message"].startswith(f"eco_trio {eco_trio.__version__}, pid {server.process.pid}")
    events = [record for record in records if record.get("event") == "disconnected"]
    assert events[0]["reason"] == "APAGAR" and events[0]["peer"].startswith("127.0.0.1:")


def test_text_logs_have_iso_timestamps_with_the_offset() -> None:
    with server_process() as server:
        pass
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d INFO eco_trio ", server.log[0])
