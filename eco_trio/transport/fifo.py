"""How the server's tasks take turns: first in, first out, and cheaply.

trio runs the tasks that became runnable since its last look at I/O as one
batch and, on purpose, in a random direction: each batch runs in the order
the tasks became runnable or in the reverse order, half the time each (to
keep programs from relying on an order; see the comment above ``batch`` in
``trio/_core/_run.py``).  A busy server's connection tasks each take one turn
per batch, so a random direction turns a steady round into a shuffled one:
the task that went first in one batch may go last in the next, and its client
waits two rounds instead of one.  That is the long tail at 50 pingpong
clients.  Measured on the server (the time between two turns of one
connection, ``benchmarks/compare``'s pingpong 50 with the C generator):
p50 423 µs, p90 709 µs, p99 1,009 µs with trio's coin; p50 433 µs, p90
496 µs, p99 793 µs first in, first out.

trio's comment expects to settle on strict FIFO one day and offers no switch
yet, so :func:`fifo_order` fixes its coin: ``trio._core._run._r`` always
draws 0.0, which always reverses a batch, and trio pops the batch from its
end, so tasks run in the order they became runnable.  This is trio's private
state, so it is touched only where it has the shape this relies on, put back
on leaving, and ``tests/test_scheduling.py`` checks the order itself, so a
trio that changes it fails the test rather than quietly losing the gain.
The test suite keeps trio's random order everywhere else, so no order
assumption can sneak into the server.

This is opt-in (``servidor --fifo``) and imported only then: it reaches
into trio's private ``trio._core._run._r``.  Where trio's scheduler is not
the shape this knows, it says so in a WARNING and keeps trio's order.
``pyproject.toml`` pins trio below the next minor release not tested, and
``nox -s tests_trio_latest`` runs the scheduling and stream tests on the
newest trio, so an upgrade is a one-line change that can be checked.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterator

from trio._core import _run

log = logging.getLogger("eco_trio.server")


class _AlwaysReverse(random.Random):
    """trio's coin, fixed: ``random() < 0.5`` is always true."""

    def random(self) -> float:
        return 0.0


@contextlib.contextmanager
def fifo_order() -> Iterator[bool]:
    """Within, ``trio.run`` runs runnable tasks first in, first out.  Yields
    whether that could be arranged (False: trio's own order, with a WARNING)."""
    coin = getattr(_run, "_r", None)
    if type(coin) is not random.Random:
        log.warning("fifo: this trio's scheduler is not the one eco_trio knows; keeping trio's task order")
        yield False
        return
    _run._r = _AlwaysReverse()
    try:
        yield True
    finally:
        _run._r = coin
