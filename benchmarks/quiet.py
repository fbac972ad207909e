#!/usr/bin/env python3
"""What a quiet client costs the server: one line, its reply, then a pause.

    python3 benchmarks/quiet.py [--gap-ms 0.5] [--lines 4000] [--baseline DIR]

A busy server never sleeps; a quiet one sleeps between every line, and what
it does around each sleep (the epoll leader's spin before it, the wake-up
after it) is most of what a line costs.  Prints the server's CPU per line
(server on CPU 1, this client on CPU 0).  ``--baseline`` also runs eco_trio
from another checkout (a git worktree of main before a change), alternating
with this one.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import BENCH_CPU, SERVER_CPU, accepting, cpu_seconds, eco_trio_from, free_port, pin  # noqa: E402


def measure(root: Path, gap: float, lines: int) -> float:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, *eco_trio_from(root), "servidor", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "WARNING"],
        stderr=subprocess.DEVNULL, preexec_fn=lambda: pin(SERVER_CPU),
    )  # fmt: skip
    try:
        if not accepting(port, server):
            raise SystemExit("the server did not start")
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        with client, client.makefile("rb") as replies:
            replies.readline()  # the greeting
            before = cpu_seconds(server.pid)
            for _ in range(lines):
                client.sendall(b"hola\n")
                if replies.readline() != b"HOLA\n":
                    raise SystemExit("a wrong reply")
                time.sleep(gap)
            spent = cpu_seconds(server.pid) - before
        return spent * 1e6 / lines
    finally:
        server.terminate()  # our own child, by its handle
        server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gap-ms", type=float, default=0.5)
    parser.add_argument("--lines", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--baseline", type=Path, help="another checkout of eco_trio, run alternately")
    args = parser.parse_args()
    pin(BENCH_CPU)
    roots = [("this checkout", ROOT)] + ([("baseline", args.baseline)] if args.baseline else [])
    for round_number in range(1, args.rounds + 1):
        for name, root in roots:
            per_line = measure(root, args.gap_ms / 1000, args.lines)
            print(f"round {round_number}, {name}: {per_line:.1f} µs of server CPU per line "
                  f"({args.gap_ms:g} ms between lines)")  # fmt: skip
    print(f"\nReproduce: python3 benchmarks/quiet.py {' '.join(sys.argv[1:])}")


if __name__ == "__main__":
    main()
