"""The modes, each a small function over the poll loop: pingpong and
pipeline (lines in flight per connection), connect (connect, greeting, one
line, close, again), and hold (many idle connections, checked before and
after)."""

from __future__ import annotations

import time

from eco_trio.bench.config import BenchResult
from eco_trio.bench.loop import Conn, Run
from eco_trio.bench.report import rss_mib


def streams(run: Run, depth: int, deadline: float) -> None:
    """pingpong (depth 1) and pipeline: keep ``depth`` lines in flight."""
    ready: set[int] = set()
    for _ in range(run.config.clients):
        conn = run.open()
        if conn is not None and not conn.greeting_left:
            ready.add(conn.sock.fileno())
            run.send(conn, conn.next_lines(depth, time.perf_counter()))
    measure_from = time.perf_counter() + run.config.warmup
    run.loop(deadline, measure_from, lambda conn, now: _stream_event(run, conn, now, depth, ready))


def _stream_event(run: Run, conn: Conn, now: float, depth: int, ready: set[int]) -> None:
    fd = conn.sock.fileno()
    count = run.receive(conn, now)
    if count is None:
        run.close(conn)
        return
    if fd not in ready and not conn.greeting_left:
        ready.add(fd)
        count = depth  # greeted: fill the pipeline
    if count and not run.send(conn, conn.next_lines(count, now)):
        run.close(conn)


def connects(run: Run, deadline: float) -> None:
    """connect: each slot loops connect, greeting, one pingpong, close."""
    slots = min(run.config.clients, run.config.concurrency)

    def new_cycle() -> None:
        conn = run.open()
        if conn is not None and not conn.greeting_left:
            run.send(conn, conn.next_lines(1, time.perf_counter()))

    for _ in range(slots):
        new_cycle()
    measure_from = time.perf_counter() + run.config.warmup

    def event(conn: Conn, now: float) -> None:
        count = run.receive(conn, now)
        if count is None:
            run.close(conn)
            new_cycle()
            return
        if not conn.greeting_left and not conn.seq:
            if not run.send(conn, conn.next_lines(1, now)):
                run.close(conn)
                new_cycle()
        elif count:
            if run.measuring:  # latency of the whole cycle, from connect
                run.latencies[-1] = now - conn.started
            run.close(conn)
            new_cycle()

    run.loop(deadline, measure_from, event)


def hold(run: Run) -> BenchResult:
    """hold: open N connections, verify each, hold them, verify again."""
    before = rss_mib(run.config.server_pid)
    held: list[Conn] = []
    pending: set[int] = set()
    setup_deadline = time.perf_counter() + max(20.0, run.config.clients / 500)
    opened = 0
    run.measuring = True
    while (opened < run.config.clients or pending) and time.perf_counter() < setup_deadline:
        while opened < run.config.clients and len(pending) < run.config.concurrency:
            conn = run.open()
            opened += 1
            if conn is not None:
                pending.add(conn.sock.fileno())
                if not conn.greeting_left:
                    run.send(conn, conn.next_lines(1, time.perf_counter()))
        for fd, _ in run.epoll.poll(0.05):
            conn = run.conns[fd]
            now = time.perf_counter()
            count = run.receive(conn, now)
            if count is None:
                pending.discard(fd)
                run.close(conn)
            elif not conn.greeting_left and not conn.seq:
                run.send(conn, conn.next_lines(1, now))
            elif count:
                pending.discard(fd)
                held.append(conn)
    during = rss_mib(run.config.server_pid)
    hold_until = time.perf_counter() + run.config.seconds
    while time.perf_counter() < hold_until:
        for fd, _ in run.epoll.poll(max(0.0, hold_until - time.perf_counter())):
            run.error("a held connection heard from the server")
            run.close(run.conns[fd])
    # Final check: every held connection still answers.
    for conn in held:
        run.send(conn, conn.next_lines(1, time.perf_counter()))
    verified = 0
    final_deadline = time.perf_counter() + 10
    waiting = {c.sock.fileno() for c in held if c.sock.fileno() in run.conns}
    while waiting and time.perf_counter() < final_deadline:
        for fd, _ in run.epoll.poll(0.05):
            conn = run.conns[fd]
            count = run.receive(conn, time.perf_counter())
            if count is None:
                waiting.discard(fd)
                run.close(conn)
            elif count:
                waiting.discard(fd)
                verified += 1
    result = run.result(run.config.seconds)
    result.connections_held = verified
    if before is not None and during is not None and held:
        result.server_rss_mib = during
        result.server_kib_per_connection = (during - before) * 1024 / len(held)
    return result
