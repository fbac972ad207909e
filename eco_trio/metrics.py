"""``--metrics``: the server's counters for Prometheus, with prometheus_client.

The scrape is served by prometheus_client's own HTTP server in a thread of
its own, so it never blocks trio; what it serves is read from the server's
counters at scrape time (a custom collector), so the hot path pays nothing
for it.  Reading them from another thread is safe: they are plain integers
and dicts, copied whole under the GIL.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from . import __version__, logs
from .stats import memory

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from .server import Server


class ServerCollector(Collector):
    def __init__(self, server: Server) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        server, totals = self.server, self.server.totals
        live = server.registry.snapshot()
        info = GaugeMetricFamily(
            "eco_trio_info", "eco_trio's version and I/O path", labels=["version", "io_path"]
        )
        info.add_metric([__version__, server.io_path], 1)
        yield info
        yield GaugeMetricFamily(
            "eco_trio_uptime_seconds",
            "Seconds since the server started",
            value=time.monotonic() - totals.started_at,
        )
        yield GaugeMetricFamily("eco_trio_clients", "Clients connected now", value=len(live))
        yield CounterMetricFamily("eco_trio_connections", "Connections admitted", value=totals.connections)
        refused = CounterMetricFamily(
            "eco_trio_refused", "Connections turned away, by cause", labels=["cause"]
        )
        for cause, count in dict(totals.refused).items():
            refused.add_metric([cause], count)
        yield refused
        counts = totals.snapshot(live)
        for key, name, description in (
            ("lines_in", "eco_trio_lines_received", "Lines received"),
            ("lines_out", "eco_trio_lines_sent", "Lines sent"),
            ("bytes_in", "eco_trio_received_bytes", "Bytes received"),
            ("bytes_out", "eco_trio_sent_bytes", "Bytes sent"),
        ):
            yield CounterMetricFamily(name, description, value=counts[key])
        commands = CounterMetricFamily("eco_trio_commands", "Commands received, by name", labels=["command"])
        for command, count in dict(totals.commands).items():
            commands.add_metric([command], count)
        yield commands
        disconnects = CounterMetricFamily(
            "eco_trio_disconnects", "Connections ended, by reason", labels=["reason"]
        )
        for reason, count in dict(totals.disconnects).items():
            disconnects.add_metric([reason], count)
        yield disconnects
        yield CounterMetricFamily(
            "eco_trio_log_lines_dropped",
            "Log lines dropped because the log's reader fell behind",
            value=logs.dropped_lines(),
        )
        current, _ = memory()
        if current is not None:
            yield GaugeMetricFamily("eco_trio_resident_memory_bytes", "Resident memory", value=current)


def parse_address(text: str) -> tuple[str, int]:
    """``[HOST:]PORT`` (loopback when only a port is given)."""
    host, _, port = text.rpartition(":")
    number = int(port)
    if not 0 <= number <= 65535:
        raise ValueError(f"port must be between 0 and 65535, not {number}")
    return (host.strip("[]") or "127.0.0.1"), number


def start(server: Server, host: str, port: int) -> WSGIServer:
    """Serve the metrics in a thread of prometheus_client's; returns its
    HTTP server, to be shut down with the eco_trio server."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(server))
    httpd, _ = start_http_server(port, addr=host, registry=registry)
    return httpd
