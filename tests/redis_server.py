"""A real ``redis-server`` for the deployment tests: on a unix socket in a
private temporary folder, without persistence, started and stopped by its
PID (only our own child), and waited for until it answers PING."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

TIMEOUT = 10.0


def require_redis() -> str:
    """The redis-server program, or skip the test, naming the package."""
    program = shutil.which("redis-server")
    if program is None:
        pytest.skip("redis-server is not installed (Debian package redis-server; brew install redis)")
    pytest.importorskip("coredis", reason="coredis is not installed (pip install eco_trio[cluster])")
    return program


class RedisServer:
    def __init__(self, program: str, folder: Path) -> None:
        self.program, self.folder = program, folder
        self.socket_path = folder / "redis.sock"
        self.url = f"unix://{self.socket_path}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.program,
                "--port",
                "0",
                "--unixsocket",
                str(self.socket_path),
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                if self.command("PING") == "PONG":
                    return
            except OSError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("redis-server did not answer PING")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # in case a test left it stopped
            self.process.terminate()
            try:
                self.process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(TIMEOUT)
        self.process = None

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def restart_empty(self) -> None:
        self.stop()
        self.socket_path.unlink(missing_ok=True)
        self.start()

    def command(self, *words: str) -> object:
        """One command over RESP, its reply decoded (enough for tests)."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(TIMEOUT)
            sock.connect(str(self.socket_path))
            request = f"*{len(words)}\r\n" + "".join(f"${len(w.encode())}\r\n{w}\r\n" for w in words)
            sock.sendall(request.encode())
            reader = sock.makefile("rb")
            return _reply(reader)


def _reply(reader: object) -> object:
    line = reader.readline().rstrip(b"\r\n")  # type: ignore[attr-defined]
    kind, rest = line[:1], line[1:].decode()
    if kind in (b"+", b"-"):
        return rest
    if kind == b":":
        return int(rest)
    if kind == b"$":
        if rest == "-1":
            return None
        data = reader.read(int(rest) + 2)  # type: ignore[attr-defined]
        return data[:-2].decode()
    if kind == b"*":
        return [_reply(reader) for _ in range(int(rest))]
    raise ValueError(f"unexpected reply {line!r}")


@contextmanager
def redis_server(folder: Path) -> Iterator[RedisServer]:
    server = RedisServer(require_redis(), folder)
    server.start()
    try:
        yield server
    finally:
        server.stop()
