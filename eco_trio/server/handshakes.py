"""TLS connections still in their handshake: a budget of their own.

A connection on a TLS port is not a client until its handshake is done, so
it does not hold one of ``--max-clients`` meanwhile: otherwise anyone can
fill every slot (of every port) by opening connections and saying nothing.
As OpenSSH keeps ``MaxStartups`` apart from its sessions:

- at most ``limit`` handshakes are pending at once; a new connection past
  that drops the oldest pending one (which has had the longest to finish),
  so a flood of silent connections churns only itself, and a real client,
  whose handshake takes milliseconds, gets through;
- handshakes start at most ``rate`` a second, and ``rate_per_source`` a
  second from one address (HAProxy's ``maxsslrate``): a handshake costs the
  server a few milliseconds of CPU, far more than it costs the client, so a
  flood of ClientHellos is made to wait instead of taking every core.  A
  connection waits for its turn only once it has sent something, so silent
  ones cost no turn;
- shutdown cancels every pending handshake at once: nobody is owed a
  goodbye before they have said hello.

Rates are kept by GCRA (a token bucket as one timestamp): each start
reserves the next slot, ``burst`` starts may go at once.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable

import trio

from eco_trio.server.registry import source_of

#: Pending handshakes at once (OpenSSH's MaxStartups is 100 at most).
DEFAULT_LIMIT = 128
#: Handshakes started per second, in all and from one address (0: no bound).
DEFAULT_RATE = 200.0
DEFAULT_RATE_PER_SOURCE = 50.0
#: Per-source bounds are swept (the full ones forgotten) this often, or
#: sooner when there are this many.
_SOURCE_MEMORY = 60.0
_MAX_SOURCES = 4096


class RateBound:
    """GCRA: at most ``rate`` a second on average, ``burst`` at once."""

    __slots__ = ("_interval", "_span", "_theoretical")

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._span = self._interval * max(1.0, burst if burst is not None else rate)
        self._theoretical = -math.inf

    def reserve(self, now: float) -> float:
        """Take the next start; returns how long to wait for it (0: now)."""
        if not self._interval:
            return 0.0
        start = max(now, self._theoretical)
        self._theoretical = start + self._interval
        return max(0.0, self._theoretical - self._span - now)

    def available(self, now: float) -> bool:
        """Whether a start reserved now would need no wait."""
        return self._theoretical + self._interval - self._span <= now

    def idle_since(self, now: float) -> bool:
        return self._theoretical < now


class PerSource:
    """A :class:`RateBound` for each client source (``source_of``: the
    address, an IPv6 one by its /64), made on first use.  Sources whose
    bound is full again are forgotten every _SOURCE_MEMORY seconds, or
    sooner past _MAX_SOURCES, so a scan of many addresses does not grow
    memory for good."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self._rate, self._burst = rate, burst
        self._bounds: dict[str, RateBound] = {}
        self._swept_at = -math.inf

    def get(self, address: str) -> RateBound | None:
        """The bound of ``address``'s source, if it has one."""
        return self._bounds.get(source_of(address))

    def bound(self, address: str, now: float) -> RateBound:
        """The bound of ``address``'s source, made if need be."""
        source = source_of(address)
        bound = self._bounds.get(source)
        if bound is None:
            self._sweep(now)
            bound = self._bounds[source] = RateBound(self._rate, self._burst)
        return bound

    def _sweep(self, now: float) -> None:
        if now - self._swept_at < _SOURCE_MEMORY and len(self._bounds) < _MAX_SOURCES:
            return
        self._swept_at = now
        for source in [s for s, bound in self._bounds.items() if bound.idle_since(now)]:
            del self._bounds[source]


class Pending:
    """One connection in a :class:`PendingPool`; ``scope`` is cancelled when
    it is dropped to make room, or when the pool closes."""

    __slots__ = ("address", "dropped", "scope")

    def __init__(self, address: str) -> None:
        self.address = address
        self.scope = trio.CancelScope()
        self.dropped = False


class PendingPool:
    """At most ``limit`` connections that have yet to prove themselves;
    a newcomer past the limit drops the oldest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._pending: OrderedDict[Pending, None] = OrderedDict()
        #: Connections dropped to make room for newer ones.
        self.dropped = 0
        self._closed = False

    def __len__(self) -> int:
        return len(self._pending)

    def open(self, address: str) -> Pending:
        """A new member; the oldest is dropped if there is no room (and the
        newcomer itself, at once, once the pool is closed)."""
        pending = Pending(address)
        if self._closed:
            pending.scope.cancel()
            return pending
        while len(self._pending) >= self.limit:
            oldest, _ = self._pending.popitem(last=False)
            oldest.dropped = True
            oldest.scope.cancel()
            self.dropped += 1
        self._pending[pending] = None
        return pending

    def close(self, pending: Pending) -> None:
        self._pending.pop(pending, None)

    def cancel_all(self) -> None:
        """Every member ends now, and newcomers at once."""
        self._closed = True
        for pending in self._pending:
            pending.scope.cancel()
        self._pending.clear()


class Handshakes(PendingPool):
    """The pending handshakes of one server, all ports together, and the
    rates at which they may start."""

    def __init__(
        self,
        limit: int = DEFAULT_LIMIT,
        rate: float = DEFAULT_RATE,
        rate_per_source: float = DEFAULT_RATE_PER_SOURCE,
        *,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        super().__init__(limit)
        self._rate = RateBound(rate)
        self._per_source = PerSource(rate_per_source)
        self._clock = clock

    async def wait_turn(self, address: str) -> None:
        """Wait until a handshake from ``address`` may start (the rates)."""
        now = self._clock()
        delay = max(self._per_source.bound(address, now).reserve(now), self._rate.reserve(now))
        if delay:
            await trio.sleep(delay)
