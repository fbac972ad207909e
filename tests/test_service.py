"""Under a service manager: systemd's notify protocol (a fake
NOTIFY_SOCKET the test reads), the watchdog, and socket activation
(LISTEN_FDS with a socket the test passes), with the real command line."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

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
