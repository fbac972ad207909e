"""``python -m eco_trio bench``: a load generator for line-uppercasing servers.

In the spirit of ``redis-benchmark``: N connections against one server, every
reply checked against the uppercased request it answers, replies/s, MB/s and
latency percentiles out.  It works against any server that answers each line
with the line uppercased (eco_trio, or the reference servers in benchmarks/).

It does not use trio: a load generator must cost less than the server it
measures, so this is one thread driving non-blocking sockets from an epoll
loop (a ``selectors`` loop where there is no epoll), and pipelined replies
are verified a whole read at a time (one bytes comparison per batch, not one
per line).  It measures its own CPU time and
says when it, not the server, was the bottleneck.

Request lines are unique per connection within a window of 4096 lines (the
connection number and a sequence number, in letters that uppercase), so
replies that come back out of order, twice, cut short or on the wrong
connection are all mismatches.
"""

from __future__ import annotations

import errno
import os
import select
import selectors
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

MODES = ("pingpong", "pipeline", "connect", "hold")
_WINDOW = 4096  # distinct sequence numbers per connection
_SUFFIXES = [f"q{n:03x}".encode() for n in range(_WINDOW)]  # hex digits a-f uppercase too


@dataclass(frozen=True)
class BenchConfig:
    host: str = "127.0.0.1"
    port: int = 5000
    clients: int = 50
    seconds: float = 3.0
    mode: str = "pingpong"
    pipeline: int = 16
    size: int = 64
    greeting_lines: int = 1
    warmup: float = 0.5
    concurrency: int = 200
    server_pid: int | None = None
    #: Speak TLS, trusting this CA file ("" for the system store); None: plain text.
    tls_ca: str | None = None
    tls_server_name: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        if self.size < 12:
            raise ValueError("size must be at least 12 bytes (the line carries its sequence number)")
        if self.clients < 1 or self.pipeline < 1 or self.seconds <= 0:
            raise ValueError("clients, pipeline and seconds must be positive")


@dataclass
class BenchResult:
    mode: str
    clients: int
    pipeline: int
    size: int
    seconds: float
    replies: int = 0
    replies_per_s: float = 0.0
    mb_per_s: float = 0.0
    latency_us: dict[str, float] = field(default_factory=dict)
    errors: int = 0
    mismatches: int = 0
    first_error: str = ""
    connections_held: int = 0
    server_rss_mib: float | None = None
    server_kib_per_connection: float | None = None
    bench_cpu: float = 0.0
    bench_is_bottleneck: bool = False

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class _Conn:
    __slots__ = ("expected", "greeting_left", "inbuf", "prefix", "sent_at", "seq", "sock", "started")

    def __init__(self, sock: socket.socket, slot: int, greeting_lines: int, size: int) -> None:
        self.sock = sock
        self.prefix = f"{slot:x}g".encode().ljust(size - 4, b"x")
        self.seq = 0
        self.inbuf = bytearray()
        self.expected = bytearray()
        self.sent_at: deque[float] = deque()
        self.greeting_left = greeting_lines
        self.started = 0.0

    def next_lines(self, count: int, now: float) -> bytes:
        lines = []
        for _ in range(count):
            lines.append(self.prefix + _SUFFIXES[self.seq % _WINDOW] + b"\n")
            self.seq += 1
            self.sent_at.append(now)
        batch = b"".join(lines)
        self.expected += batch.upper()
        return batch


class _Poller(Protocol):
    """The part of ``select.epoll`` the loop uses: read interest only."""

    def register(self, fd: int) -> None: ...
    def unregister(self, fd: int) -> None: ...
    def poll(self, timeout: float) -> list[tuple[int, int]]: ...
    def close(self) -> None: ...


