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

Its parts: ``config.py`` (what to run, what it found), ``loop.py`` (the
one poll loop and its tallies), ``modes.py`` (one small function per mode)
and ``report.py`` (the figures in words); this module runs one benchmark.
"""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Callable

from eco_trio.bench import modes
from eco_trio.bench.config import MODES, BenchConfig, BenchResult
from eco_trio.bench.loop import Run
from eco_trio.bench.report import cpu_seconds, format_result

__all__ = ["MODES", "BenchConfig", "BenchResult", "format_result", "run_bench"]


def run_bench(config: BenchConfig, progress: Callable[[float, int], None] | None = None) -> BenchResult:
    """Run one benchmark; blocking, bounded by ``warmup + seconds`` (plus
    connection setup and final checks in hold mode)."""
    _raise_open_files_limit(config.clients + 64)
    _check_reachable(config)
    cpu_start = cpu_seconds()
    wall_start = time.perf_counter()
    run = Run(config, progress)
    try:
        deadline = wall_start + config.warmup + config.seconds
        if config.mode == "hold":
            result = modes.hold(run)
        else:
            if config.mode == "connect":
                modes.connects(run, deadline)
            else:
                modes.streams(run, config.pipeline if config.mode == "pipeline" else 1, deadline)
            window = time.perf_counter() - run.started if run.started is not None else 0.0
            result = run.result(window)
    finally:
        for conn in list(run.conns.values()):
            conn.sock.close()
        run.epoll.close()
    wall = time.perf_counter() - wall_start
    result.bench_cpu = round((cpu_seconds() - cpu_start) / wall, 3) if wall else 0.0
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
