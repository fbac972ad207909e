"""What the benchmarks here need of the machine: a process pinned to one
CPU, a free loopback port, a process's CPU time so far.

Servers run on :data:`SERVER_CPU` and load generators on :data:`BENCH_CPU`,
so the two do not compete (where the machine has both).  CPU time comes
from ``/proc`` (Linux).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

SERVER_CPU, BENCH_CPU = 1, 0


def pin(cpu: int) -> None:
    """Run on ``cpu`` alone (when the machine has it)."""
    if (os.cpu_count() or 1) > cpu and hasattr(os, "sched_setaffinity"):  # Linux
        os.sched_setaffinity(0, {cpu})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