class _EpollPoller:
    """Linux: epoll itself, its poll bound directly (no wrapper per call)."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self.poll = self._epoll.poll
        self.unregister = self._epoll.unregister
        self.close = self._epoll.close

    def register(self, fd: int) -> None:
        self._epoll.register(fd, select.EPOLLIN)


class _SelectorPoller:
    """Everywhere else: the best selector the platform has (kqueue, poll,
    select), shaped like epoll."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()

    def register(self, fd: int) -> None:
        self._selector.register(fd, selectors.EVENT_READ)

    def unregister(self, fd: int) -> None:
        self._selector.unregister(fd)

    def poll(self, timeout: float) -> list[tuple[int, int]]:
        return [(key.fd, events) for key, events in self._selector.select(timeout)]

    def close(self) -> None:
        self._selector.close()


def _poller() -> _Poller:
    return _EpollPoller() if hasattr(select, "epoll") else _SelectorPoller()


class _Run:
    """One benchmark run: the poll loop and its tallies."""

    def __init__(self, config: BenchConfig, progress: Callable[[float, int], None] | None) -> None:
        self.config = config
        self.progress = progress
        self.epoll = _poller()
        self.tls: ssl.SSLContext | None = None
        if config.tls_ca is not None:
            self.tls = ssl.create_default_context(cafile=config.tls_ca or None)
        self.conns: dict[int, _Conn] = {}
        self.latencies: list[float] = []
        self.replies = 0
        self.bytes_in = 0
        self.errors = 0
        self.mismatches = 0
        self.first_error = ""
        self.measuring = False
        self.started: float | None = None
        self.slot = 0

    # --- connections --------------------------------------------------------------

    def open(self) -> _Conn | None:
        """A new connection, greeted or not; with no greeting to wait for,
        its first lines are sent at once."""
        started = time.perf_counter()
        sock = socket.socket(socket.AF_INET6 if ":" in self.config.host else socket.AF_INET)
        sock.settimeout(10)
        try:
            # A loopback connect completes in the kernel (the server's listen
            # backlog), so blocking here costs microseconds and keeps the
            # state machine small.
            sock.connect((self.config.host, self.config.port))
        except OSError as exc:
            sock.close()
            self.error(f"connect: {exc.strerror or exc}")
            return None
        if self.tls is not None:
            try:  # the handshake, blocking, like the connect
                sock = self.tls.wrap_socket(
                    sock, server_hostname=self.config.tls_server_name or self.config.host
                )
            except (OSError, ssl.SSLError) as exc:
                sock.close()
                self.error(f"TLS: {exc}")
                return None
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Conn(sock, self.slot, self.config.greeting_lines, self.config.size)
        self.slot += 1
        conn.started = started
        self.conns[sock.fileno()] = conn
        self.epoll.register(sock.fileno())
        return conn

    def close(self, conn: _Conn) -> None:
        fd = conn.sock.fileno()
        self.conns.pop(fd, None)
        self.epoll.unregister(fd)
        conn.sock.close()

    def error(self, message: str) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = message

    def send(self, conn: _Conn, data: bytes) -> bool:
        try:
            conn.sock.sendall(data)  # lines are small: the socket buffer takes them
        except OSError as exc:
            self.error(f"send: {exc.strerror}")
            return False
        return True

    # --- replies ------------------------------------------------------------------

    def receive(self, conn: _Conn, now: float) -> int | None:
        """Read, skip greeting lines, verify complete replies; the number of
        replies verified, or None if the connection is finished."""
        try:
            data = conn.sock.recv(262144)
            if self.tls is not None:
                # TLS hands out a record at a time, and what it has already
                # decrypted brings no new readiness: read until it wants more.
                while True:
                    try:
                        more = conn.sock.recv(262144)
                    except ssl.SSLWantReadError:
                        break
                    if not more:
                        break
                    data += more
        except (BlockingIOError, ssl.SSLWantReadError):
            return 0
        except OSError as exc:
            self.error(f"recv: {exc.strerror or exc}")
            return None
        if not data:
            self.error("the server closed a connection")
            return None
        conn.inbuf += data
        while conn.greeting_left and b"\n" in conn.inbuf:
            greeting = bytes(conn.inbuf[: conn.inbuf.index(b"\n")])
            if greeting.startswith(b"ERROR"):  # e.g. the server is full
                self.error(f"the server said: {greeting.decode(errors='replace')}")
                return None
            del conn.inbuf[: len(greeting) + 1]
            conn.greeting_left -= 1
        end = conn.inbuf.rfind(b"\n") + 1
        if not end or conn.greeting_left:
            return 0
        if len(conn.expected) < end or conn.inbuf[:end] != conn.expected[:end]:
            said = _server_words(conn.inbuf[:end], conn.expected)
            if said is not None:  # not a wrong reply: the server said why it stopped answering
                self.error(f"the server said: {said}")
                return None
            self.mismatches += 1
            if not self.first_error:
                got = bytes(conn.inbuf[:end])[:80].decode(errors="replace").rstrip("\n")
                self.first_error = f"wrong reply: got {got!r}"
            return None
        count = conn.inbuf.count(b"\n", 0, end)
        del conn.inbuf[:end]
        del conn.expected[:end]
        if self.measuring:
            self.replies += count
            self.bytes_in += end
            sent_at = conn.sent_at
            for _ in range(count):
                self.latencies.append(now - sent_at.popleft())
        else:
            for _ in range(count):
                conn.sent_at.popleft()
        return count

    # --- modes ----------------------------------------------------------------------

    def streams(self, depth: int, deadline: float) -> None:
        """pingpong (depth 1) and pipeline: keep ``depth`` lines in flight."""
        ready: set[int] = set()
        for _ in range(self.config.clients):
            conn = self.open()
            if conn is not None and not conn.greeting_left:
                ready.add(conn.sock.fileno())
                self.send(conn, conn.next_lines(depth, time.perf_counter()))
        measure_from = time.perf_counter() + self.config.warmup
        self.loop(deadline, measure_from, lambda conn, now: self.stream_event(conn, now, depth, ready))

    def stream_event(self, conn: _Conn, now: float, depth: int, ready: set[int]) -> None:
        fd = conn.sock.fileno()
        count = self.receive(conn, now)
        if count is None:
            self.close(conn)
            return
        if fd not in ready and not conn.greeting_left:
            ready.add(fd)
            count = depth  # greeted: fill the pipeline
        if count and not self.send(conn, conn.next_lines(count, now)):
            self.close(conn)

    def connects(self, deadline: float) -> None:
        """connect: each slot loops connect, greeting, one pingpong, close."""
        slots = min(self.config.clients, self.config.concurrency)

        def new_cycle() -> None:
            conn = self.open()
            if conn is not None and not conn.greeting_left:
                self.send(conn, conn.next_lines(1, time.perf_counter()))

        for _ in range(slots):
            new_cycle()
        measure_from = time.perf_counter() + self.config.warmup

        def event(conn: _Conn, now: float) -> None:
            count = self.receive(conn, now)
            if count is None:
                self.close(conn)
                new_cycle()
                return
            if not conn.greeting_left and not conn.seq:
                if not self.send(conn, conn.next_lines(1, now)):
                    self.close(conn)
                    new_cycle()
            elif count:
                if self.measuring:  # latency of the whole cycle, from connect
                    self.latencies[-1] = now - conn.started
                self.close(conn)
                new_cycle()

        self.loop(deadline, measure_from, event)

    def hold(self) -> BenchResult:
        """hold: open N connections, verify each, hold them, verify again."""
        before = _rss_mib(self.config.server_pid)
        held: list[_Conn] = []
        pending: set[int] = set()
        setup_deadline = time.perf_counter() + max(20.0, self.config.clients / 500)
        opened = 0
        self.measuring = True
        while (opened < self.config.clients or pending) and time.perf_counter() < setup_deadline:
            while opened < self.config.clients and len(pending) < self.config.concurrency:
                conn = self.open()
                opened += 1
                if conn is not None:
                    pending.add(conn.sock.fileno())
                    if not conn.greeting_left:
                        self.send(conn, conn.next_lines(1, time.perf_counter()))
            for fd, _ in self.epoll.poll(0.05):
                conn = self.conns[fd]
                now = time.perf_counter()
                count = self.receive(conn, now)
                if count is None:
                    pending.discard(fd)
                    self.close(conn)
                elif not conn.greeting_left and not conn.seq:
                    self.send(conn, conn.next_lines(1, now))
                elif count:
                    pending.discard(fd)
                    held.append(conn)
        during = _rss_mib(self.config.server_pid)
        hold_until = time.perf_counter() + self.config.seconds
        while time.perf_counter() < hold_until:
            for fd, _ in self.epoll.poll(max(0.0, hold_until - time.perf_counter())):
                self.error("a held connection heard from the server")
                self.close(self.conns[fd])
        # Final check: every held connection still answers.
        for conn in held:
            self.send(conn, conn.next_lines(1, time.perf_counter()))
        verified = 0
        final_deadline = time.perf_counter() + 10
        waiting = {c.sock.fileno() for c in held if c.sock.fileno() in self.conns}
        while waiting and time.perf_counter() < final_deadline:
            for fd, _ in self.epoll.poll(0.05):
                conn = self.conns[fd]
                count = self.receive(conn, time.perf_counter())
                if count is None:
                    waiting.discard(fd)
                    self.close(conn)
                elif count:
                    waiting.discard(fd)
                    verified += 1
        result = self.result(self.config.seconds)
        result.connections_held = verified
        if before is not None and during is not None and held:
            result.server_rss_mib = during
            result.server_kib_per_connection = (during - before) * 1024 / len(held)
        return result

    def loop(self, deadline: float, measure_from: float, event: Callable[[_Conn, float], None]) -> None:
        last_report = time.perf_counter()
        poll, conns = self.epoll.poll, self.conns
        while True:
            now = time.perf_counter()
            if now >= deadline:
                return
            if not self.measuring and now >= measure_from:
                self.measuring = True
                self.started = now
            if self.progress is not None and self.started is not None and now - last_report >= 0.5:
                self.progress(now - self.started, self.replies)
                last_report = now
            for fd, _ in poll(0.1):
                conn = conns.get(fd)
                if conn is not None:
                    event(conn, time.perf_counter())

    def result(self, window: float) -> BenchResult:
        config = self.config
        depth = config.pipeline if config.mode == "pipeline" else 1
        result = BenchResult(config.mode, config.clients, depth, config.size, round(window, 3))
        result.replies = self.replies
        result.replies_per_s = self.replies / window if window else 0.0
        result.mb_per_s = self.bytes_in / window / 1e6 if window else 0.0
        result.latency_us = _percentiles(self.latencies)
        result.errors, result.mismatches, result.first_error = self.errors, self.mismatches, self.first_error
        return result


