"""How a busy connection takes its turn: cheaply, through trio's public API.

A busy connection takes one turn per message (its stream lets every other
task run before it reads again).  trio's public way to take a turn,
``checkpoint()``, is also a cancel point; :func:`schedule_point` is the bare
turn, ``trio.lowlevel.cancel_shielded_checkpoint()``: a schedule point that
is not a cancel point.  A caller that takes many turns in a row must still
take a full checkpoint now and then, so a cancellation reaches it (the
socket stream takes one every 16 reads).

An earlier version yielded trio's private trap message directly, which
saved about half a microsecond a turn; trio's maintainers ask for public
API (python-trio/trio#2022, PR #1613), and a change in trio's traps would
have dropped every busy connection with a TypeError.  The cost of the
public call is measured in the closing note of issue 20.

The first-in, first-out task order, which does rely on trio's private
state, is opt-in: ``servidor --fifo`` (:mod:`eco_trio.transport.fifo`).
"""

from __future__ import annotations

import trio

#: ``await schedule_point()``: let every other runnable task run, then go
#: on.  Not a cancel point (see the module docstring).
schedule_point = trio.lowlevel.cancel_shielded_checkpoint
