#!/usr/bin/env python3
"""What ``--proxy-protocol`` costs a connection, same run.

    python3 benchmarks/proxy.py [--seconds 1.5] [--rounds 11]

The built-in load generator's connect mode (connect, greeting, one line,
close), against the same server without and with ``--proxy-protocol``; with
it, every connection starts with a PROXY v1 header, as from a load balancer
on loopback (trusted by default).  Prints connections/s and the server's
CPU per connection.  Server on CPU 1, generator on CPU 0.
"""

from __future__ import annotations

import argparse
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import trio  # noqa: E402, F401  (see compare: the bench runs slower without it)
from machine import BENCH_CPU, SERVER_CPU, cpu_seconds, free_port, pin  # noqa: E402

from eco_trio.bench.core import BenchConfig, run_bench  # noqa: E402


def start_server(proxy: bool) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    args = [sys.executable, "-m", "eco_trio", "servidor", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "WARNING", "--max-clients", "19000"]  # fmt: skip
    if proxy:
        args.append("--proxy-protocol")
    server = subprocess.Popen(args, cwd=ROOT, stderr=subprocess.DEVNULL, preexec_fn=lambda: pin(SERVER_CPU))
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, port
        except OSError:
            if time.monotonic() > deadline:
                server.kill()
                raise SystemExit("the server did not start") from None
            time.sleep(0.05)


def measure(server: subprocess.Popen[bytes], port: int, proxy: bool, seconds: float) -> tuple[float, float]:
    """Connections/s and server CPU µs per connection, warm-up included
    in both."""
    warmup = 0.3
    before = cpu_seconds(server.pid)
    result = run_bench(
        BenchConfig(port=port, mode="connect", clients=50, seconds=seconds, warmup=warmup, proxy_header=proxy)
    )
    spent = cpu_seconds(server.pid) - before
    if result.errors or result.mismatches:
        raise SystemExit(f"errors: {result.first_error}")
    count = result.replies_per_s * (seconds + warmup)
    return result.replies_per_s, spent * 1e6 / count


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args()
    print("| round | without: conn/s, CPU µs/conn | --proxy-protocol: conn/s, CPU µs/conn | CPU ratio |")
    print("|--:|---|---|--:|")
    ratios = []
    # Both servers run throughout, on the same core, and the load goes to
    # one, then the other: the host drifts by more than the effect, so
    # each round compares two windows next to each other.
    servers = {proxy: start_server(proxy) for proxy in (False, True)}
    pin(BENCH_CPU)
    try:
        for round_number in range(1, args.rounds + 1):
            first, second = (False, True) if round_number % 2 else (True, False)
            figures = {first: measure(*servers[first], first, args.seconds)}
            figures[second] = measure(*servers[second], second, args.seconds)
            (plain_rate, plain_cpu), (proxy_rate, proxy_cpu) = figures[False], figures[True]
            ratios.append(proxy_cpu / plain_cpu)
            print(f"| {round_number} | {plain_rate:,.0f}, {plain_cpu:.1f} | "
                  f"{proxy_rate:,.0f}, {proxy_cpu:.1f} | {proxy_cpu / plain_cpu:.2f}x |")  # fmt: skip
    finally:
        for server, _ in servers.values():
            server.send_signal(signal.SIGTERM)
            server.wait(10)
    median = statistics.median(ratios)
    print(f"\nMedian CPU ratio over {len(ratios)} rounds: {median:.2f}x (target: at most 1.10x)")
    print(f"\nReproduce: python3 benchmarks/proxy.py {' '.join(sys.argv[1:])}")


if __name__ == "__main__":
    main()
