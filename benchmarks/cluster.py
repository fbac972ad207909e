#!/usr/bin/env python3
"""What a deployment (``servidor --redis``) costs and how it behaves, same run.

    python3 benchmarks/cluster.py [--loadgen PATH] [--seconds 3] [--rounds 3]
                                  [--storms 100] [--only NAME ...]

Starts its own ``redis-server`` (a unix socket in a private folder, no
persistence) and real server processes on loopback ports, and prints:

* ``overhead``: pingpong 50 and connect through one node with ``--redis``
  against the same server without it, alternating, ``--rounds`` times:
  replies/s, server CPU per reply and per connection, connect p50.
* ``listing``: LISTAR of 10,000 clients spread over 4 nodes: the first part
  and the whole, and the worst round trip a bystander on every node saw
  meanwhile (how long any node's loop stalled).
* ``desconexion``: DESCONEXION on one of 4 nodes, 20 times: until a client
  of every node has the shutdown notice.
* ``death``: a node killed with SIGKILL, until LISTAR elsewhere drops it.
* ``heartbeat``: Redis CPU per heartbeat (``INFO commandstats``), 4 nodes
  holding 2,500 clients each.
* ``storms``: ``--storms`` storms of 3,000 connects across 4 nodes against
  ``--max-clients 100``; over-admissions (must be 0).

Everything is bounded in count and time, and every process it starts is
stopped by its PID.  Shared machines are noisy: compare the same run only.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import trio  # noqa: E402, F401  (see compare: the bench runs slower without it)
from machine import BENCH_CPU, SERVER_CPU, accepting, cpu_seconds, free_port, pin  # noqa: E402

from eco_trio.bench.core import BenchConfig, run_bench  # noqa: E402

# --- the processes ---------------------------------------------------------------


class Redis:
    def __init__(self, folder: Path) -> None:
        self.path = folder / "redis.sock"
        self.url = f"unix://{self.path}"
        self.process = subprocess.Popen(
            ["redis-server", "--port", "0", "--unixsocket", str(self.path), "--unixsocketperm", "700",
             "--save", "", "--appendonly", "no", "--dir", str(folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=lambda: pin(BENCH_CPU),
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError):
                if self.command("PING") == "PONG":
                    return
            if time.monotonic() > deadline:
                raise SystemExit("redis-server did not answer PING")
            time.sleep(0.02)

    def command(self, *words: str) -> str:
        """One command; the reply's first line (or its bulk) as text."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.path))
            sock.sendall(
                (f"*{len(words)}\r\n" + "".join(f"${len(w.encode())}\r\n{w}\r\n" for w in words)).encode()
            )
            reader = sock.makefile("rb")
            line = reader.readline().rstrip(b"\r\n")
            if line[:1] == b"$":
                return reader.read(int(line[1:]) + 2)[:-2].decode() if line != b"$-1" else ""
            return line[1:].decode()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


class Node:
    def __init__(self, redis: Redis | None, name: str, *extra: str) -> None:
        self.port = free_port()
        args = [sys.executable, "-m", "eco_trio", "servidor", "--host", "127.0.0.1", "--port", str(self.port),
                "--log-level", "WARNING", "--max-clients", "19000", *extra]  # fmt: skip
        if redis is not None:
            args += ["--redis", redis.url, "--node", name]
        self.process = subprocess.Popen(
            args, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=lambda: pin(SERVER_CPU),
        )  # fmt: skip
        if not accepting(self.port, self.process):
            self.stop()
            raise SystemExit(f"node {name} did not start")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.contextmanager
def started(redis: Redis | None, count: int, *extra: str) -> Iterator[list[Node]]:
    nodes: list[Node] = []
    try:
        for number in range(1, count + 1):
            nodes.append(Node(redis, f"n{number}", *extra))
        yield nodes
    finally:
        for node in nodes:
            node.stop()
        if redis is not None:
            redis.command("FLUSHALL")


class Line:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.sock.makefile("rb")
        self.greeting = self.file.readline()

    def request(self, text: bytes) -> bytes:
        self.sock.sendall(text + b"\n")
        return self.file.readline()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def hold(port: int, count: int) -> list[socket.socket]:
    """``count`` greeted connections to ``port``, held."""
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        socks.append(sock)
    for sock in socks:
        data = b""
        while not data.endswith(b"\n"):
            data += sock.recv(4096)
        if not data.startswith(b"BIENVENIDO"):
            raise SystemExit(f"not admitted: {data!r}")
    return socks


