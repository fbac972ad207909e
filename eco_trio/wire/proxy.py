"""The PROXY protocol, versions 1 and 2 (HAProxy's ``proxy-protocol.txt``),
sans-IO: what a load balancer sends first, naming the client it relays.

:func:`parse` takes the bytes received so far and says whether a whole
header is there: :class:`Proxied` (the client's address, and the bytes after
the header, which belong to the conversation), :class:`Local` (a v2 LOCAL
command: the balancer's own health check, no client), ``None`` (not all of
it yet), or it raises :class:`BadHeader`.  A header is at most
:data:`MAX_HEADER` bytes (v1's 107, v2's 16-byte head plus what it
declares, capped here): more without a complete header is an error, so a
peer cannot make the server buffer without end.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Final, NamedTuple

V1_PREFIX: Final = b"PROXY "
V1_MAX: Final = 107  # the spec's bound, CRLF included
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
#: What a read that is a PROXY header starts with; and, for a first read
#: that ends a line, the first six bytes of each (a v2 signature holds a
#: newline, so a read may end inside it).
SIGNATURES: Final = (V1_PREFIX, V2_SIGNATURE)
STARTS: Final = (V1_PREFIX, V2_SIGNATURE[:6])
#: v2 headers larger than this (TLVs included) are refused.
V2_MAX_PAYLOAD: Final = 512
MAX_HEADER: Final = 16 + V2_MAX_PAYLOAD


_OCTET = rb"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = rb"(" + _OCTET + rb"(?:\." + _OCTET + rb"){3})"
_PORT = rb"(0|[1-9][0-9]{0,4})"
_PORT_TEXT = re.compile(_PORT)
#: The usual v1 line, TCP over IPv4, in its one canonical spelling, and the
#: bytes after it: matched at once.  Anything else takes the general path
#: below, which needs ipaddress (a few microseconds, on every connection,
#: otherwise).
_V1_TCP4 = re.compile(
    rb"PROXY TCP4 " + _IPV4 + b" " + _IPV4 + b" " + _PORT + b" " + _PORT + rb"\r\n(.*)", re.DOTALL
)


class BadHeader(ValueError):
    """Not a valid PROXY header (the connection is closed)."""


class Proxied(NamedTuple):
    """A client's connection, relayed.  (A named tuple: made once a
    connection, and a frozen dataclass costs twice as much to make.)"""

    #: The client's address, ``ip:port`` (``[ip]:port`` for IPv6).
    address: str
    #: What came after the header: the client's first bytes.
    rest: bytes


@dataclass(frozen=True, slots=True)
class Local:
    """A connection the balancer makes on its own (a health check)."""

    rest: bytes


_new_tuple: Final = tuple.__new__
#: The start of a v2 header for a client over TCP and IPv4 (version 2,
#: command PROXY, family AF_INET and protocol STREAM).
_V2_TCP4: Final = V2_SIGNATURE + b"\x21\x11"


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse(data: bytes) -> Proxied | Local | None:
    """A whole header at the start of ``data``, or None if more is needed."""
    # This runs once a connection, with the server's other work between two
    # runs, so every operation counts several times its cost in a loop.
    # The two headers balancers nearly always send, v1 and v2 over IPv4,
    # take a few steps each: one match and one call for all the groups (the
    # port checked only at five digits), or one f-string for v2; and the
    # tuple is made without NamedTuple's Python __new__.
    if (usual := _V1_TCP4.match(data)) is not None:
        host, _, port, to_port, rest = usual.groups()
        if (len(port) < 5 or int(port) <= 65535) and (len(to_port) < 5 or int(to_port) <= 65535):
            return _new_tuple(Proxied, ((host + b":" + port).decode(), rest))
    if (
        data[:14] == _V2_TCP4
        and len(data) >= 28
        and 12 <= (length := data[14] << 8 | data[15]) <= V2_MAX_PAYLOAD
    ):
        if len(data) < 16 + length:
            return None
        ip, source_port = data[16:20], data[24] << 8 | data[25]
        address = f"{ip[0]}.{ip[1]}.{ip[2]}.{ip[3]}:{source_port}"
        return _new_tuple(Proxied, (address, data[16 + length :]))
    if data[: len(V2_SIGNATURE)] == V2_SIGNATURE[: len(data)] and len(data) < len(V2_SIGNATURE):
        return None  # could still become a v2 signature
    if data.startswith(V2_SIGNATURE):
        return _parse_v2(data)
    if V1_PREFIX.startswith(data[:6]) and len(data) < len(V1_PREFIX):
        return None
    if data.startswith(V1_PREFIX):
        return _parse_v1(data)
    raise BadHeader("no PROXY header")


def _parse_v1(data: bytes) -> Proxied | Local | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise BadHeader("a PROXY v1 line longer than 107 bytes")
        return None
    words = data[:end].split(b" ")
    rest = data[end + 2 :]
    if words[1:2] == [b"UNKNOWN"]:
        return Local(rest)  # the balancer could not say: as its own connection
    if len(words) != 6 or words[1] not in (b"TCP4", b"TCP6"):
        raise BadHeader("a malformed PROXY v1 line")
    try:
        source = ipaddress.ip_address(words[2].decode("ascii"))
        ipaddress.ip_address(words[3].decode("ascii"))
        if not all(_PORT_TEXT.fullmatch(word) for word in words[4:6]):
            raise ValueError
        port, to_port = int(words[4]), int(words[5])
    except (ValueError, UnicodeDecodeError):
        raise BadHeader("a malformed PROXY v1 address") from None
    if (source.version == 4) != (words[1] == b"TCP4") or max(port, to_port) > 65535:
        raise BadHeader("a malformed PROXY v1 address")
    return Proxied(_address(str(source), port), rest)


def _parse_v2(data: bytes) -> Proxied | Local | None:
    if len(data) < 16:
        return None
    version_command, family, length = data[12], data[13], int.from_bytes(data[14:16], "big")
    if version_command >> 4 != 2:
        raise BadHeader("a PROXY v2 header of another version")
    if length > V2_MAX_PAYLOAD:
        raise BadHeader(f"a PROXY v2 header of {length} bytes (at most {V2_MAX_PAYLOAD})")
    if len(data) < 16 + length:
        return None
    payload, rest = data[16 : 16 + length], data[16 + length :]
    command = version_command & 0x0F
    if command == 0:
        return Local(rest)
    if command != 1:
        raise BadHeader("a PROXY v2 header with an unknown command")
    if family == 0x11 and length >= 12:  # TCP over IPv4
        host = ".".join(map(str, payload[0:4]))
        port = int.from_bytes(payload[8:10], "big")
    elif family == 0x21 and length >= 36:  # TCP over IPv6
        host = str(ipaddress.IPv6Address(payload[0:16]))
        port = int.from_bytes(payload[32:34], "big")
    elif family == 0x00:
        return Local(rest)  # UNSPEC: no address to take
    else:
        raise BadHeader("a PROXY v2 header for a family other than TCP over IPv4 or IPv6")
    return Proxied(_address(host, port), rest)
