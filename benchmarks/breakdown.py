"""Where a message's and an idle connection's cost goes, without the network.

    .venv/bin/python benchmarks/breakdown.py

Prints, for 50 connection tasks in one trio run:

* **trio's step**: each task only awaits ``trio.lowlevel.checkpoint()``, or
  the bare turn a busy socket stream takes (``eco_trio.scheduling.
  schedule_point``); the price of one turn of one task, which every message
  pays (asyncio and uvloop take this step in C);
* **a message through eco_trio**: the real ``serve_connection`` over streams
  that answer at once (a 64-byte line per read, replies dropped), so the
  difference from the line above is the connection loop, the protocol and
  the counters;
* **an idle connection**: what tracemalloc sees the server allocate per
  connection held over real loopback sockets, largest first.

The kernel's share (``recv``, ``send``, TCP, waking the client) is the rest of
the server CPU per reply that ``benchmarks/compare`` prints; ``perf record -e
cpu-clock -p <server pid>`` splits the two.  Figures are the best of a few
runs; they vary from machine to machine, the ratios less.
"""

from __future__ import annotations

import gc
import linecache
import socket
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eco_trio.server.config import ServerConfig
from eco_trio.server.connection import serve_connection
from eco_trio.server.core import Server, serve
from eco_trio.transport.fifo import fifo_order
from eco_trio.transport.readiness import Readiness, open_readiness
from eco_trio.transport.scheduling import schedule_point
from eco_trio.transport.socket_stream import SocketStream

TASKS, MESSAGES = 50, 4000
LINE = b"x" * 63 + b"\n"


class AnsweringStream(SocketStream):
    """Our socket stream, with a line ready at every read and what is sent
    dropped, then the end: the conversation takes its real hot path (its
    own turn, then ``receive_nowait``; ``send_nowait``) without the kernel.
    The socket under it is a socket pair nobody touches."""

    def __init__(self, readiness: Readiness) -> None:
        mine, self.peer = socket.socketpair()
        super().__init__(mine, readiness)
        self.left = MESSAGES

    def receive_nowait(self, max_bytes: int) -> bytes:
        if not self.left:
            return b""
        self.left -= 1
        return LINE

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await schedule_point()
        return self.receive_nowait(max_bytes or 1)

    def send_nowait(self, data: bytes | bytearray | memoryview) -> int:
        return len(data)

    async def aclose(self) -> None:
        await super().aclose()
        self.peer.close()


def _steps(turn: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    async def steps() -> None:
        async def task() -> None:
            for _ in range(MESSAGES):
                await turn()

        async with trio.open_nursery() as nursery:
            for _ in range(TASKS):
                nursery.start_soon(task)

    return steps


async def _messages() -> None:
    server = Server(ServerConfig(host="127.0.0.1", port=0, max_clients=TASKS))
    with open_readiness() as readiness:
        async with trio.open_nursery() as nursery:
            for number in range(TASKS):
                entry = server.registry.register(f"127.0.0.1:{number}", trio.current_time())
                assert entry is not None
                nursery.start_soon(serve_connection, server.control, AnsweringStream(readiness), entry)


def per_message(run: Callable[[], Awaitable[None]]) -> float:
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        with fifo_order():
            trio.run(run)
        best = min(best, time.perf_counter() - start)
    return best / (TASKS * MESSAGES) * 1e6


async def _idle(held: int) -> None:
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(serve, ServerConfig(host="127.0.0.1", port=0, max_clients=held + 100))
        port = int(addresses[0].rsplit(":", 1)[1])
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
        await trio.sleep(0.3)
        gc.collect()
        tracemalloc.start(8)
        before = tracemalloc.take_snapshot()
        for number in range(held):
            clients.append(socket.create_connection(("127.0.0.1", port)))
            if number % 100 == 99:
                await trio.sleep(0.01)  # let the server accept and greet
        await trio.sleep(1.0)
        gc.collect()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        for client in clients:
            client.close()
        nursery.cancel_scope.cancel()
    ours = [
        stat
        for stat in after.compare_to(before, "traceback")
        # The clients' sockets live in this process too: not the server's.
        if not any(_is_client_side(frame) for frame in stat.traceback)
    ]
    total = sum(stat.size_diff for stat in ours)
    print(f"an idle connection: {total / held:,.0f} bytes allocated by the server (tracemalloc)")
    for stat in ours[:12]:
        if stat.size_diff / held < 40:
            continue
        frame = stat.traceback[-1]
        where = f"{Path(frame.filename).name}:{frame.lineno}"
        code = linecache.getline(frame.filename, frame.lineno).strip()[:70]
        print(f"  {stat.size_diff / held:5.0f} B  {where:<28} {code}")


def _is_client_side(frame: tracemalloc.Frame) -> bool:
    line = linecache.getline(frame.filename, frame.lineno)
    return frame.filename == __file__ and "create_connection" in line


def main() -> None:
    checkpoint = per_message(_steps(trio.lowlevel.checkpoint))
    step = per_message(_steps(schedule_point))
    message = per_message(_messages)
    print(f"trio's step (one turn of one of {TASKS} tasks):  {step:.2f} µs bare"
          f"  (as a checkpoint: {checkpoint:.2f} µs)")  # fmt: skip
    print(f"a message through eco_trio (no network):    {message:.2f} µs"
          f"  (the connection loop, protocol and counters: {message - step:.2f} µs)")  # fmt: skip
    with fifo_order():
        trio.run(_idle, 2000)


if __name__ == "__main__":
    main()
