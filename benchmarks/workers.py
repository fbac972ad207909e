#!/usr/bin/env python3
"""What ``servidor --workers N`` costs per worker, and what it predicts.

    python3 benchmarks/workers.py --loadgen PATH [--seconds 3] [--counts 1 2 4]

This machine has 2 cores, so throughput scaling cannot be shown directly;
this prints what predicts it:

* server CPU per reply per worker (all workers' CPU over all replies) for
  each N, pingpong 50 and pipeline 50x16x64, with the C load generator;
  the server (supervisor and workers) on CPU 1, the generator on CPU 0;
* the private redis-server's CPU per second at rest and under load;
* how 1,000 connections spread over the workers (max/min, from LISTAR);
* throughput modelled for 8 and 16 cores from those figures (the model is
  printed with them).

Every process it starts is stopped by its PID; every load is bounded.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import BENCH_CPU, SERVER_CPU, cpu_seconds, free_port, pin  # noqa: E402


def cpu_or_nothing(pid: int) -> float:
    """A worker's CPU time so far, or 0 once it has exited."""
    try:
        return cpu_seconds(pid)
    except OSError:
        return 0.0


class Supervised:
    def __init__(self, count: int, *extra: str) -> None:
        self.port = free_port()
        self.log: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "eco_trio", "servidor", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", str(count), "--max-clients", "19000", "--log-level", "INFO", *extra],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            preexec_fn=lambda: pin(SERVER_CPU),
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 30
        while not any("workers serving" in line for line in self.log):
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise SystemExit("the workers did not start:\n" + "".join(self.log[-20:]))
            time.sleep(0.05)

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)

    def pids(self) -> tuple[list[int], int | None]:
        workers: dict[str, int] = {}
        redis = None
        for line in self.log:
            if match := re.search(r"started (worker-[\d.]+) \(pid (\d+)\)", line):
                workers[match[1]] = int(match[2])
            elif match := re.search(r"private redis-server on \S+ \(pid (\d+)\)", line):
                redis = int(match[1])
        return list(workers.values()), redis

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def loadgen(path: str, port: int, mode: str, seconds: float) -> float:
    args = [path, "--port", str(port), "--greeting-lines", "1", "--mode", mode, "--conns", "50",
            "--seconds", str(seconds), "--warmup", "0.5", "--json"]  # fmt: skip
    if mode == "pipeline":
        args += ["--depth", "16", "--size", "64"]
    out = subprocess.run(
        args, capture_output=True, text=True, timeout=seconds + 60, preexec_fn=lambda: pin(BENCH_CPU)
    )
    return float(json.loads(out.stdout)["replies_per_s"])


def spread(port: int, count: int) -> tuple[dict[str, int], float]:
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(1000)]
    try:
        for sock in socks:
            sock.recv(4096)
        time.sleep(1.5)  # every worker's heartbeat
        asker = socks[0].makefile("rwb")
        asker.write(b"LISTAR\n")
        asker.flush()
        rows = int(asker.readline().split()[1])
        per: dict[str, int] = {}
        for _ in range(rows):
            node = asker.readline().decode().rsplit("nodo=", 1)[1].split()[0]
            per[node] = per.get(node, 0) + 1
        asker.close()
    finally:
        for sock in socks:
            sock.close()
    counts = [per.get(f"worker-{n}", 0) for n in range(1, count + 1)]
    return per, (max(counts) / min(counts)) if min(counts) else float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--loadgen", required=True, help="the C load generator (../shared/loadgen)")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--counts", type=int, nargs="*", default=[1, 2, 4])
    args = parser.parse_args()
    print("| workers | load | replies/s | server CPU µs/reply (all workers) | vs N=1 | Redis CPU % (load) |")
    print("|--:|---|--:|--:|--:|--:|")
    per_reply: dict[tuple[int, str], float] = {}
    rest: dict[int, float] = {}
    spreads: dict[int, tuple[dict[str, int], float]] = {}
    reuse_spreads: dict[int, tuple[dict[str, int], float]] = {}
    for count in args.counts:
        server = Supervised(count)
        try:
            workers, redis = server.pids()
            if redis is not None:
                before, started = cpu_or_nothing(redis), time.monotonic()
                time.sleep(3)
                rest[count] = (cpu_or_nothing(redis) - before) / (time.monotonic() - started) * 100
            for mode in ("pingpong", "pipeline"):
                cpu_before = sum(cpu_or_nothing(pid) for pid in workers)
                redis_before = cpu_or_nothing(redis) if redis else 0.0
                rate = loadgen(args.loadgen, server.port, mode, args.seconds)
                spent = sum(cpu_or_nothing(pid) for pid in workers) - cpu_before
                window = args.seconds + 0.5
                redis_load = ((cpu_or_nothing(redis) - redis_before) / window * 100) if redis else 0.0
                cost = spent * 1e6 / (rate * window) if rate else 0.0
                per_reply[(count, mode)] = cost
                base = per_reply.get((args.counts[0], mode), cost)
                print(
                    f"| {count} | {mode} | {rate:,.0f} | {cost:.1f} | {cost / base:.2f}x | {redis_load:.1f} |"
                )
            if count > 1:
                spreads[count] = spread(server.port, count)
        finally:
            server.stop()
        if count > 1 and sys.platform.startswith("linux"):
            server = Supervised(count, "--reuse-port")
            try:
                reuse_spreads[count] = spread(server.port, count)
            finally:
                server.stop()
    print()
    for count, percent in rest.items():
        print(f"- Redis CPU at rest with {count} worker(s): {percent:.2f} % of a core")
    for count, (per, ratio) in spreads.items():
        print(f"- 1,000 connections over {count} workers (one shared listener): {per}; max/min {ratio:.2f}")
    for count, (per, ratio) in reuse_spreads.items():
        print(f"- 1,000 connections over {count} workers (--reuse-port): {per}; max/min {ratio:.2f}")
    top = max(args.counts)
    print(
        "\nModel: each worker on a core of its own spends c µs of CPU per reply, so N workers serve\n"
        "N x 1e6 / c replies/s (the load generator elsewhere). Redis is off the per-message path and\n"
        f"is not a term. With c measured at N={top} (on one shared core here, which only adds switches):"
    )
    for mode in ("pingpong", "pipeline"):
        cost = per_reply.get((top, mode))
        if cost:
            print(f"- {mode}: 8 cores {8e6 / cost:,.0f} replies/s, 16 cores {16e6 / cost:,.0f} replies/s")
    print(f"\nReproduce: python3 benchmarks/workers.py {' '.join(sys.argv[1:])}")


if __name__ == "__main__":
    main()
