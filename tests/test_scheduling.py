"""The server's tasks take turns first in, first out (eco_trio.scheduling)."""

from __future__ import annotations

import pytest
import trio
from trio._core import _run

from eco_trio.scheduling import fifo_order

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
