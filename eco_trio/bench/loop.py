"""The one poll loop every mode runs on: connections, what each sends and
expects back, and the tallies (replies, latencies, errors).

Request lines are unique per connection within a window of 4096 lines (the
connection number and a sequence number, in letters that uppercase), so
replies that come back out of order, twice, cut short or on the wrong
connection are all mismatches.
"""

from __future__ import annotations

import select
import selectors
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from eco_trio.bench.config import BenchConfig, BenchResult
from eco_trio.bench.report import percentiles, server_words

_WINDOW = 4096  # distinct sequence numbers per connection
_SUFFIXES = [f"q{n:03x}".encode() for n in range(_WINDOW)]  # hex digits a-f uppercase too


class Conn:
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


class Poller(Protocol):
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


def poller() -> Poller:
    return _EpollPoller() if hasattr(select, "epoll") else _SelectorPoller()


class Run:
    """One benchmark run: the poll loop and its tallies."""

    def __init__(self, config: BenchConfig, progress: Callable[[float, int], None] | None) -> None:
        self.config = config
        self.progress = progress
        self.epoll = poller()
        self.tls: ssl.SSLContext | None = None
        if config.tls_ca is not None:
            self.tls = ssl.create_default_context(cafile=config.tls_ca or None)
        self.conns: dict[int, Conn] = {}
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

    def open(self) -> Conn | None:
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
        if self.config.proxy_header:
            source, source_port = sock.getsockname()[:2]
            family = "TCP6" if ":" in source else "TCP4"
            header = f"PROXY {family} {source} {self.config.host} {source_port} {self.config.port}\r\n"
            sock.sendall(header.encode())
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Conn(sock, self.slot, self.config.greeting_lines, self.config.size)
        self.slot += 1
        conn.started = started
        self.conns[sock.fileno()] = conn
        self.epoll.register(sock.fileno())
        return conn

    def close(self, conn: Conn) -> None:
        fd = conn.sock.fileno()
        self.conns.pop(fd, None)
        self.epoll.unregister(fd)
        conn.sock.close()

    def error(self, message: str) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = message

    def send(self, conn: Conn, data: bytes) -> bool:
        try:
            conn.sock.sendall(data)  # lines are small: the socket buffer takes them
        except OSError as exc:
            self.error(f"send: {exc.strerror}")
            return False
        return True

    # --- replies ------------------------------------------------------------------

    def receive(self, conn: Conn, now: float) -> int | None:
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
            said = server_words(conn.inbuf[:end], conn.expected)
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

    def loop(self, deadline: float, measure_from: float, event: Callable[[Conn, float], None]) -> None:
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
        result.latency_us = percentiles(self.latencies)
        result.errors, result.mismatches, result.first_error = self.errors, self.mismatches, self.first_error
        return result
