"""The node's lean RESP client: the reply parser (sans-IO) and the link
against a real redis-server."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eco_trio.server.cluster.resp import Link, ReplyError, encode, parse

from .redis_server import RedisServer


def test_replies_of_every_kind() -> None:
    assert parse(b"+OK\r\n") == ("OK", 5)
    assert parse(b":-3\r\n") == (-3, 5)
    assert parse(b"$5\r\nhola\n\r\n") == ("hola\n", 11)  # a bulk may hold a newline
    assert parse(b"$-1\r\n") == (None, 5)
    assert parse(b"*2\r\n:1\r\n*1\r\n$1\r\nx\r\n") == ([1, ["x"]], 19)
    error, _ = parse(b"-NOSCRIPT No matching script\r\n")  # type: ignore[misc]
    assert isinstance(error, ReplyError) and str(error).startswith("NOSCRIPT")


@given(st.recursive(st.integers() | st.text(), lambda inner: st.lists(inner, max_size=4), max_leaves=12))
def test_a_reply_split_anywhere_parses_only_once_whole(value: object) -> None:
    def resp(item: object) -> bytes:
        if isinstance(item, int):
            return b":%d\r\n" % item
        if isinstance(item, str):
            return b"$%d\r\n%s\r\n" % (len(item.encode()), item.encode())
        assert isinstance(item, list)
        return b"*%d\r\n" % len(item) + b"".join(resp(part) for part in item)

    data = resp(value)
    for cut in range(len(data)):
        assert parse(data[:cut]) is None
    assert parse(data + b"+next\r\n") == (value, len(data))


def test_encode() -> None:
    assert encode("SET", "k", 5) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n5\r\n"


async def test_scripts_survive_a_flushed_script_cache(redis: RedisServer) -> None:
    link = Link(redis.url)
    try:
        assert await link.script("return ARGV[1]", "uno") == "uno"
        redis.command("SCRIPT", "FLUSH")  # what a restarted Redis has
        assert await link.script("return ARGV[1]", "dos") == "dos"
        with pytest.raises(ReplyError):
            await link.call("NOSUCHCOMMAND")
        assert await link.call("PING") == "PONG"  # the link goes on after an error reply
    finally:
        await link.aclose()
