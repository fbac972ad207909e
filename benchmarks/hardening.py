"""Hardening figures: server memory under idle and hostile load, what one
client's flood of costly commands does to everyone else, connection storms,
and how long DESCONEXION takes when some clients never read.

    python benchmarks/hardening.py [--clients 1000] [--seconds 10] [--only NAME ...]

Starts ``python -m eco_trio servidor`` on a free loopback port, measures its
resident memory from /proc (Linux), and prints one line per figure.  Attackers
run in processes of their own, so the bystander whose latency is measured
does not share their interpreter.  Every loop is bounded in count and time;
every server is stopped by its PID.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import re
import selectors
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import trio

MIB = 1024 * 1024


class ServerUnderTest:
    def __init__(self, *options: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "eco_trio", "servidor", "--host", "127.0.0.1", "--port", "0",
             "--log-level", "INFO", "--max-clients", "19000", *options],
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

    def reset_peak(self) -> None:
        """Start the peak (VmHWM) afresh from the current RSS (Linux 4.0+)."""
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

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


# --- one client's flood against everyone else --------------------------------------


def _attacker(port: int, line: bytes, reading: bool, seconds: float) -> None:
    """Pipeline ``line`` as fast as the server takes it for ``seconds``,
    reading every reply as it comes (``reading``) or none at all."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.recv(4096)  # the greeting
    sock.setblocking(False)
    flood = line * (65536 // len(line))
    pending = memoryview(flood)
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_WRITE | (selectors.EVENT_READ if reading else 0))
    deadline = time.monotonic() + seconds
    with contextlib.suppress(OSError):
        while time.monotonic() < deadline:
            for _, events in selector.select(0.05):
                if events & selectors.EVENT_READ and not sock.recv(1 << 20):
                    return
                if events & selectors.EVENT_WRITE:
                    with contextlib.suppress(BlockingIOError):
                        pending = pending[sock.send(pending) :] or memoryview(flood)
    sock.close()


def _round_trips(port: int, seconds: float, gap: float) -> list[float]:
    """A well-behaved client: one line, wait for its reply, a short gap, again."""
    latencies = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        stream = sock.makefile("rb")
        stream.readline()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            start = time.perf_counter()
            sock.sendall(b"sigo aqui\n")
            assert stream.readline() == b"SIGO AQUI\n"
            latencies.append(time.perf_counter() - start)
            time.sleep(gap)
    return latencies


def _greeting_waits(port: int, seconds: float, gap: float) -> list[float]:
    """New clients, one after another: how long each waits for its greeting."""
    waits = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        start = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            assert sock.makefile("rb").readline().startswith(b"BIENVENIDO")
            waits.append(time.perf_counter() - start)
        time.sleep(gap)
    return waits


def _in_thread(target: Callable[[], list[float]]) -> Callable[[], list[float]]:
    result: list[float] = []
    thread = threading.Thread(target=lambda: result.extend(target()))
    thread.start()

    def join() -> list[float]:
        thread.join()
        return result

    return join


def flood_attack(clients: int, line: bytes, attackers: int, *, reading: bool, seconds: float) -> None:
    server = ServerUnderTest()
    try:
        socks = connect_many(server.port, clients)
        time.sleep(0.5)
        before, _ = server.rss()
        server.reset_peak()
        processes = [
            multiprocessing.Process(target=_attacker, args=(server.port, line, reading, seconds))
            for _ in range(attackers)
        ]
        for process in processes:
            process.start()
        time.sleep(0.5)  # the attack is under way
        trips = _in_thread(lambda: _round_trips(server.port, seconds - 1, 0.01))
        greetings = _in_thread(lambda: _greeting_waits(server.port, seconds - 1, 0.25))
        latencies, waits = sorted(trips()), greetings()
        _, peak = server.rss()
        for process in processes:
            process.join(seconds + 10)
        kind = "reading its replies" if reading else "never reading"
        word = line.decode(errors="replace").strip() or repr(line)
        p99 = latencies[int(len(latencies) * 0.99) - 1]
        print(
            f"flood: {clients} idle clients, {attackers} x {word!r} pipelined, {kind}, {seconds:g} s: "
            f"bystander round trip p50 {statistics.median(latencies) * 1e3:.2f} ms, "
            f"p99 {p99 * 1e3:.2f} ms, max {latencies[-1] * 1e3:.2f} ms ({len(latencies)} trips); "
            f"new client greeted within {max(waits) * 1e3:.1f} ms (max of {len(waits)}); "
            f"RSS {before:.1f} MiB, peak +{peak - before:.1f} MiB"
        )
        for sock in socks:
            sock.close()
    finally:
        server.stop()


# --- memory after a batch, and the worst a client can do ----------------------------


def batch_memory(clients: int) -> None:
    """Each client sends one 64 KiB batch and reads its reply, one client
    after another; then all sit idle.  What stays is what an idle
    connection keeps of its last batch."""
    server = ServerUnderTest()
    try:
        socks = connect_many(server.port, clients)
        time.sleep(0.5)
        idle, _ = server.rss()
        batch = (b"x" * 1023 + b"\n") * 64
        for sock in socks:
            sock.sendall(batch)
            received = 0
            while received < len(batch):
                received += len(sock.recv(1 << 20))
        time.sleep(0.5)
        after, _ = server.rss()
        per = (after - idle) * 1024 / clients
        print(
            f"after a batch: {clients} clients each answered one 64 KiB batch, then idle: "
            f"RSS {idle:.1f} -> {after:.1f} MiB ({per:.1f} KiB each above the idle baseline)"
        )
        for sock in socks:
            sock.close()
    finally:
        server.stop()


