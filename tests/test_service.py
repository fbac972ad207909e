"""Under a service manager: systemd's notify protocol (a fake
NOTIFY_SOCKET the test reads), the watchdog, and socket activation
(LISTEN_FDS with a socket the test passes), with the real command line."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .processes import TIMEOUT, eco, server_process


def test_ready_watchdog_and_stopping_are_notified(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(path)
        manager.settimeout(TIMEOUT)
        env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"}
        with server_process(env=env) as server:
            messages = [manager.recv(4096).decode()]
            assert messages[0].startswith("READY=1\nSTATUS=serving on 127.0.0.1:")
            assert f"MAINPID={server.process.pid}" in messages[0]
            watchdogs = 0
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                watchdogs += manager.recv(4096) == b"WATCHDOG=1"
            assert watchdogs >= 5  # every 0.1 s: half of WATCHDOG_USEC
            server.process.send_signal(signal.SIGTERM)
            while (message := manager.recv(4096).decode()) == "WATCHDOG=1":
                pass
            assert message == "STOPPING=1\nSTATUS=shutting down"
            assert server.process.wait(TIMEOUT) == 0


def test_without_a_manager_nothing_is_sent(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "NOTIFY_SOCKET"}
    with server_process(env=env) as server:
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(TIMEOUT) == 0


#: What systemd does between fork and exec: the passed socket at descriptor
#: 3, LISTEN_PID the server's own PID, LISTEN_FDS the count.
_ACTIVATE = (
    "import os, sys; os.dup2(int(sys.argv[1]), 3); os.environ['LISTEN_PID'] = str(os.getpid()); "
    "os.environ['LISTEN_FDS'] = '1'; os.execv(sys.executable, [sys.executable, *sys.argv[2:]])"
)


def test_socket_activation_serves_the_passed_socket() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        command = [sys.executable, "-c", _ACTIVATE, str(listener.fileno()), *eco("servidor")[1:]]
        command += ["--host", "127.0.0.1", "--port", "1"]  # ignored: the socket is systemd's
        process = subprocess.Popen(
            command, pass_fds=[listener.fileno()], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as client:
                reader = client.makefile("rb")
                assert reader.readline().startswith(b"BIENVENIDO")
                client.sendall(b"activado\n")
                assert reader.readline() == b"ACTIVADO\n"
                reader.close()
        finally:
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=TIMEOUT)
        assert process.returncode == 0, stderr
        assert f"listening on 127.0.0.1:{port}" in stderr


_UNITS = Path(__file__).resolve().parent.parent / "contrib" / "systemd"


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    return subprocess.run(
        ["systemd-analyze", *args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )


def _units_here(tmp_path: Path) -> Path:
    """The shipped units, with ExecStart pointing at this environment's
    eco_trio (verify checks that the program exists)."""
    program = Path(sys.executable).parent / "eco_trio"
    if not program.exists():
        pytest.skip(f"no eco_trio script next to {sys.executable}")
    for unit in ("eco_trio.service", "eco_trio.socket"):
        text = (_UNITS / unit).read_text().replace("/opt/eco_trio/.venv/bin/eco_trio", str(program))
        (tmp_path / unit).write_text(text)
    return tmp_path / "eco_trio.service"


def test_the_shipped_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    service = _units_here(tmp_path)
    result = _analyze("verify", str(service), str(tmp_path / "eco_trio.socket"))
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_the_shipped_service_is_hardened(tmp_path: Path) -> None:
    """systemd's own exposure score (0 safest, 10 none): DynamicUser,
    ProtectSystem=strict, NoNewPrivileges and the rest keep it low."""
    result = _analyze("security", "--offline=yes", str(_units_here(tmp_path)))
    if "--offline" in result.stderr and "unrecognized" in result.stderr:
        pytest.skip("systemd-analyze security --offline needs systemd 250 or newer")
    match = re.search(r"Overall exposure level for eco_trio\.service: ([0-9.]+)", result.stdout)
    assert match is not None, result.stdout + result.stderr
    assert float(match[1]) <= 2.0, result.stdout


def test_the_units_command_line_is_one_the_server_takes(tmp_path: Path) -> None:
    """ExecStart's words, with the credential's path filled in, start a
    server (on a free loopback port rather than 0.0.0.0:5000)."""
    line = next(
        row for row in (_UNITS / "eco_trio.service").read_text().splitlines() if row.startswith("ExecStart=")
    )
    words = line.split("=", 1)[1].split()
    token = tmp_path / "token"
    token.write_text("secreto\n")
    token.chmod(0o600)
    arguments = [word.replace("${CREDENTIALS_DIRECTORY}", str(tmp_path)) for word in words[2:]]
    host = arguments.index("--host")
    arguments[host + 1] = "127.0.0.1"
    with server_process(*arguments) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as client:
            reader = client.makefile("rb")
            assert reader.readline().startswith(b"BIENVENIDO")
            client.sendall(b"DESCONEXION secreto\n")
            assert reader.readline().startswith(b"DESCONEXION")
            reader.close()
        assert server.process.wait(TIMEOUT) == 0
