"""The command line as a user runs it, shared by the end-to-end tests:
``python -m eco_trio`` in subprocesses, a server until it listens, another
program's server (haproxy, nginx, a reference) until it accepts, a client
run to its end, a free loopback port."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

TIMEOUT = 20


@dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    port: int
    lines: list[str]
    reader: threading.Thread

    @property
    def log(self) -> list[str]:
        """The server's log so far.  Once the server has exited, all of it:
        the thread that reads it may trail the exit."""
        if self.process.poll() is not None:
            self.reader.join(TIMEOUT)
        return self.lines

    def wait_for(self, text: str) -> str:
        """The first log line containing ``text``, waiting for it (bounded):
        the server's log thread writes it, and ours reads it, some time
        after whatever the clients saw."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            for line in self.log:
                if text in line:
                    return line
            assert time.monotonic() < deadline, f"no {text!r} in the log: {self.lines}"
            time.sleep(0.02)


def eco(*args: str) -> list[str]:
    return [sys.executable, "-m", "eco_trio", *args]


#: Runs eco_trio with a lower open-files limit: argv[1] is the limit.
_WITH_FILE_LIMIT = (
    "import os, resource, sys; n = int(sys.argv[1]); resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); "
    "os.execv(sys.executable, [sys.executable, '-m', 'eco_trio', *sys.argv[2:]])"
)


@contextmanager
def server_process(
    *args: str, file_limit: int | None = None, env: dict[str, str] | None = None
) -> Iterator[ServerProcess]:
    """``python -m eco_trio servidor --port 0`` until it says where it listens."""
    command = eco("servidor", "--host", "127.0.0.1", "--port", "0", *args)
    if file_limit is not None:
        command = [sys.executable, "-c", _WITH_FILE_LIMIT, str(file_limit), *command[3:]]
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    log: list[str] = []
    listening = threading.Event()
    ports: list[int] = []

    def read_log() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            log.append(line)
            if match := re.search(r"listening on 127\.0\.0\.1:(\d+)", line):
                ports.append(int(match[1]))
                listening.set()

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    try:
        assert listening.wait(TIMEOUT), f"server did not start: {log}"
        yield ServerProcess(process, ports[0], log, reader)
    finally:
        if process.poll() is None:
            process.kill()  # only our own child, by its handle
        process.wait(TIMEOUT)
        reader.join(TIMEOUT)
        assert process.stderr is not None
        process.stderr.close()


def wait_accepting(port: int, process: subprocess.Popen[Any], seconds: float = TIMEOUT) -> bool:
    """Until something accepts connections on loopback ``port``: True; False
    if ``process`` (the one that should) exits first.  Asserts within
    ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            if process.poll() is not None:
                return False
            assert time.monotonic() < deadline, f"nothing accepts on port {port} after {seconds} s"
            time.sleep(0.05)


class DidNotStart(Exception):
    """A program :func:`program_server` started exited before it accepted:
    ``args`` is its path and what it wrote on stderr."""


@contextmanager
def program_server(command: list[str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    """Another program's server (haproxy, nginx, a reference server),
    started for a test, once it accepts on loopback ``port``; stopped with
    SIGTERM after, by its own handle.  Raises :class:`DidNotStart` if it
    exits first."""
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    assert process.stderr is not None
    try:
        if not wait_accepting(port, process):
            raise DidNotStart(command[0], process.stderr.read().decode(errors="replace"))
        yield process
    finally:
        process.send_signal(signal.SIGTERM)  # (nothing, if it has exited)
        process.wait(TIMEOUT)
        process.stderr.close()


class Line:
    """A client over a plain socket: what nc would do, line by line."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.file = self.sock.makefile("rb")
        try:
            self.greeting = self.line()
        except BaseException:
            self.close()
            raise

    def line(self) -> str:
        return self.file.readline().decode().rstrip("\n")

    def request(self, text: str) -> str:
        self.sock.sendall(text.encode() + b"\n")
        return self.line()

    def block(self, text: str) -> tuple[str, list[str]]:
        """A command answered with a header line and its rows."""
        header = self.request(text)
        count = int(header.split()[1])
        return header, [self.line() for _ in range(count)]

    def listing(self) -> list[str]:
        return self.block("LISTAR")[1]

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def client(port: int, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        eco("cliente", "--host", "127.0.0.1", "--port", str(port), *args),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def one_client_server(talk: Callable[[socket.socket, tuple[str, int]], None]) -> Iterator[int]:
    """A stand-in server for one connection, in a thread: ``talk(conn,
    peer)`` plays it (a server of another kind, or a hostile one); yields
    its port.  Bounded: the accept and each read wait TIMEOUT at most."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(TIMEOUT)

    def serve() -> None:
        try:
            conn, peer = listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(TIMEOUT)
            talk(conn, peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        thread.join(TIMEOUT)
