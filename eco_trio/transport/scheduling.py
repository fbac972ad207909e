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

A busy connection takes one turn per message (its stream lets every other
task run before it reads again), and trio's public way to take a turn,
``checkpoint()``, is also a cancel point: awaited through two more frames,
it looks up the task and its cancel status after every turn.  That is a
third of a turn's cost (``benchmarks/breakdown.py``: about 1.45 µs against
0.93 µs for a bare turn).  :func:`schedule_point` is the bare turn, trio's own
``cancel_shielded_checkpoint`` without the frames around its yield; a
caller that takes many turns in a row must still take a full checkpoint
now and then, so a cancellation reaches it (the socket stream takes one
every 16 reads).
"""

from __future__ import annotations

import contextlib
import logging
import random
import types
from collections.abc import Awaitable, Callable, Generator, Iterator

import trio
from trio._core import _run

log = logging.getLogger("eco_trio.server")


class _AlwaysReverse(random.Random):
    """trio's coin, fixed: ``random() < 0.5`` is always true."""

    def random(self) -> float:
        return 0.0


@contextlib.contextmanager
def fifo_order() -> Iterator[bool]:
    """Within, ``trio.run`` runs runnable tasks first in, first out.  Yields
    whether that could be arranged (False: trio's own order, logged)."""
    coin = getattr(_run, "_r", None)
    if type(coin) is not random.Random:
        log.warning("trio's scheduler is not the one eco_trio knows; keeping its task order")
        yield False
        return
    _run._r = _AlwaysReverse()
    try:
        yield True
    finally:
        _run._r = coin


def _bare_turn() -> Callable[[], Awaitable[None]]:
    """trio's schedule point without a cancel point, yielded directly where
    this trio has the message for it, its public form otherwise."""
    message = getattr(getattr(trio._core, "_traps", None), "CancelShieldedCheckpoint", None)
    if message is None:
        return trio.lowlevel.cancel_shielded_checkpoint

    @types.coroutine
    def bare_turn() -> Generator[object, object, None]:
        # trio answers with Value(None), which needs no unwrapping.
        yield message

    return bare_turn


#: ``await schedule_point()``: let every other runnable task run, then go
#: on.  Not a cancel point (see the module docstring).
schedule_point = _bare_turn()
