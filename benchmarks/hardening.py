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
    def __init__(self, *options: str, keep_reading: bool = True) -> None:
        """``keep_reading``: its log (False: stop once it listens, as
        a pipe nobody reads)."""
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
                if os.environ.get("HARDENING_LOG"):
                    with open(os.environ["HARDENING_LOG"], "a") as log:
                        log.write(line)
                if not ready.is_set() and (match := re.search(r"listening on 127\.0\.0\.1:(\d+)", line)):
                    self.port = int(match[1])  # the first: --port's
                    ready.set()
                    if not keep_reading:
                        return

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

    def threads(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"^Threads:\s+(\d+)", status, re.M)[1])  # type: ignore[index]

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _tiny_window_clients(port: int, count: int) -> list[socket.socket]:
    """Non-blocking clients with a 4 KiB receive window: what the server
    sends them and they never read stays with the server."""
    socks = []
    for _ in range(count):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.setblocking(False)
        socks.append(sock)
    return socks


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
            reply = stream.readline()
            assert reply == b"SIGO AQUI\n", reply
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
        print(
            f"flood: {clients} idle clients, {attackers} x {word!r} pipelined, {kind}, {seconds:g} s: "
            f"bystander round trip {_trips_summary(latencies)}; "
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
        fragment = "\u0390".encode() * 32767  # 65,534 bytes; uppercase: 196,602
        rest = b"\n" + b"AYUDA\n" * 9000
        rest += b"z" * (65536 - len(rest))
        socks = _tiny_window_clients(server.port, attackers)
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
            f"(+{held:.0f} KiB per client); docs/PROTOCOL.md's bound: 461 KiB per client"
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


# --- issue 18: the log, TLS handshakes, telnet, metrics, trickle, per source --------


def _trips_summary(latencies: list[float]) -> str:
    if not latencies:
        return "no reply at all (refused or closed)"
    latencies = sorted(latencies)
    p99 = latencies[max(0, int(len(latencies) * 0.99) - 1)]
    return (
        f"p50 {statistics.median(latencies) * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms, "
        f"max {latencies[-1] * 1e3:.2f} ms ({len(latencies)} trips)"
    )


def _tolerant(measure: Callable[..., list[float]], *args: object) -> list[float]:
    """``measure(*args)``, or [] when the server refused or closed (the
    attack worked: the summary says so rather than a traceback)."""
    try:
        return measure(*args)
    except (AssertionError, OSError):
        return []


def _estado(port: int) -> dict[str, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock, sock.makefile("rb") as stream:
        stream.readline()
        sock.sendall(b"ESTADO\n")
        count = int(stream.readline().split()[1])
        pairs = (stream.readline().decode().rstrip("\n").split(" ", 1) for _ in range(count))
        return {key: value for key, value in pairs}


def blocked_log(seconds: float) -> None:
    """stderr a pipe nobody reads: connect/close cycles and HTTP requests
    (a WARNING each) fill it; the bystander, ESTADO and SIGTERM must not care."""
    server = ServerUnderTest("--grace", "1", keep_reading=False)
    try:
        before = _round_trips(server.port, 1, 0.01)
        start = time.monotonic()
        for _ in range(3000):
            socket.create_connection(("127.0.0.1", server.port), timeout=10).close()
        for _ in range(500):
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                with contextlib.suppress(OSError):
                    sock.recv(4096)
        cycles = time.monotonic() - start
        during = _round_trips(server.port, seconds, 0.01)
        dropped = _estado(server.port).get("log_lines_dropped", "?")
        start = time.monotonic()
        server.process.terminate()
        status = server.process.wait(30)
        print(
            f"blocked log: stderr never read; 3000 connect/close cycles and 500 HTTP requests in "
            f"{cycles:.1f} s; bystander before {_trips_summary(before)}; after {_trips_summary(during)}; "
            f"{dropped} log lines dropped (ESTADO); "
            f"SIGTERM: exit {status} after {time.monotonic() - start:.2f} s"
        )
    finally:
        server.stop()


def _pki(folder: str) -> dict[str, str]:
    import trustme  # the test extra: pip install -e .[test]

    ca = trustme.CA()
    files = {"ca": f"{folder}/ca.pem"}
    ca.cert_pem.write_to_path(files["ca"])
    for name, identity in (("server", "localhost"), ("client", "bueno.example")):
        issued = ca.issue_cert(identity, "127.0.0.1")
        issued.cert_chain_pems[0].write_to_path(f"{folder}/{name}.crt")
        issued.private_key_pem.write_to_path(f"{folder}/{name}.key")
        files[name] = f"{folder}/{name}"
    return files


def _client_hello() -> bytes:
    import ssl

    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def _silent_opener(port: int, source: str, rate: float, seconds: float) -> None:
    """Open connections from ``source`` at ``rate`` a second and say nothing."""
    held: list[socket.socket] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            sock = socket.socket()
            sock.bind((source, 0))
            sock.settimeout(1)
            sock.connect(("127.0.0.1", port))
            held.append(sock)
        if len(held) > 2000:
            held.pop(0).close()
        time.sleep(1 / rate)
    for sock in held:
        sock.close()


def _hello_replayer(port: int, source: str, seconds: float) -> None:
    """Send a ClientHello, take the ServerHello, close; again, as fast as it goes."""
    hello = _client_hello()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.socket() as sock:
            sock.bind((source, 0))
            sock.settimeout(1)
            sock.connect(("127.0.0.1", port))
            sock.sendall(hello)
            sock.recv(65536)


def _mtls_client_tries(port: int, files: dict[str, str], tries: int, gap: float) -> tuple[int, list[float]]:
    import ssl

    context = ssl.create_default_context(cafile=files["ca"])
    context.load_cert_chain(files["client"] + ".crt", files["client"] + ".key")
    served, times = 0, []
    for _ in range(tries):
        start = time.perf_counter()
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as sock,
            sock.makefile("rb") as stream,
        ):
            if stream.readline().startswith(b"BIENVENIDO"):
                sock.sendall(b"hola\n")
                if stream.readline() == b"HOLA\n":
                    served += 1
                    times.append(time.perf_counter() - start)
        time.sleep(gap)
    return served, times


def handshake_flood(seconds: float) -> None:
    """A mutual-TLS port under a flood of silent connections (136/s, as in
    the issue) and of replayed ClientHellos, from other addresses; a valid
    mutual-TLS client and a plain-port bystander beside them."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        files = _pki(folder)
        plain = _free_port()
        server = ServerUnderTest(
            "--tls-cert", files["server"] + ".crt", "--tls-key", files["server"] + ".key",
            "--tls-ca", files["ca"], "--plain-port", str(plain), "--max-clients", "50",
        )  # fmt: skip
        try:
            quiet_served, quiet_times = _mtls_client_tries(server.port, files, 10, 0.1)
            quiet_trips = _round_trips(plain, 1, 0.01)
            attackers = [
                multiprocessing.Process(target=_silent_opener, args=(server.port, "127.0.0.2", 136, seconds)),
                multiprocessing.Process(target=_hello_replayer, args=(server.port, "127.0.0.3", seconds)),
            ]
            for process in attackers:
                process.start()
            time.sleep(1)
            cpu_before, wall = server.cpu_seconds(), time.monotonic()
            trips = _in_thread(lambda: _tolerant(_round_trips, plain, seconds - 2, 0.01))
            served, times = _mtls_client_tries(server.port, files, 10, (seconds - 2) / 10)
            latencies = trips()
            cpu = (server.cpu_seconds() - cpu_before) / (time.monotonic() - wall)
            for process in attackers:
                process.join(seconds + 10)
            status = _estado(plain)
            print(
                f"handshake flood: 136 silent connections/s and ClientHellos replayed as fast as they go, "
                f"{seconds:g} s: valid mutual-TLS client served {served}/10 (quiet: {quiet_served}/10), "
                f"slowest {max(times or [0]) * 1e3:.0f} ms (quiet {max(quiet_times or [0]) * 1e3:.0f} ms); "
                f"plain-port bystander quiet {_trips_summary(quiet_trips)}, "
                f"under attack {_trips_summary(latencies)}; server CPU {cpu * 100:.0f} %; "
                f"handshakes dropped {status.get('tls_handshakes_dropped', '?')}"
            )
        finally:
            server.stop()


def telnet_memory(attackers: int) -> None:
    """Clients streaming IAC AYT and never reading: what each holds."""
    server = ServerUnderTest("--max-clients", str(attackers + 10))
    try:
        before, _ = server.rss()
        server.reset_peak()
        socks = _tiny_window_clients(server.port, attackers)
        flood = b"\xff\xf6" * 32768
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for sock in socks:
                with contextlib.suppress(BlockingIOError, OSError):
                    sock.send(flood)
            time.sleep(0.05)
        after, peak = server.rss()
        print(
            f"telnet AYT: {attackers} clients streaming IAC AYT, never reading, 5 s: RSS {before:.1f} MiB "
            f"before, peak +{(peak - before) * 1024 / attackers:.0f} KiB per client, "
            f"+{(after - before) * 1024 / attackers:.0f} KiB held; docs/PROTOCOL.md's bound: 461 KiB"
        )
        for sock in socks:
            sock.close()
    finally:
        server.stop()


def _scraper(address: str, seconds: float) -> None:
    import urllib.request

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as r,
        ):
            r.read()


def metrics_attacks(seconds: float) -> None:
    metrics_port = _free_port()
    address = f"127.0.0.1:{metrics_port}"
    server = ServerUnderTest("--metrics", address)
    try:
        threads = server.threads()
        idle = [socket.create_connection(("127.0.0.1", metrics_port), timeout=10) for _ in range(1100)]
        time.sleep(0.5)
        start = time.perf_counter()
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            greeted = sock.makefile("rb").readline().startswith(b"BIENVENIDO")
        greeting = time.perf_counter() - start
        scrape_start = time.perf_counter()
        _scraper(address, 0.001)
        scrape = time.perf_counter() - scrape_start
        print(
            f"metrics idle: 1100 idle connections to /metrics: server threads {threads} -> "
            f"{server.threads()}; a line client greeted {greeted} in {greeting * 1e3:.1f} ms; "
            f"a scrape answered in {scrape * 1e3:.1f} ms"
        )
        for sock in idle:
            sock.close()
        quiet = _round_trips(server.port, 1, 0.01)
        processes = [multiprocessing.Process(target=_scraper, args=(address, seconds)) for _ in range(4)]
        for process in processes:
            process.start()
        time.sleep(0.5)
        during = _round_trips(server.port, seconds - 1, 0.01)
        for process in processes:
            process.join(seconds + 10)
        print(
            f"metrics storm: 4 processes scraping in a loop, {seconds:g} s: bystander quiet "
            f"{_trips_summary(quiet)}; during {_trips_summary(during)}"
        )
    finally:
        server.stop()


def trickle(clients: int) -> None:
    """One byte every idle-timeout less 0.2 s: does it hold the slots?"""
    server = ServerUnderTest("--idle-timeout", "2")
    try:
        socks = connect_many(server.port, clients)
        for _ in range(3):
            time.sleep(1.8)
            for sock in socks:
                with contextlib.suppress(OSError):
                    sock.send(b"z")
        time.sleep(0.5)
        left = int(_estado(server.port)["clients"]) - 1
        print(
            f"trickle: {clients} clients, a byte every 1.8 s against --idle-timeout 2, 5.9 s: "
            f"{left} still held"
        )
        for sock in socks:
            sock.close()
    finally:
        server.stop()


def per_source(connects: int) -> None:
    server = ServerUnderTest("--max-clients", str(connects), "--max-clients-per-ip", "50")
    try:
        socks = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(connects)]
        firsts = [sock.makefile("rb").readline() for sock in socks]
        admitted = sum(first.startswith(b"BIENVENIDO") for first in firsts)
        other = socket.socket()
        other.bind(("127.0.0.2", 0))
        other.connect(("127.0.0.1", server.port))
        greeted = other.makefile("rb").readline().startswith(b"BIENVENIDO")
        print(
            f"per source: {connects} connects from 127.0.0.1 against --max-clients {connects} "
            f"--max-clients-per-ip 50: {admitted} admitted; another address greeted: {greeted}"
        )
        for sock in [*socks, other]:
            sock.close()
    finally:
        server.stop()


FIGURES = ["idle", "batch", "push", "flood", "worst", "storm", "shutdown",
           "log", "handshake", "telnet", "metrics", "trickle", "per-source"]  # fmt: skip


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
    if "log" in args.only:
        blocked_log(3)
    if "handshake" in args.only:
        handshake_flood(args.seconds)
    if "telnet" in args.only:
        for line, attackers in [(b"\xff\xf1", 1), (b"\xff\xf1", 4)]:
            flood_attack(args.clients, line, attackers, reading=False, seconds=args.seconds)
        telnet_memory(200)
    if "metrics" in args.only:
        metrics_attacks(args.seconds)
    if "trickle" in args.only:
        trickle(100)
    if "per-source" in args.only:
        per_source(300)


if __name__ == "__main__":
    main()
