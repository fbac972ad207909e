"""``--metrics`` served from trio (issue 18, item 4): no thread per
connection, a connection cap that drops the oldest, timeouts, one log line
per problem and never a traceback."""

from __future__ import annotations

import logging
import socket
import struct
import subprocess
import threading
import urllib.request

import pytest
import trio

from eco_trio.server import metrics

from .helpers import WAIT, start_server
from .processes import TIMEOUT, eco, free_port


def _scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=WAIT) as response:
        return str(response.read().decode())


async def test_idle_connections_take_no_threads_and_cannot_lock_out_a_scrape(nursery: trio.Nursery) -> None:
    running = await start_server(nursery, metrics="127.0.0.1:0")
    address = running.server.metrics_address
    assert address is not None
    host, port = address.rsplit(":", 1)
    threads = threading.active_count()
    idle = [await trio.open_tcp_stream(host, int(port)) for _ in range(5 * metrics.MAX_CONNECTIONS)]
    try:
        await trio.sleep(0.2)
        assert threading.active_count() <= threads + 1  # (+1: to_thread's worker below, at most)
        text = await trio.to_thread.run_sync(_scrape, address)
        assert "eco_trio_clients 0.0" in text
    finally:
        for stream in idle:
            await stream.aclose()


async def test_resets_and_junk_are_one_line_each_without_tracebacks(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    running = await start_server(nursery, metrics="127.0.0.1:0")
    address = running.server.metrics_address
    assert address is not None
    host, port = address.rsplit(":", 1)

    def abuse() -> None:
        for _ in range(30):
            with socket.create_connection((host, int(port)), timeout=WAIT) as sock:
                sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # reset
        with socket.create_connection((host, int(port)), timeout=WAIT) as sock:
            sock.sendall(b"x" * (2 * metrics.MAX_REQUEST))
            assert sock.recv(100) == b""  # closed, unanswered

    await trio.to_thread.run_sync(abuse)
    text = await trio.to_thread.run_sync(_scrape, address)
    assert "eco_trio_info" in text
    running.server.flush_counts()
    assert not [record for record in caplog.records if record.exc_info or record.exc_text]
    assert any("bytes of request" in record.getMessage() for record in caplog.records)


def test_the_responses() -> None:
    def body() -> bytes:
        return b"metrics\n"

    ok = metrics.response(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", body)
    assert ok.startswith(b"HTTP/1.1 200 OK\r\n") and ok.endswith(b"\r\n\r\nmetrics\n")
    assert b"Content-Length: 8\r\n" in ok and b"Connection: close\r\n" in ok
    head = metrics.response(b"HEAD / HTTP/1.0\n\n", body)
    assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n")
    assert metrics.response(b"POST /metrics HTTP/1.1\r\n\r\n", body).startswith(b"HTTP/1.1 405")
    assert metrics.response(b"\x16\x03\x01junk\r\n\r\n", body).startswith(b"HTTP/1.1 400")


def test_a_busy_metrics_port_is_named_in_the_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        line_port = free_port()
        result = subprocess.run(
            [
                *eco("servidor"),
                "--host",
                "127.0.0.1",
                "--port",
                str(line_port),
                "--metrics",
                f"127.0.0.1:{busy}",
            ],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    assert result.returncode == 1
    assert f"127.0.0.1:{busy}" in result.stderr and f":{line_port}:" not in result.stderr
    assert "Traceback" not in result.stderr