def run_bench(config: BenchConfig, progress: Callable[[float, int], None] | None = None) -> BenchResult:
    """Run one benchmark; blocking, bounded by ``warmup + seconds`` (plus
    connection setup and final checks in hold mode)."""
    _raise_open_files_limit(config.clients + 64)
    _check_reachable(config)
    cpu_start = _cpu_seconds()
    wall_start = time.perf_counter()
    run = _Run(config, progress)
    try:
        deadline = wall_start + config.warmup + config.seconds
        if config.mode == "hold":
            result = run.hold()
        else:
            if config.mode == "connect":
                run.connects(deadline)
            else:
                run.streams(config.pipeline if config.mode == "pipeline" else 1, deadline)
            window = time.perf_counter() - run.started if run.started is not None else 0.0
            result = run.result(window)
    finally:
        for conn in list(run.conns.values()):
            conn.sock.close()
        run.epoll.close()
    wall = time.perf_counter() - wall_start
    result.bench_cpu = round((_cpu_seconds() - cpu_start) / wall, 3) if wall else 0.0
    result.bench_is_bottleneck = config.mode != "hold" and result.bench_cpu >= 0.9
    if config.mode != "hold" and not result.replies and not result.first_error:
        # Nothing came back, and nothing went wrong on the way: say what
        # such a server is likely doing.
        result.first_error = (
            f"no reply line in {config.seconds:g} s: the server may not end its replies with a newline "
            "(the bench counts lines), or sends a different number of greeting lines than "
            f"--greeting-lines {config.greeting_lines}"
        )
    return result


