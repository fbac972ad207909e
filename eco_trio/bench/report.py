"""What a run found, in numbers and in words."""

from __future__ import annotations

import os
import time
from pathlib import Path

from eco_trio.bench.config import BenchResult


def percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {}
    ordered = sorted(samples)
    last = len(ordered) - 1

    def at(q: float) -> float:
        return round(ordered[min(last, int(q * len(ordered)))] * 1e6, 1)

    return {"p50": at(0.5), "p99": at(0.99), "p99.9": at(0.999), "max": round(ordered[-1] * 1e6, 1)}


def server_words(received: bytes | bytearray, expected: bytes | bytearray) -> str | None:
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


def cpu_seconds() -> float:
    return time.process_time()  # user + system, on every platform


def rss_mib(pid: int | None) -> float | None:
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
