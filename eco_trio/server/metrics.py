"""``--metrics``: the server's counters for Prometheus, served from trio.

The text is prometheus_client's (a custom collector reads the server's
counters at scrape time, so the hot path pays nothing for it); the HTTP
around it is ours, in the server's own event loop, as nginx's and HAProxy's
stats pages are in theirs.  prometheus_client's own server took a thread
per connection, with no timeout and no cap: a thousand idle connections
were a thousand threads.  Here a scrape connection is:

- one of at most MAX_CONNECTIONS at once; past that the oldest is dropped
  (a scraper finishes in milliseconds, so the oldest is the idle one);
- given REQUEST_TIMEOUT seconds to send its request and take the answer,
  and at most MAX_REQUEST bytes of request;
- answered, then closed (``Connection: close``): no keep-alive to hold.

Problems are logged one line each, at most once a second with a count,
and never with a traceback.  The text is built at most every CACHE_SECONDS,
so a storm of scrapes costs a few formats a second, not one each.
"""

from __future__ import annotations

import logging
import math
import re
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Final, Protocol

import trio
from prometheus_client import ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from eco_trio.server.handshakes import PendingPool


class Throttle(Protocol):
    """A log line noted at most once a second (the server's)."""

    def note(self, message: str, *args: object) -> None: ...


log = logging.getLogger("eco_trio.server")

MAX_CONNECTIONS: Final = 16
REQUEST_TIMEOUT: Final = 5.0
MAX_REQUEST: Final = 8 * 1024
CACHE_SECONDS: Final = 0.1


#: ESTADO keys with a label: the prefix, the metric, its help and label.
_LABELLED: Final = (
    ("refused_", "eco_trio_refused", "Connections turned away, by cause", "cause"),
    ("command_", "eco_trio_commands", "Commands received, by name", "command"),
    ("disconnects_", "eco_trio_disconnects", "Connections ended, by reason", "reason"),
)
#: ESTADO keys that are one counter or gauge each.
_COUNTERS: Final = {
    "connections_total": ("eco_trio_connections", "Connections admitted"),
    "lines_in": ("eco_trio_lines_received", "Lines received"),
    "lines_out": ("eco_trio_lines_sent", "Lines sent"),
    "bytes_in": ("eco_trio_received_bytes", "Bytes received"),
    "bytes_out": ("eco_trio_sent_bytes", "Bytes sent"),
    "log_lines_dropped": (
        "eco_trio_log_lines_dropped",
        "Log lines dropped because the log's reader fell behind",
    ),
    "wrong_tokens": ("eco_trio_wrong_tokens", "Wrong or throttled tokens"),
    "tls_handshakes_dropped": ("eco_trio_tls_handshakes_dropped", "TLS handshakes dropped for newer ones"),
}
_GAUGES: Final = {
    "uptime_s": ("eco_trio_uptime_seconds", "Seconds since the server started"),
    "clients": ("eco_trio_clients", "Clients connected now"),
    "tls_handshakes_pending": ("eco_trio_tls_handshakes_pending", "TLS connections in their handshake"),
    "rss_bytes": ("eco_trio_resident_memory_bytes", "Resident memory"),
    "nodes": ("eco_trio_deployment_nodes", "Live nodes of the deployment (servidor --redis)"),
}


class StatusCollector(Collector):
    """The metrics, read from ``status()`` (ESTADO's own pairs) at scrape
    time: the two views cannot disagree, and the collector knows nothing of
    the server but that one call."""

    def __init__(self, status: Callable[[], Mapping[str, object]]) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        pairs = self.status()
        info = GaugeMetricFamily(
            "eco_trio_info", "eco_trio's version and I/O path", labels=["version", "io_path"]
        )
        info.add_metric([str(pairs.get("version", "")), str(pairs.get("io_path", ""))], 1)
        yield info
        for key, (name, description) in _COUNTERS.items():
            if isinstance(value := pairs.get(key), int):
                yield CounterMetricFamily(name, description, value=value)
        for key, (name, description) in _GAUGES.items():
            if isinstance(value := pairs.get(key), int | float):
                yield GaugeMetricFamily(name, description, value=value)
        for prefix, name, description, label in _LABELLED:
            family = CounterMetricFamily(name, description, labels=[label])
            for key, value in pairs.items():
                if key.startswith(prefix) and isinstance(value, int):
                    family.add_metric([key.removeprefix(prefix)], value)  # ESTADO's word, snake_case
            yield family


