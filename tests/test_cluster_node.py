"""One node's bookkeeping against a real redis-server, in this process."""

from __future__ import annotations

import trio

from eco_trio.server.registry import ClientEntry

from .redis_server import RedisServer


async def test_a_client_leaving_during_a_heartbeat_is_reported_at_the_next(redis: RedisServer) -> None:
    """A heartbeat sends who left; whoever leaves while it waits for Redis
    must go in the next one, not be forgotten (the deployment would keep
    listing them and counting them against the cap for ever)."""
    from eco_trio.server.cluster.node import Node

    async with Node(redis.url, "t", name="n1", heartbeat=1.0, lease=5.0, cap=10) as node:
        await node.join("127.0.0.1:1", dict)
        entries = [ClientEntry(f"127.0.0.1:{port}", trio.current_time()) for port in (2, 3)]
        verdict = await node.admit([entry.address for entry in entries])
        assert verdict is not None and verdict[0] == 2
        for index, entry in enumerate(entries):
            entry.seq = verdict[1] + index
            node.joined(entry)
        node.left(entries[0])
        redis.command("CLIENT", "PAUSE", "300", "WRITE")  # the heartbeat waits for Redis
        async with trio.open_nursery() as nursery:
            nursery.start_soon(node._beat, lambda why: None)
            await trio.sleep(0.1)
            node.left(entries[1])  # meanwhile
        await node._beat(lambda why: None)
        assert redis.command("ZCARD", "t:order") == 0
        assert redis.command("HLEN", "t:clients:n1") == 0
