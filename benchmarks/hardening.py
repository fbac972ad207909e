"""Hardening figures: server memory under idle and hostile load, and how long
DESCONEXION takes when some clients never read.

    python benchmarks/hardening.py [--clients 1000] [--pushers 100] [--non-readers 100]

Starts ``python -m eco_trio servidor`` on a free loopback port, measures its
resident memory from /proc (Linux), and prints one line per figure.  Every
loop is bounded in count and time; the server is stopped by its PID.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import trio

MIB = 1024 * 1024


class ServerUnderTest:
    def __init__(self, *options: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "eco_trio", "servidor", "--host", "127.0.0.1", "--port", "0",
             "--log-level", "INFO", "--max-clients", "100000", *options],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.port = 0
        ready = threading.Event()

        def drain() -> None:
            assert self.process.stderr is not None
            for line in self.process.stderr:
                if match := re.search(r"listening on 127\.0\.0\.1:(\d+)", line):
                    self.port = int(match[1])
                    ready.set()

        threading.Thread(target=drain, daemon=True).start()
        if not ready.wait(10):
            self.stop()
            raise SystemExit("server did not start")

    def rss(self) -> tuple[float, float]:
        """(current, peak) resident memory in MiB."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        fields = dict(re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", status, re.M))
        return int(fields["VmRSS"]) / 1024, int(fields["VmHWM"]) / 1024

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def connect_many(port: int, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        socks.append(sock)
    for sock in socks:  # every one greeted, so every one registered
        assert sock.recv(4096).startswith(b"BIENVENIDO")
    return socks


def idle_memory(clients: int) -> None:
    server = ServerUnderTest()
    try:
        before, _ = server.rss()
        socks = connect_many(server.port, clients)
        time.sleep(0.5)
        after, _ = server.rss()
        per = (after - before) * 1024 / clients
        print(
            f"idle: {clients} connections: RSS {before:.1f} -> {after:.1f} MiB ({per:.1f} KiB per connection)"
        )
        for sock in socks:
            sock.close()
    finally:
        server.stop()


def pushing_memory(pushers: int, push_bytes: int) -> None:
    server = ServerUnderTest()
    try:
        before, _ = server.rss()

        async def push(port: int) -> None:
            with trio.move_on_after(60):
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                async with stream:
                    chunk = b"p" * 65536
                    try:
                        for _ in range(push_bytes // len(chunk)):
                            await stream.send_all(chunk)
                        while await stream.receive_some():
                            pass
                    except trio.BrokenResourceError:
                        pass  # cut off at the line limit, as designed

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                for _ in range(pushers):
                    nursery.start_soon(push, server.port)

        start = time.monotonic()
        trio.run(main)
        after, peak = server.rss()
        print(
            f"push: {pushers} clients x {push_bytes // MIB} MiB without a newline: "
            f"RSS {before:.1f} MiB before, peak {peak:.1f} MiB, {after:.1f} MiB after "
            f"({time.monotonic() - start:.2f} s)"
        )
    finally:
        server.stop()


def shutdown_time(clients: int, non_readers: int, *, flood: bool) -> None:
    server = ServerUnderTest("--grace", "2")
    try:
        socks = connect_many(server.port, clients)
        stuck = socks[:non_readers]
        if flood:  # make the server block writing to them
            line = b"f" * 65535 + b"\n"
            for sock in stuck:
                sock.setblocking(False)
                pending = memoryview(line)
                for _ in range(1000):  # until the server stops reading this one
                    try:
                        pending = pending[sock.send(pending) :] or memoryview(line)
                    except BlockingIOError:
                        time.sleep(0.02)
                        try:
                            pending = pending[sock.send(pending) :] or memoryview(line)
                        except BlockingIOError:
                            break
        requester = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        requester.recv(4096)
        start = time.monotonic()
        requester.sendall(b"DESCONEXION\n")
        status = server.process.wait(30)
        elapsed = time.monotonic() - start
        readers = socks[non_readers:]
        noticed = 0
        for sock in readers:
            sock.settimeout(1)
            with contextlib.suppress(OSError):
                noticed += b"AVISO" in sock.recv(4096)
        kind = "flooding and never reading" if flood else "never reading"
        print(
            f"DESCONEXION: {clients} clients, {non_readers} {kind}: server exited {status} after "
            f"{elapsed:.2f} s; {noticed}/{len(readers)} readers got the notice"
        )
        for sock in [*socks, requester]:
            sock.close()
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--pushers", type=int, default=100)
    parser.add_argument("--push-mib", type=int, default=1)
    parser.add_argument("--non-readers", type=int, default=100)
    args = parser.parse_args()
    idle_memory(args.clients)
    pushing_memory(args.pushers, args.push_mib * MIB)
    shutdown_time(args.clients, args.non_readers, flood=False)
    shutdown_time(args.clients, args.non_readers, flood=True)


if __name__ == "__main__":
    main()