# --- the HTTP, sans-IO ---------------------------------------------------------

_REQUEST_LINE: Final = re.compile(rb"([A-Z]+) (\S+) HTTP/1\.[01]\r?\n")


def request_complete(data: bytes | bytearray) -> bool:
    return b"\r\n\r\n" in data or b"\n\n" in data


def response(request: bytes | bytearray, body: Callable[[], bytes]) -> bytes:
    """The whole HTTP/1.1 response to a request head (``Connection:
    close``): the metrics for ``GET`` or ``HEAD`` of any path (as
    prometheus_client serves them), 405 for another method, 400 for what is
    not HTTP/1.x."""
    match = _REQUEST_LINE.match(request)
    if match is None:
        return _message(400, "Bad Request", b"bad request\n")
    method = match[1]
    if method not in (b"GET", b"HEAD"):
        return _message(405, "Method Not Allowed", b"GET /metrics\n", extra="Allow: GET, HEAD\r\n")
    content = body()
    head = _head(200, "OK", CONTENT_TYPE_LATEST, len(content))
    return head if method == b"HEAD" else head + content


def _message(status: int, reason: str, content: bytes, extra: str = "") -> bytes:
    return _head(status, reason, "text/plain; charset=utf-8", len(content), extra) + content


def _head(status: int, reason: str, content_type: str, length: int, extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\nConnection: close\r\n{extra}\r\n"
    ).encode("ascii")


# --- serving it ------------------------------------------------------------------


class MetricsEndpoint:
    """``/metrics`` on one listening socket, in the server's trio run."""

    def __init__(
        self,
        status: Callable[[], Mapping[str, object]],
        listener: socket.socket,
        problems: Throttle,
    ) -> None:
        self.listener = listener
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(StatusCollector(status))
        # process_cpu_seconds_total, process_open_fds, ...: prometheus_client's own (Linux).
        ProcessCollector(registry=self._registry)
        self._connections = PendingPool(MAX_CONNECTIONS)
        self._text = b""
        self._built_at = -math.inf
        self._problems = problems

    def body(self) -> bytes:
        now = time.monotonic()
        if now - self._built_at >= CACHE_SECONDS:
            self._text, self._built_at = generate_latest(self._registry), now
        return self._text

    async def serve(self) -> None:
        """Accept and answer scrapes until cancelled."""
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(self.listener))
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:  # out of descriptors, say: wait, do not spin
                    self._problems.note("metrics: accept failed: %s", exc.strerror or exc)
                    await trio.sleep(0.1)
                    continue
                nursery.start_soon(self._answer, stream)

    async def _answer(self, stream: trio.SocketStream) -> None:
        peer = _peer(stream)
        slot = self._connections.open(peer)
        try:
            with slot.scope, trio.move_on_after(REQUEST_TIMEOUT) as deadline:
                request = await self._read_request(stream)
                if request is None:
                    self._problems.note("metrics: %s sent more than %d bytes of request", peer, MAX_REQUEST)
                    return
                await stream.send_all(response(request, self.body))
            if deadline.cancelled_caught:
                self._problems.note("metrics: %s took over %g s; closed", peer, REQUEST_TIMEOUT)
            elif slot.dropped:
                self._problems.note("metrics: %s dropped: %d connections at once", peer, MAX_CONNECTIONS)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._problems.note("metrics: %s: %s", peer, _reason(exc))
        finally:
            self._connections.close(slot)
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    @staticmethod
    async def _read_request(stream: trio.SocketStream) -> bytes | None:
        """The request head, or None past MAX_REQUEST; what the client sent
        before closing, if it closed early."""
        data = bytearray()
        while not request_complete(data):
            if len(data) > MAX_REQUEST:
                return None
            chunk = await stream.receive_some(MAX_REQUEST)
            if not chunk:
                break
            data += chunk
        return bytes(data)


def _peer(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "?"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _reason(exc: BaseException) -> str:
    cause = exc.__cause__
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror.lower()
    return str(exc) or type(exc).__name__