# --- the measurements ----------------------------------------------------------------


def loadgen_run(
    loadgen: str | None, port: int, mode: str, clients: int, seconds: float
) -> tuple[float, float]:
    """(replies or connections per second, p50 µs)."""
    if loadgen:
        out = subprocess.run(
            [loadgen, "--port", str(port), "--greeting-lines", "1", "--mode", mode, "--conns", str(clients),
             "--seconds", str(seconds), "--warmup", "0.5", "--json"],
            capture_output=True, text=True, timeout=seconds + 60, preexec_fn=lambda: pin(BENCH_CPU),
        )  # fmt: skip
        import json

        data = json.loads(out.stdout)
        return float(data.get("replies_per_s", 0.0)), float(data.get("lat_us", {}).get("p50", 0.0))
    result = run_bench(BenchConfig(port=port, mode=mode, clients=clients, seconds=seconds))
    return result.replies_per_s, result.latency_us.get("p50", 0.0)


def overhead(args: argparse.Namespace, redis: Redis) -> None:
    print("\n## overhead: one node with --redis against the same server without it\n")
    print("| round | server | pingpong 50 /s | CPU µs/reply | connect /s | CPU µs/conn | connect p50 µs |")
    print("|---|---|--:|--:|--:|--:|--:|")
    for round_number in range(1, args.rounds + 1):
        for label, with_redis in (("alone", False), ("--redis", True)):
            figures = []
            for mode, clients in (("pingpong", 50), ("connect", 50)):
                with started(redis if with_redis else None, 1) as (node,):
                    before = cpu_seconds(node.process.pid)
                    rate, p50 = loadgen_run(args.loadgen, node.port, mode, clients, args.seconds)
                    spent = cpu_seconds(node.process.pid) - before
                    count = rate * (args.seconds + 0.5)
                    figures += [rate, spent * 1e6 / count if count else 0.0, p50]
            print(f"| {round_number} | {label} | {figures[0]:,.0f} | {figures[1]:.1f} | {figures[3]:,.0f} | "
                  f"{figures[4]:.1f} | {figures[5]:,.0f} |")  # fmt: skip


def listing(args: argparse.Namespace, redis: Redis) -> None:
    print("\n## listing: LISTAR of 10,000 clients over 4 nodes\n")
    with started(redis, 4) as nodes:
        held = [sock for node in nodes for sock in hold(node.port, 2500)]
        time.sleep(1.5)  # a heartbeat, so every row has its counters
        bystanders = [Line(node.port) for node in nodes]
        asker = Line(nodes[0].port)
        selector = selectors.DefaultSelector()
        worst = [0.0] * 4
        for tries in range(4):
            # The last try has bystanders ping every node as the rows come
            # in (how long any loop stalls); the first three time it alone.
            watched = tries == 3
            start = time.perf_counter()
            asker.sock.sendall(b"LISTAR\n")
            count = int(asker.file.readline().split()[1])
            first = 0.0
            for rows in range(1, count + 1):
                asker.file.readline()
                if rows == 1:
                    first = time.perf_counter() - start
                if watched and rows % 250 == 0:
                    for index, bystander in enumerate(bystanders):
                        sent = time.perf_counter()
                        bystander.request(b"ping")
                        worst[index] = max(worst[index], time.perf_counter() - sent)
            whole = time.perf_counter() - start
            if not watched:
                print(f"- try {tries + 1}: {count:,} rows; first part {first * 1000:.1f} ms, "
                      f"whole {whole * 1000:.1f} ms")  # fmt: skip
        worst_text = ", ".join(f"{w * 1000:.1f} ms" for w in worst)
        print(f"- worst bystander round trip per node during a listing: {worst_text}")
        selector.close()
        for line in (*bystanders, asker):
            line.close()
        for sock in held:
            sock.close()


def desconexion(args: argparse.Namespace, redis: Redis) -> None:
    print("\n## desconexion: DESCONEXION on one of 4 nodes, until every node's client has the notice\n")
    times = []
    for _ in range(20):
        with started(redis, 4) as nodes:
            clients = [Line(node.port) for node in nodes]
            start = time.perf_counter()
            clients[0].sock.sendall(b"DESCONEXION\n")
            for client in clients[1:]:
                client.file.readline()  # AVISO: el servidor se está apagando
            times.append(time.perf_counter() - start)
            for client in clients:
                client.close()
    times.sort()
    print(f"- 20 tries: p50 {times[9] * 1000:.1f} ms, p99 (the slowest) {times[-1] * 1000:.1f} ms")