def _check_reachable(config: BenchConfig) -> None:
    """Fail fast, with the address, when nothing listens there."""
    try:
        socket.create_connection((config.host, config.port), timeout=5).close()
    except OSError as exc:
        raise OSError(
            exc.errno, f"cannot connect to {config.host}:{config.port}: {exc.strerror or exc}"
        ) from None


def _percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {}
    ordered = sorted(samples)
    last = len(ordered) - 1

    def at(q: float) -> float:
        return round(ordered[min(last, int(q * len(ordered)))] * 1e6, 1)

    return {"p50": at(0.5), "p99": at(0.99), "p99.9": at(0.999), "max": round(ordered[-1] * 1e6, 1)}


def _server_words(received: bytes | bytearray, expected: bytes | bytearray) -> str | None:
    """The first line the server sent that is not an expected reply, if it
    is one of its own messages (ERROR ..., AVISO ...) rather than a wrong
    echo."""
    start = 0
    while start < len(received):
        end = received.find(b"\n", start)
        end = len(received) if end < 0 else end
        line = bytes(received[start:end])
        if line != bytes(expected[start:end]):
            if line.startswith((b"ERROR", b"AVISO")):
                return line.decode(errors="replace")
            return None
        start = end + 1
    return None


def _cpu_seconds() -> float:
    return time.process_time()  # user + system, on every platform