def worst_case(attackers: int) -> None:
    """Every slot taken by a client doing the most expensive thing it can: a
    fragment just under --max-line of U+0390 (its uppercase is three times
    longer), then the newline that ends it in a read full of AYUDA lines
    that ends in a new fragment, and never reading, with a tiny receive
    window so the server's output stays with the server."""
    server = ServerUnderTest("--max-clients", str(attackers))
    try:
        before, _ = server.rss()
        server.reset_peak()
        socks = []
        fragment = "\u0390".encode() * 32767  # 65,534 bytes; uppercase: 196,602
        rest = b"\n" + b"AYUDA\n" * 9000
        rest += b"z" * (65536 - len(rest))
        for _ in range(attackers):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", server.port))
            sock.setblocking(False)
            socks.append(sock)
        for sock in socks:
            with contextlib.suppress(BlockingIOError):
                sock.send(fragment)
        time.sleep(0.05)  # less than the 0.1 s pause: the fragment stays a fragment
        for sock in socks:
            with contextlib.suppress(BlockingIOError):
                sock.send(rest)
        time.sleep(2)
        after, peak = server.rss()
        per = (peak - before) * 1024 / attackers
        held = (after - before) * 1024 / attackers
        print(
            f"worst case: {attackers} clients (all of --max-clients), each a 64 KiB line that triples, "
            f"a read of AYUDA lines and a fragment behind it, never reading: RSS {before:.1f} MiB before, "
            f"peak {peak:.1f} MiB (+{per:.0f} KiB per client), {after:.1f} MiB held after 2 s "
            f"(+{held:.0f} KiB per client); docs/PROTOCOL.md's bound: 460 KiB per client"
        )
        for sock in socks:
            sock.close()
    finally:
        server.stop()


# --- connection storms ---------------------------------------------------------------


def storm(connects: int, max_clients: int) -> None:
    server = ServerUnderTest("--max-clients", str(max_clients))
    try:
        baseline = server.fds()
        peak = baseline
        sampling = True

        def sample() -> None:
            nonlocal peak
            while sampling:
                with contextlib.suppress(OSError):
                    peak = max(peak, server.fds())

        sampler = threading.Thread(target=sample)
        sampler.start()
        start = time.monotonic()
        socks = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(connects)]
        elapsed = time.monotonic() - start
        firsts = []
        for sock in socks:
            firsts.append(sock.makefile("rb").readline())
        sampling = False
        sampler.join()
        admitted = [n for n, first in enumerate(firsts) if first.startswith(b"BIENVENIDO")]
        refused = sum(first.startswith(b"ERROR") for first in firsts)
        sock = socks[admitted[0]]
        sock.sendall(b"LISTAR\n")
        stream = sock.makefile("rb")
        count = int(stream.readline().split()[1])
        shown = [stream.readline().split()[0] for _ in range(count)]
        expected = [f"{h}:{p}".encode() for h, p in (socks[n].getsockname()[:2] for n in admitted)]
        print(
            f"storm: {connects} connects in {elapsed:.2f} s against --max-clients {max_clients}: "
            f"admitted {admitted[:max_clients]}{'...' if len(admitted) > max_clients else ''} "
            f"(the first {max_clients} by connect order: {admitted == list(range(max_clients))}), "
            f"{refused} refused with ERROR; LISTAR in connect order: {shown == expected}; "
            f"server fds peak {peak} (baseline {baseline})"
        )
        for sock in socks:
            sock.close()
    finally:
        server.stop()


FIGURES = ["idle", "batch", "push", "flood", "worst", "storm", "shutdown"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each flood attack")
    parser.add_argument("--pushers", type=int, default=100)
    parser.add_argument("--push-mib", type=int, default=1)
    parser.add_argument("--non-readers", type=int, default=100)
    parser.add_argument(
        "--worst", type=int, default=1000, help="attackers in the worst case (= --max-clients)"
    )
    parser.add_argument("--only", nargs="*", choices=FIGURES, default=FIGURES)
    args = parser.parse_args()
    if "idle" in args.only:
        idle_memory(args.clients)
    if "batch" in args.only:
        batch_memory(args.clients)
    if "push" in args.only:
        pushing_memory(args.pushers, args.push_mib * MIB)
    if "flood" in args.only:
        for line, attackers, reading in [
            (b"LISTAR\n", 1, False),
            (b"LISTAR\n", 1, True),
            (b"LISTAR\n", 4, True),
            (b"AYUDA\n", 4, True),
            (b"\xfe\n", 4, True),
        ]:
            flood_attack(args.clients, line, attackers, reading=reading, seconds=args.seconds)
    if "worst" in args.only:
        worst_case(args.worst)
    if "storm" in args.only:
        storm(3000, 10)
    if "shutdown" in args.only:
        shutdown_time(args.clients, args.non_readers, flood=False)
        shutdown_time(args.clients, args.non_readers, flood=True)


if __name__ == "__main__":
    main()
