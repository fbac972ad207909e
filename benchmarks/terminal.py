"""The interactive client on a real terminal (tmux), many times over: how
often the screen tears.

    python benchmarks/terminal.py [--starts 200] [--pastes 50]

Each start opens the client in a fresh tmux session and reads the screen
once the prompt is up: the greeting must be the first line and the prompt,
alone, the second.  Each paste puts five lines into the prompt at once and
reads the screen once the fifth reply is in: every line must be either a
prompt with one of the pasted lines, or one reply, in order, with the empty
prompt last.  Bounded: every wait has a deadline, and each tmux server (on a
socket of its own) and the eco_trio server are stopped by this script.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hardening import ServerUnderTest

WORDS = ["uno", "dos", "tres", "cuatro", "cinco"]


def tmux(socket: str, *args: str) -> str:
    return subprocess.run(["tmux", "-S", socket, *args], capture_output=True, text=True, timeout=10).stdout


def screen(socket: str) -> list[str]:
    lines = [line.rstrip() for line in tmux(socket, "capture-pane", "-p").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def wait(socket: str, done: object, deadline: float = 10.0) -> list[str]:
    until = time.monotonic() + deadline
    while True:
        lines = screen(socket)
        if done(lines) or time.monotonic() > until:  # type: ignore[operator]
            return lines
        time.sleep(0.02)


def session(folder: str, port: int, n: int) -> str:
    socket = f"{folder}/tmux-{n}"
    command = (
        f"ECO_TRIO_HISTORY={folder}/history {shlex.quote(sys.executable)} -m eco_trio cliente "
        f"-H 127.0.0.1 -p {port}"
    )
    tmux(socket, "new-session", "-d", "-x", "250", "-y", "40", command)
    return socket


def start_is_whole(lines: list[str]) -> bool:
    return len(lines) == 2 and lines[0].startswith("BIENVENIDO") and lines[1] == "eco>"


def paste_is_whole(lines: list[str]) -> bool:
    body = lines[1:]
    prompts = [line.removeprefix("eco> ") for line in body if line.startswith("eco> ")]
    replies = [line for line in body if not line.startswith("eco>")]
    return prompts == WORDS and replies == [w.upper() for w in WORDS] and body[-1] == "eco>"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--starts", type=int, default=200)
    parser.add_argument("--pastes", type=int, default=50)
    args = parser.parse_args()
    server = ServerUnderTest()
    torn_starts: list[list[str]] = []
    torn_pastes: list[list[str]] = []
    try:
        with tempfile.TemporaryDirectory() as folder:
            for n in range(args.starts):
                socket = session(folder, server.port, n)
                lines = wait(socket, lambda s: s and s[-1] == "eco>")
                if not start_is_whole(lines):
                    torn_starts.append(lines)
                tmux(socket, "kill-server")
                if n % 50 == 49:
                    print(f"  {n + 1} starts, {len(torn_starts)} torn", file=sys.stderr)
            for n in range(args.pastes):
                socket = session(folder, server.port, args.starts + n)
                wait(socket, lambda s: s and s[-1] == "eco>")
                tmux(socket, "set-buffer", "".join(w + "\n" for w in WORDS))
                tmux(socket, "paste-buffer")
                lines = wait(socket, lambda s: "CINCO" in s and s[-1] == "eco>")
                if not paste_is_whole(lines):
                    torn_pastes.append(lines)
                tmux(socket, "kill-server")
    finally:
        server.stop()
    print(f"starts: {args.starts}, torn: {len(torn_starts)}")
    print(f"five-line pastes: {args.pastes}, torn: {len(torn_pastes)}")
    for lines in (torn_starts + torn_pastes)[:3]:
        print("a torn screen:\n  " + "\n  ".join(lines))


if __name__ == "__main__":
    main()
