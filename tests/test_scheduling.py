"""The server's tasks take turns first in, first out (eco_trio.scheduling)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import trio
from trio._core import _run

from eco_trio.transport.fifo import fifo_order
from eco_trio.transport.scheduling import schedule_point

TASKS, PASSES = 10, 40


def turn_orders() -> list[list[int]]:
    """Which task went when, pass by pass, for tasks that each take one turn
    per scheduler pass (as busy connection tasks do)."""
    turns: list[int] = []

    async def task(number: int) -> None:
        for _ in range(PASSES):
            turns.append(number)
            await trio.lowlevel.checkpoint()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for number in range(TASKS):
                nursery.start_soon(task, number)

    trio.run(main)
    return [turns[start : start + TASKS] for start in range(0, len(turns), TASKS)]


def test_tasks_keep_their_order_from_pass_to_pass() -> None:
    with fifo_order() as arranged:
        orders = turn_orders()
    assert arranged
    # The first pass follows trio's start order; every later one repeats it.
    assert all(order == orders[1] for order in orders[1:]), orders


def test_trio_alone_shuffles_the_order_which_is_what_fifo_order_fixes() -> None:
    # The control: without fifo_order, trio reverses some passes (each with
    # probability 1/2: all 39 the same by chance is 2**-38).
    orders = turn_orders()
    assert any(order != orders[1] for order in orders[1:])


def test_trio_gets_its_own_coin_back() -> None:
    coin = _run._r
    with fifo_order():
        assert _run._r is not coin
    assert _run._r is coin


def test_an_unknown_scheduler_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_run, "_r", object())
    with fifo_order() as arranged:
        assert not arranged


# --- the bare turn --------------------------------------------------------------------


async def test_schedule_point_gives_every_other_task_a_turn() -> None:
    turns = 0

    async def other() -> None:
        nonlocal turns
        while True:
            turns += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        await trio.lowlevel.checkpoint()  # other is running
        before = turns
        for _ in range(PASSES):
            await schedule_point()
        nursery.cancel_scope.cancel()
    # A turn of the other task per turn of ours (give or take the first,
    # as trio orders the batch).
    assert turns - before >= PASSES - 1


async def test_schedule_point_is_not_a_cancel_point() -> None:
    # Which is why a caller that takes turn after turn must take a full
    # checkpoint now and then (SocketStream: every CANCEL_POINT_EVERY reads).
    with trio.CancelScope() as scope:
        scope.cancel()
        await schedule_point()
        reached = True
        await trio.lowlevel.checkpoint()
        reached = False
    assert reached


def test_the_bare_turn_is_trios_public_one() -> None:
    # trio's contract: public API on every path that runs by default.
    assert schedule_point is trio.lowlevel.cancel_shielded_checkpoint


#: Run as production runs: a fresh interpreter, without pytest's plugins
#: (hypothesis's sends trio down another branch of its scheduler).
_PRODUCTION_ORDER = """
import sys, trio
from eco_trio.transport.fifo import fifo_order
turns = []
async def task(number):
    for _ in range(40):
        turns.append(number)
        await trio.lowlevel.checkpoint()
async def main():
    async with trio.open_nursery() as nursery:
        for number in range(10):
            nursery.start_soon(task, number)
with fifo_order() as arranged:
    trio.run(main)
passes = [turns[i : i + 10] for i in range(0, len(turns), 10)]
print(arranged, all(order == passes[1] for order in passes[1:]), "hypothesis" in sys.modules)
"""


def test_fifo_order_holds_on_the_branch_production_runs() -> None:
    """Strictly first in, first out in every pass, as the server runs it
    with --fifo; a trio that changes its scheduler fails here."""
    result = subprocess.run(
        [sys.executable, "-c", _PRODUCTION_ORDER], capture_output=True, text=True, timeout=30, check=True
    )
    assert result.stdout.split() == ["True", "True", "False"], result.stdout + result.stderr


_DEFAULT_ORDER = """
import sys
from trio._core import _run
from eco_trio.cli import servidor as main
coin = _run._r
with main._task_order(False):
    untouched = _run._r is coin and "eco_trio.transport.fifo" not in sys.modules
with main._task_order(True):
    fixed = _run._r is not coin
print(untouched, fixed, _run._r is coin)
"""


def test_fifo_is_opt_in_and_loaded_only_when_asked() -> None:
    """Without --fifo the server leaves trio's scheduler alone and never
    imports the module that reaches into it; with it, the coin is fixed and
    put back afterwards."""
    result = subprocess.run(
        [sys.executable, "-c", _DEFAULT_ORDER], capture_output=True, text=True, timeout=30, check=True
    )
    assert result.stdout.split() == ["True", "True", "True"]


def test_only_the_fifo_module_touches_private_trio_or_socket_state() -> None:
    """trio's contract: public API on every default path.  A private name
    of trio's (``trio._core``, ``trio.lowlevel._x``) or of a socket's
    (``sock._accept``) anywhere else fails here."""
    import pathlib
    import re

    package = pathlib.Path(__file__).resolve().parent.parent / "eco_trio"
    private = re.compile(r"\btrio(\.\w+)*\._\w|\b_core\b|\._accept\(|\._sock\._")
    offenders = [
        f"{path.relative_to(package)}:{number}: {line.strip()}"
        for path in package.rglob("*.py")
        if path.name != "fifo.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if private.search(line) and not line.lstrip().startswith("#")
    ]
    assert offenders == []
