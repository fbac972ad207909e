"""``python -m eco_trio bench`` against a real server, and against liars."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from eco_trio.bench.core import BenchConfig, format_result, run_bench

from .processes import TIMEOUT, eco, server_process


@pytest.mark.parametrize(
    "args",
    [
        ["--mode", "pingpong", "--clients", "3"],
        ["--mode", "pipeline", "--clients", "3", "--pipeline", "8", "--size", "100"],
        ["--mode", "connect", "--clients", "2", "--cpu", "0"],
    ],
)
def test_bench_measures_a_real_server(args: list[str]) -> None:
    with server_process() as server:
        result = subprocess.run(
            eco("bench", "--port", str(server.port), "--seconds", "0.3", "--warmup", "0", "--json", *args),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["replies"] > 0 and report["replies_per_s"] > 0
    assert report["errors"] == 0 and report["mismatches"] == 0
    assert set(report["latency_us"]) == {"p50", "p99", "p99.9", "max"}
    assert 0 < report["bench_cpu"] <= 1.5


def test_bench_holds_connections_and_reports_server_memory() -> None:
    with server_process() as server:
        result = run_bench(
            BenchConfig(port=server.port, mode="hold", clients=50, seconds=0.2, server_pid=server.process.pid)
        )
    assert result.connections_held == 50
    assert result.errors == 0
    assert result.server_kib_per_connection is not None
    assert "held and verified" in format_result(result)


@contextmanager
def lying_server(answer: Callable[[bytes], bytes]) -> Iterator[int]:
    """A one-thread-per-client server that greets, then answers with ``answer``."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)  # so the accept loop sees ``stop``
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        # The bench closes its connections when it is done, often with
        # replies unread (a reset): that ends this client, not the test.
        with contextlib.suppress(ConnectionError), conn, conn.makefile("rb") as lines:
            conn.sendall(b"HOLA\n")
            for line in lines:
                conn.sendall(answer(line))
                if stop.is_set():
                    return

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        listener.close()
        thread.join(TIMEOUT)


@pytest.mark.parametrize(
    "answer",
    [
        lambda line: line,  # not uppercased
        lambda line: line.upper()[:-3] + b"\n",  # cut short
        lambda line: line.upper() * 2,  # answered twice
    ],
)
def test_bench_catches_wrong_replies(answer: Callable[[bytes], bytes]) -> None:
    with lying_server(answer) as port:
        result = subprocess.run(
            eco(
                "bench", "--port", str(port), "--clients", "2", "--seconds", "0.3", "--warmup", "0", "--json"
            ),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    assert result.returncode == 1
    assert json.loads(result.stdout)["mismatches"] >= 1


def test_bench_without_a_server_is_one_clear_line() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = subprocess.run(
        eco("bench", "--port", str(port)), capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and f"127.0.0.1:{port}" in result.stderr


# --- misuse and the server's own words -------------------------------------------------


@pytest.mark.parametrize("option", [["--greeting-lines", "-1"], ["--warmup", "-5"]])
def test_bench_refuses_negative_options_in_one_line(option: list[str]) -> None:
    result = subprocess.run(eco("bench", *option), capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "must be 0 or more" in result.stderr


def test_bench_against_a_full_server_says_what_the_server_said() -> None:
    with (
        server_process("--max-clients", "1") as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT),
    ):
        result = subprocess.run(
            eco("bench", "-p", str(server.port), "--clients", "2", "--seconds", "0.3", "--warmup", "0"),
            capture_output=True, text=True, timeout=TIMEOUT,
        )  # fmt: skip
    assert result.returncode == 3, result.stdout + result.stderr
    assert "the server said: ERROR demasiados clientes" in result.stdout
    assert "mismatches 0" in result.stdout


def test_bench_tells_a_server_shutting_down_from_a_wrong_reply() -> None:
    with server_process() as server:
        bench = subprocess.Popen(
            eco("bench", "-p", str(server.port), "--clients", "5", "--seconds", "3", "--warmup", "0"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(1)
        server.process.send_signal(signal.SIGTERM)
        out, _ = bench.communicate(timeout=TIMEOUT)
    assert bench.returncode == 3, out
    assert "mismatches 0" in out and ("the server said: AVISO" in out or "closed" in out)


def test_bench_against_a_server_that_never_ends_its_lines_says_why() -> None:
    from .test_cli_script import original_server

    with original_server() as port:
        result = subprocess.run(
            eco("bench", "-p", str(port), "--clients", "1", "--seconds", "0.5", "--warmup", "0"),
            capture_output=True, text=True, timeout=TIMEOUT,
        )  # fmt: skip
    assert result.returncode == 3, result.stdout + result.stderr
    assert "may not end its replies with a newline" in result.stdout


def test_the_bottleneck_note_does_not_ask_a_pinned_bench_to_pin(monkeypatch: pytest.MonkeyPatch) -> None:
    from eco_trio.bench import report as bench
    from eco_trio.bench.core import BenchResult

    result = BenchResult("pingpong", 50, 1, 64, 3.0)
    result.bench_is_bottleneck = True
    monkeypatch.setattr(bench, "_pinned", lambda: True)
    pinned = format_result(result)
    assert "taskset" not in pinned and "fewer clients" in pinned
    monkeypatch.setattr(bench, "_pinned", lambda: False)
    assert "taskset" in format_result(result)
