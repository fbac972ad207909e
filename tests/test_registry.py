"""The registry: arrival order, limits, and outboxes."""

from __future__ import annotations

import trio

from eco_trio.server.registry import Registry, format_address


def test_register_in_arrival_order_until_full() -> None:
    registry = Registry(max_clients=2)
    first = registry.register("127.0.0.1:1", now=0.0)
    second = registry.register("[::1]:2", now=1.0)
    assert first is not None and second is not None
    assert registry.register("127.0.0.1:3", now=2.0) is None
    assert [row.split()[0] for row in registry.listing(second, now=5.0)] == ["127.0.0.1:1", "[::1]:2"]
    registry.unregister(first)
    assert registry.register("127.0.0.1:3", now=2.0) is not None


def test_listing_shows_age_idle_and_the_requester() -> None:
    registry = Registry(max_clients=5)
    entry = registry.register("127.0.0.1:1", now=10.0)
    assert entry is not None
    entry.last_line_at = 12.0
    assert registry.listing(entry, now=15.0) == [
        "127.0.0.1:1 conectado=5s inactivo=3s lineas=0/0 bytes=0/0 (tú)"
    ]


async def test_notify_goes_through_the_outbox_and_interrupts_a_reader() -> None:
    registry = Registry(max_clients=5)
    entry = registry.register("127.0.0.1:1", now=0.0)
    assert entry is not None
    handle = registry.handle(entry)
    assert handle.pending_notices() == []
    with trio.CancelScope() as scope:
        handle.scope, handle.reading = scope, True
        registry.notify_all(b"AVISO\n")
        registry.notify_all(b"only once\n")  # a closing entry hears nothing more
        await trio.sleep_forever()
    assert scope.cancelled_caught and handle.interrupted and handle.closing
    assert handle.pending_notices() == [b"AVISO\n"]
    registry.unregister(entry)
    assert handle.pending_notices() == []


def test_format_address() -> None:
    assert format_address(("10.0.0.1", 80)) == "10.0.0.1:80"
    assert format_address(("::1", 5000, 0, 0)) == "[::1]:5000"