def _rss_mib(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


def _raise_open_files_limit(needed: int) -> None:
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows has no such limit
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            raise OSError(errno.EMFILE, f"cannot open {needed} files (limit {soft})") from exc


def _pinned() -> bool:
    """Whether this process already runs on one core only (taskset, --cpu)."""
    getaffinity = getattr(os, "sched_getaffinity", None)
    return getaffinity is not None and len(getaffinity(0)) == 1


def format_result(result: BenchResult) -> str:
    """The human-readable report."""
    lat = result.latency_us
    lines = [
        f"{result.mode}: {result.clients} clients, {result.size}-byte lines"
        + (f", {result.pipeline} in flight each" if result.pipeline > 1 else "")
        + f", {result.seconds:g} s",
    ]
    if result.mode == "hold":
        lines.append(f"  held and verified   {result.connections_held:,} connections")
        if result.server_kib_per_connection is not None:
            lines.append(
                f"  server memory       {result.server_rss_mib:.1f} MiB "
                f"({result.server_kib_per_connection:.1f} KiB per connection)"
            )
    else:
        label = "connections/s" if result.mode == "connect" else "replies/s"
        lines.append(f"  {label:<19} {result.replies_per_s:,.0f}   ({result.mb_per_s:.2f} MB/s)")
        if lat:
            lines.append(
                f"  latency us          p50 {lat['p50']:,.0f}  p99 {lat['p99']:,.0f}  "
                f"p99.9 {lat['p99.9']:,.0f}  max {lat['max']:,.0f}"
            )
    lines.append(f"  errors {result.errors}  mismatches {result.mismatches}  {result.first_error}".rstrip())
    lines.append(f"  bench CPU           {result.bench_cpu:.0%} of one core")
    if result.bench_is_bottleneck:
        advice = (
            "use fewer clients, or the C load generator (../shared/loadgen)"
            if _pinned()
            else "pin it and the server to different cores (taskset, --cpu), or use fewer clients"
        )
        lines.append(
            f"  note: the load generator used a whole core; it, not the server, was the limit: {advice}."
        )
    return "\n".join(lines)
