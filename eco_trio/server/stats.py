"""What the server has done, counted where it happens and formatted only
when asked (ESTADO, the Prometheus scrape): plain integers on the hot path,
as prometheus_client's own counters are.

Per-connection counts live on each client's registry entry while it is
connected and are added to these totals when it leaves, so a message costs
a few integer additions on its own entry and nothing shared.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

from eco_trio.server.registry import ClientEntry


@dataclass
class Totals:
    started_at: float = field(default_factory=time.monotonic)
    connections: int = 0
    #: A load balancer's own connections (PROXY LOCAL, or connect and close).
    health_checks: int = 0
    #: Connections turned away, by cause: "full", "HTTP", "TLS on the plain port", "TLS handshake".
    refused: Counter[str] = field(default_factory=Counter)
    lines_in: int = 0
    lines_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    commands: Counter[str] = field(default_factory=Counter)
    disconnects: Counter[str] = field(default_factory=Counter)

    def connection_ended(self, entry: ClientEntry, reason: str) -> None:
        self.lines_in += entry.lines_in
        self.lines_out += entry.lines_out
        self.bytes_in += entry.bytes_in
        self.bytes_out += entry.bytes_out
        self.disconnects[reason] += 1

    def snapshot(self, live: list[ClientEntry]) -> dict[str, int]:
        """The totals, with what the connected clients have done so far."""
        return {
            "lines_in": self.lines_in + sum(entry.lines_in for entry in live),
            "lines_out": self.lines_out + sum(entry.lines_out for entry in live),
            "bytes_in": self.bytes_in + sum(entry.bytes_in for entry in live),
            "bytes_out": self.bytes_out + sum(entry.bytes_out for entry in live),
        }


def memory() -> tuple[int | None, int | None]:
    """(current, peak) resident memory in bytes, where the platform says."""
    current = peak = None
    try:
        with open(f"/proc/{os.getpid()}/statm") as statm:
            current = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        pass
    try:
        import resource

        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = maxrss if sys.platform == "darwin" else maxrss * 1024  # bytes on macOS, KiB elsewhere
    except ImportError:
        pass
    if current is not None and peak is not None:
        # The kernel updates the high-water mark lazily: a peak below the
        # current figure is only late.
        peak = max(peak, current)
    return current, peak


def slug(text: str) -> str:
    """A reason or name as one word for ``clave valor`` lines and labels."""
    return "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")
