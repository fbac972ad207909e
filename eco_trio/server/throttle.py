"""Log lines for things that can happen thousands of times a second
(refusals, accept errors, wrong tokens, failed handshakes): at most one a
second each, with how many happened since the previous one, so a flood does
not flood the log, and nothing goes unreported at shutdown."""

from __future__ import annotations

import logging
import math

import trio

log = logging.getLogger("eco_trio.server")


class ThrottledLog:
    """One such line: :meth:`note` each occurrence."""

    __slots__ = ("_count", "_last", "_level", "_logged_at")

    def __init__(self, level: int) -> None:
        self._level = level
        self._count = 0
        self._logged_at = -math.inf
        self._last: tuple[str, tuple[object, ...]] | None = None

    def note(self, message: str, *args: object) -> None:
        self._count += 1
        self._last = (message, args)
        now = trio.current_time()
        if now - self._logged_at >= 1.0:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        """Log the count not yet logged, if any (once a second, and at
        shutdown, so no burst goes unreported)."""
        if self._count and self._last is not None:
            message, args = self._last
            log.log(self._level, message + " (%d since the last report)", *args, self._count)
            self._count = 0
            self._logged_at = trio.current_time() if now is None else now


class Throttles:
    """Every throttled line of one server, so they are flushed together."""

    __slots__ = ("_lines",)

    def __init__(self) -> None:
        self._lines: list[ThrottledLog] = []

    def line(self, level: int) -> ThrottledLog:
        throttled = ThrottledLog(level)
        self._lines.append(throttled)
        return throttled

    def flush(self) -> None:
        """Log what the once-a-second lines have not said yet."""
        for throttled in self._lines:
            throttled.flush()

    async def flush_every_second(self) -> None:
        while True:
            await trio.sleep(1.0)
            self.flush()


def plural(n: int, noun: str) -> str:
    """``1 client``, ``2 clients``: the log is read by people too."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
