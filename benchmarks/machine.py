"""What the benchmarks here need of the machine: a process pinned to one
CPU, a free loopback port, a server that has started accepting, a process's
CPU time so far, a C program built.

Servers run on :data:`SERVER_CPU` and load generators on :data:`BENCH_CPU`,
so the two do not compete (where the machine has both).  CPU time comes
from ``/proc`` (Linux).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SERVER_CPU, BENCH_CPU = 1, 0
#: The system C compiler (None: none), for the C programs here (epoll: Linux).
C_COMPILER = (
    (shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")) if sys.platform == "linux" else None
)


def build_c(source: Path, program: Path) -> Path:
    """``program``, built from ``source`` with :data:`C_COMPILER` (which the
    caller checked is there)."""
    assert C_COMPILER is not None
    subprocess.run([C_COMPILER, "-O2", "-o", str(program), str(source)], check=True, timeout=120)
    return program


def eco_trio_from(checkout: Path | str) -> list[str]:
    """Python's arguments for ``-m eco_trio`` from another checkout (a git
    worktree of main before a change), to measure both in one run."""
    run = f"import runpy, sys; sys.path.insert(0, {str(checkout)!r}); "
    return ["-c", run + "runpy.run_module('eco_trio', run_name='__main__')"]


def pin(cpu: int) -> None:
    """Run on ``cpu`` alone (when the machine has it)."""
    if (os.cpu_count() or 1) > cpu and hasattr(os, "sched_setaffinity"):  # Linux
        os.sched_setaffinity(0, {cpu})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def accepting(port: int, process: subprocess.Popen[Any], seconds: float = 10) -> bool:
    """Whether something accepts connections on loopback ``port`` before
    ``process`` (the server that should) exits, within ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                return False
            time.sleep(0.05)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
