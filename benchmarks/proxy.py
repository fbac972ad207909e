#!/usr/bin/env python3
"""What ``--proxy-protocol`` costs a connection, same run.

    python3 benchmarks/proxy.py [--seconds 3] [--rounds 3]

The built-in load generator's connect mode (connect, greeting, one line,
close), against the same server without and with ``--proxy-protocol``; with
it, every connection starts with a PROXY v1 header, as from a load balancer
on loopback (trusted by default).  Prints connections/s and the server's
CPU per connection.  Server on CPU 1, generator on CPU 0.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import trio  # noqa: E402, F401  (see compare: the bench runs slower without it)

from eco_trio.bench.core import BenchConfig, run_bench  # noqa: E402


def pin(cpu: int) -> None:
    if (os.cpu_count() or 1) > cpu and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(proxy: bool, seconds: float) -> tuple[float, float]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = [sys.executable, "-m", "eco_trio", "servidor", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "WARNING", "--max-clients", "19000"]  # fmt: skip
    if proxy:
        args.append("--proxy-protocol")
    server = subprocess.Popen(args, cwd=ROOT, stderr=subprocess.DEVNULL, preexec_fn=lambda: pin(1))
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("the server did not start") from None
                time.sleep(0.05)
        pin(0)
        before = cpu_seconds(server.pid)
        result = run_bench(
            BenchConfig(port=port, mode="connect", clients=50, seconds=seconds, proxy_header=proxy)
        )
        spent = cpu_seconds(server.pid) - before
        if result.errors or result.mismatches:
            raise SystemExit(f"errors: {result.first_error}")
        count = result.replies_per_s * (seconds + 0.5)
        return result.replies_per_s, spent * 1e6 / count
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print("| round | without: conn/s, CPU µs/conn | --proxy-protocol: conn/s, CPU µs/conn | CPU ratio |")
    print("|--:|---|---|--:|")
    for round_number in range(1, args.rounds + 1):
        plain_rate, plain_cpu = measure(False, args.seconds)
        proxy_rate, proxy_cpu = measure(True, args.seconds)
        print(f"| {round_number} | {plain_rate:,.0f}, {plain_cpu:.1f} | {proxy_rate:,.0f}, {proxy_cpu:.1f} | "
              f"{proxy_cpu / plain_cpu:.2f}x |")  # fmt: skip
    print(f"\nReproduce: python3 benchmarks/proxy.py {' '.join(sys.argv[1:])}")


if __name__ == "__main__":
    main()
