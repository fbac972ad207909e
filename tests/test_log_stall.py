"""A log nobody reads must not stop the server (issue 18, item 1).

The log is written by a thread through a bounded queue: a stderr pipe that
is never drained, or a closed stderr, costs dropped log lines (counted),
never a stalled connection or a shutdown that waits.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from eco_trio.server import logs

from .processes import TIMEOUT, eco, free_port, wait_accepting

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX pipes and signals")


def test_a_stuck_log_drops_and_counts_then_reports_what_it_lost() -> None:
    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "w")
    log = logging.getLogger("eco_trio.test")
    try:
        logs.configure("INFO", "text", stream)
        before = logs.dropped_lines()
        started = time.monotonic()
        for n in range(20_000):  # ~1.5 MB: far past the pipe's 64 KiB and the queue
            log.info("line %d of a log nobody reads", n)
        assert time.monotonic() - started < 5, "logging waited for the reader"
        assert logs.dropped_lines() > before
        # The reader comes back: what was queued comes out, then the count.
        os.set_blocking(read_end, False)
        seen = b""
        deadline = time.monotonic() + TIMEOUT
        while b"log lines dropped" not in seen:
            assert time.monotonic() < deadline, seen[-500:]
            try:
                seen = seen[-4096:] + os.read(read_end, 1 << 20)
            except BlockingIOError:
                log.info("caught up?")
                time.sleep(0.01)
    finally:
        logs.stop()
        logging.getLogger().handlers[:] = []
        stream.close()
        os.close(read_end)


def test_stop_does_not_wait_for_a_stuck_log() -> None:
    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "w")
    try:
        logs.configure("INFO", "text", stream)
        for n in range(20_000):
            logging.getLogger("eco_trio.test").info("filler %d %s", n, "x" * 100)
        started = time.monotonic()
        logs.stop()
        assert time.monotonic() - started < logs.STOP_WAIT * 2 + 1
    finally:
        logging.getLogger().handlers[:] = []
        stream.close()
        os.close(read_end)


def _round_trip(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock, sock.makefile("rb") as file:
        file.readline()  # the greeting
        sock.sendall(b"sigo aqui\n")
        return file.readline()


def _wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    assert wait_accepting(port, process), "the server exited"


@contextmanager
def _server(port: int, *, stderr: int | None, shell_prefix: str = "") -> Iterator[subprocess.Popen[bytes]]:
    command = [*eco("servidor"), "--host", "127.0.0.1", "--port", str(port), "--grace", "0.5"]
    if shell_prefix:
        command = ["sh", "-c", f'exec "$@" {shell_prefix}', "sh", *command]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        _wait_listening(port, process)
        yield process
    finally:
        if process.poll() is None:
            process.kill()  # our own child, by its handle
        process.wait(TIMEOUT)


def test_server_keeps_serving_and_stops_with_its_stderr_never_read() -> None:
    """The attack of item 1: connect/close cycles at INFO fill a stderr pipe
    nobody reads; a bystander must still be answered, and SIGTERM obeyed."""
    port = free_port()
    with _server(port, stderr=subprocess.PIPE) as process:
        for _ in range(1500):  # two log lines each: about 200 KB, over 3 pipe buffers
            socket.create_connection(("127.0.0.1", port), timeout=3).close()
        assert _round_trip(port) == b"SIGO AQUI\n"
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(TIMEOUT) == 0
        assert time.monotonic() - started < 5
        assert process.stderr is not None
        process.stderr.close()


def test_closed_stderr_and_sigint_still_shut_down_gracefully() -> None:
    port = free_port()
    with _server(port, stderr=None, shell_prefix="2>&-") as process:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as sock, sock.makefile("rb") as file:
            assert file.readline().startswith(b"BIENVENIDO")
            process.send_signal(signal.SIGINT)
            assert file.readline().startswith(b"AVISO")
        assert process.wait(TIMEOUT) == 0


@pytest.mark.parametrize("delay", [0.0, 0.08, 0.15, 0.3, 0.6])
def test_ctrl_c_during_start_up_is_quiet(delay: float) -> None:
    """Whenever during start-up Ctrl-C comes (loading, parsing, binding),
    the server ends without a traceback: 130, 0 once it serves, or killed
    by the signal before Python took it over.  (Not tried: the few
    milliseconds of the interpreter's own start, site and runpy, before any
    eco_trio code runs; a traceback there is Python's.)"""
    process = subprocess.Popen(
        [*eco("servidor"), "--host", "127.0.0.1", "--port", "0"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        # Ctrl-C as a terminal delivers it: a test run started in the
        # background of a script has SIGINT ignored, and children inherit that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=TIMEOUT)
    assert "Traceback" not in stderr, stderr
    assert process.returncode in (0, 130, -signal.SIGINT), (process.returncode, stderr)
