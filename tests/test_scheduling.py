"""The server's tasks take turns first in, first out (eco_trio.scheduling)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import trio
from trio._core import _run

from eco_trio.transport.scheduling import fifo_order, schedule_point

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


def test_this_trio_gets_the_bare_turn_not_its_public_fallback() -> None:
    # The fallback works but costs what the bare turn saves: a trio that no
    # longer has the message fails here rather than quietly losing the gain.
    assert schedule_point is not trio.lowlevel.cancel_shielded_checkpoint


#: Run as production runs: a fresh interpreter, without pytest's plugins
#: (hypothesis's sends trio down another branch of its scheduler, so the
#: tests above never see the one the server uses).
_PRODUCTION_ORDER = """
import sys, trio
from eco_trio.transport.scheduling import fifo_order
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
    """Strictly first in, first out in every pass, as the server runs; a
    trio that changes its scheduler fails here."""
    result = subprocess.run(
        [sys.executable, "-c", _PRODUCTION_ORDER], capture_output=True, text=True, timeout=30, check=True
    )
    assert result.stdout.split() == ["True", "True", "False"], result.stdout + result.stderr
