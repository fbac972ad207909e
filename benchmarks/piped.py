"""Piped input through the client, next to ``nc -N`` on the same server.

    python benchmarks/piped.py [--lines 100000]

Starts ``python -m eco_trio servidor`` on a free loopback port, writes a
file of numbered lines, and times ``python -m eco_trio cliente < file`` and
``nc -N 127.0.0.1 PORT < file`` (when nc is installed), each checked for the
right number of replies.  Bounded: every command has a timeout, and the
server is stopped by its PID.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hardening import ServerUnderTest


def timed(command: list[str], source: Path) -> tuple[float, int]:
    with source.open("rb") as stdin:
        start = time.perf_counter()
        result = subprocess.run(command, stdin=stdin, capture_output=True, timeout=120)
        elapsed = time.perf_counter() - start
    return elapsed, result.stdout.count(b"\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lines", type=int, default=100_000)
    args = parser.parse_args()
    server = ServerUnderTest()
    try:
        with tempfile.TemporaryDirectory() as folder:
            source = Path(folder) / "lines.txt"
            source.write_bytes(b"".join(b"linea numero %d\n" % n for n in range(args.lines)))
            port = str(server.port)
            runs = {
                "eco_trio cliente": [
                    sys.executable,
                    "-m",
                    "eco_trio",
                    "cliente",
                    "-H",
                    "127.0.0.1",
                    "-p",
                    port,
                ],
            }
            if shutil.which("nc"):
                runs["nc -N"] = ["nc", "-N", "127.0.0.1", port]
            for name, command in runs.items():
                elapsed, lines = timed(command, source)
                print(
                    f"{name:18} {args.lines:,} lines in {elapsed:.2f} s ({lines:,} lines back, with greeting)"
                )
            if "nc -N" not in runs:
                print("nc is not installed: no comparison")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
