#!/usr/bin/env python3
"""What ``--proxy-protocol`` costs a connection, same run.

    python3 benchmarks/proxy.py [--seconds 1.5] [--rounds 11] [--header v1|v2]

``benchmarks/proxyload.c`` (built here with ``cc``) opens connections in a
loop, 50 at a time: connect, greeting, one line, close.  It runs against the
same server without and with ``--proxy-protocol``; with it, every connection
starts with a PROXY header, as from a load balancer on loopback (trusted by
default).  Prints connections/s and the server's CPU per connection.
Server on CPU 1, generator on CPU 0.

The generator is C because it must not be what the figure measures: the
built-in Python one spends as much CPU per connection as the server, so the
server waits on it, and a waiting server's CPU per connection grows with
every microsecond the generator adds (sending the header is some).
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import BENCH_CPU, C_COMPILER, SERVER_CPU, accepting, build_c, cpu_seconds, free_port, pin  # noqa: E402

HEADERS = {"none": "0", "v1": "1", "v2": "2"}


def build_generator(folder: Path) -> Path:
    if C_COMPILER is None:
        raise SystemExit("benchmarks/proxy.py needs Linux and a C compiler (Debian: gcc) for proxyload.c")
    return build_c(ROOT / "benchmarks" / "proxyload.c", folder / "proxyload")


def start_server(proxy: bool) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    args = [sys.executable, "-m", "eco_trio", "servidor", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "WARNING", "--max-clients", "19000"]  # fmt: skip
    if proxy:
        args.append("--proxy-protocol")
    server = subprocess.Popen(args, cwd=ROOT, stderr=subprocess.DEVNULL, preexec_fn=lambda: pin(SERVER_CPU))
    if not accepting(port, server):
        server.kill()
        raise SystemExit("the server did not start")
    return server, port


def measure(
    generator: Path, server: subprocess.Popen[bytes], port: int, header: str, seconds: float
) -> tuple[float, float]:
    """Connections/s, and server CPU µs per connection (warm-up included
    in both the CPU and the count)."""
    before = cpu_seconds(server.pid)
    run = subprocess.run(
        [str(generator), str(port), "50", str(seconds), "0.3", HEADERS[header]],
        capture_output=True, text=True, preexec_fn=lambda: pin(BENCH_CPU), timeout=seconds + 20,
    )  # fmt: skip
    spent = cpu_seconds(server.pid) - before
    result = json.loads(run.stdout)
    if run.returncode or result["errors"]:
        raise SystemExit(f"the generator failed: {run.stdout}{run.stderr}")
    return result["connections_per_s"], spent * 1e6 / result["connections"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--header", choices=("v1", "v2"), default="v1", help="the PROXY header's version")
    args = parser.parse_args()
    folder = tempfile.TemporaryDirectory()
    generator = build_generator(Path(folder.name))
    print("| round | without: conn/s, CPU µs/conn | --proxy-protocol: conn/s, CPU µs/conn | CPU ratio |")
    print("|--:|---|---|--:|")
    ratios, extra = [], []
    # Both servers run throughout, on the same core, and the load goes to
    # one, then the other: the host drifts by more than the effect, so
    # each round compares two windows next to each other.
    servers = {proxy: start_server(proxy) for proxy in (False, True)}
    try:
        for round_number in range(1, args.rounds + 1):
            first, second = (False, True) if round_number % 2 else (True, False)
            headers = {False: "none", True: args.header}
            figures = {first: measure(generator, *servers[first], headers[first], args.seconds)}
            figures[second] = measure(generator, *servers[second], headers[second], args.seconds)
            (plain_rate, plain_cpu), (proxy_rate, proxy_cpu) = figures[False], figures[True]
            ratios.append(proxy_cpu / plain_cpu)
            extra.append(proxy_cpu - plain_cpu)
            print(f"| {round_number} | {plain_rate:,.0f}, {plain_cpu:.1f} | "
                  f"{proxy_rate:,.0f}, {proxy_cpu:.1f} | {proxy_cpu / plain_cpu:.2f}x |")  # fmt: skip
    finally:
        for server, _ in servers.values():
            server.send_signal(signal.SIGTERM)
            server.wait(10)
        folder.cleanup()
    median = statistics.median(ratios)
    print(f"\nMedian CPU ratio over {len(ratios)} rounds: {median:.2f}x (target: at most 1.10x)")
    print(f"Median extra CPU per connection: {statistics.median(extra):.1f} µs")
    print(f"\nReproduce: python3 benchmarks/proxy.py {' '.join(sys.argv[1:])}")


if __name__ == "__main__":
    main()