def death(args: argparse.Namespace, redis: Redis) -> None:
    print("\n## death: a node killed with SIGKILL, until LISTAR elsewhere drops its client\n")
    with started(redis, 2) as (first, second):
        watcher = Line(first.port)
        victim = Line(second.port)
        time.sleep(1.2)
        second.process.send_signal(signal.SIGKILL)
        start = time.perf_counter()
        while True:
            header = watcher.request(b"LISTAR")
            count = int(header.split()[1])
            for _ in range(count):
                watcher.file.readline()
            if count == 1:
                break
            if time.perf_counter() - start > 20:
                raise SystemExit("the dead node never left LISTAR")
            time.sleep(0.05)
        print(f"- gone from LISTAR after {time.perf_counter() - start:.2f} s (lease 5 s, heartbeat 1 s)")
        watcher.close()
        victim.close()


def heartbeat(args: argparse.Namespace, redis: Redis) -> None:
    print("\n## heartbeat: Redis CPU per heartbeat, 4 nodes holding 2,500 clients each\n")
    with started(redis, 4) as nodes:
        held = [sock for node in nodes for sock in hold(node.port, 2500)]
        time.sleep(2.5)  # every row's first counters sent
        redis.command("CONFIG", "RESETSTAT")
        time.sleep(5)
        stats = redis.command("INFO", "commandstats")
        match = re.search(r"cmdstat_evalsha:calls=(\d+),usec=(\d+)", stats)
        if match:
            calls, usec = int(match[1]), int(match[2])
            print(f"- {calls} heartbeats in 5 s: {usec / max(calls, 1):.0f} µs of Redis CPU each "
                  f"(idle clients: no counters to send)")  # fmt: skip
        for sock in held:
            sock.close()


def storms(args: argparse.Namespace, redis: Redis) -> None:
    cap, connects = 100, 3000
    print(f"\n## storms: {args.storms} storms of {connects:,} connects over 4 nodes, --max-clients {cap}\n")
    over = worst = 0
    started_at = time.perf_counter()
    with started(redis, 4, "--max-clients", str(cap), "--heartbeat", "0.2", "--lease", "1") as nodes:
        for _ in range(args.storms):
            socks = []
            for index in range(connects):
                sock = socket.socket()
                sock.setblocking(False)
                sock.connect_ex(("127.0.0.1", nodes[index % 4].port))
                socks.append(sock)
            selector = selectors.DefaultSelector()
            for sock in socks:
                selector.register(sock, selectors.EVENT_READ)
            first: dict[socket.socket, bytes] = {}
            deadline = time.monotonic() + 30
            while len(first) < connects and time.monotonic() < deadline:
                for key, _ in selector.select(1):
                    sock = key.fileobj  # type: ignore[assignment]
                    with contextlib.suppress(OSError):
                        first[sock] = sock.recv(4096)
                    selector.unregister(sock)
            greeted = sum(data.startswith(b"BIENVENIDO") for data in first.values())
            worst = max(worst, greeted)
            over += max(0, greeted - cap)
            selector.close()
            for sock in socks:
                sock.close()
            # The closes reach Redis at the next heartbeats: wait for the cap to be free.
            free_by = time.monotonic() + 10
            while time.monotonic() < free_by and redis.command("ZCARD", "eco_trio:order") != "0":
                time.sleep(0.05)
    print(f"- most greeted at once: {worst} (cap {cap}); over-admissions: {over}; "
          f"{time.perf_counter() - started_at:.0f} s")  # fmt: skip


MEASUREMENTS = {
    "overhead": overhead,
    "listing": listing,
    "desconexion": desconexion,
    "death": death,
    "heartbeat": heartbeat,
    "storms": storms,
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--loadgen", help="the C load generator (../shared/loadgen) for the overhead figures")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--storms", type=int, default=100)
    parser.add_argument("--only", nargs="*", choices=list(MEASUREMENTS), default=list(MEASUREMENTS))
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed (Debian package redis-server)")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    with tempfile.TemporaryDirectory() as folder:
        os.chmod(folder, 0o700)
        redis = Redis(Path(folder))
        try:
            for name in args.only:
                MEASUREMENTS[name](args, redis)
        finally:
            redis.stop()
    print(f"\nReproduce: python3 benchmarks/cluster.py {' '.join(sys.argv[1:])}")


if __name__ == "__main__":
    main()
