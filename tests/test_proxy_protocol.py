"""The PROXY protocol parser (sans-IO): v1 and v2, split anywhere, bounded."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eco_trio.wire.proxy import MAX_HEADER, V2_SIGNATURE, BadHeader, Local, Proxied, parse


def v2(command: int, family: int, payload: bytes) -> bytes:
    return V2_SIGNATURE + bytes([0x20 | command, family]) + len(payload).to_bytes(2, "big") + payload


def v2_tcp4(source: str, port: int) -> bytes:
    addresses = ipaddress.IPv4Address(source).packed + ipaddress.IPv4Address("10.0.0.1").packed
    return v2(1, 0x11, addresses + port.to_bytes(2, "big") + (5000).to_bytes(2, "big"))


def test_v1_tcp4_and_tcp6() -> None:
    assert parse(b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 5000\r\nhola\n") == Proxied(
        "192.0.2.7:51234", b"hola\n"
    )
    six = b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 5000\r\n"
    assert parse(six) == Proxied("[2001:db8::7]:4000", b"")
    assert parse(b"PROXY UNKNOWN\r\n") == Local(b"")


def test_v2_proxy_and_local() -> None:
    assert parse(v2_tcp4("198.51.100.9", 40000) + b"x") == Proxied("198.51.100.9:40000", b"x")
    with_tlv = v2_tcp4("198.51.100.9", 40000)[16:] + bytes([0x04, 0, 3, 1, 2, 3])  # a NOOP TLV
    assert parse(v2(1, 0x11, with_tlv) + b"x") == Proxied("198.51.100.9:40000", b"x")
    assert parse(v2(1, 0x11, with_tlv)[:-1]) is None
    six = ipaddress.IPv6Address("2001:db8::9").packed + bytes(16) + (7).to_bytes(2, "big") + bytes(2)
    assert parse(v2(1, 0x21, six)) == Proxied("[2001:db8::9]:7", b"")
    assert parse(v2(0, 0x00, b"")) == Local(b"")  # HAProxy's check-send-proxy


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n",
        b"hola\n",
        b"PROXY TCP4 999.0.0.1 10.0.0.1 1 2\r\n",
        b"PROXY TCP4 ::1 10.0.0.1 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 10.0.0.1 1\r\n",
        b"PROXY TCP4 1.2.3.4 10.0.0.1 65536 1\r\n",
        b"PROXY TCP4 1.2.3.4 10.0.0.1 1 65536\r\n",
        b"PROXY TCP4 1.2.3.4 10.0.0.1 +1 2\r\n",
        b"PROXY TCP4 1.2.3.4 10.0.0.1 1_0 2\r\n",
        b"PROXY TCP4 01.2.3.4 10.0.0.1 1 2\r\n",
        b"PROXY TCP4 1.2.3.4  10.0.0.1 1 2\r\n",
        b"PROXY " + b"9" * 120,
        V2_SIGNATURE + bytes([0x21, 0x11]) + (4096).to_bytes(2, "big"),
        V2_SIGNATURE + bytes([0x11, 0x11, 0, 0]),
    ],
)
def test_bad_headers_are_refused(data: bytes) -> None:
    with pytest.raises(BadHeader):
        parse(data)


@given(st.sampled_from([b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 5000\r\n", v2_tcp4("192.0.2.8", 1)]))
def test_a_header_split_anywhere_is_only_whole_at_its_end(header: bytes) -> None:
    for cut in range(len(header)):
        assert parse(header[:cut]) is None
    assert isinstance(parse(header), Proxied)


@given(st.ip_addresses(v=4), st.ip_addresses(v=4), st.integers(0, 65535), st.integers(0, 65535))
def test_any_ipv4_client_is_named_as_ipaddress_names_it(
    source: ipaddress.IPv4Address, destination: ipaddress.IPv4Address, port: int, to_port: int
) -> None:
    """The v1 shortcut (a regular expression) and v2's bytes give the same
    text as ipaddress, which the general path uses."""
    line = f"PROXY TCP4 {source} {destination} {port} {to_port}\r\n".encode()
    assert parse(line + b"x") == Proxied(f"{source}:{port}", b"x")
    assert parse(v2_tcp4(str(source), port)) == Proxied(f"{source}:{port}", b"")


@given(st.lists(st.text("0123456789", min_size=1, max_size=4), min_size=4, max_size=4))
def test_a_v1_address_is_taken_only_if_ipaddress_takes_it(octets: list[str]) -> None:
    """Leading zeros, octets over 255: refused exactly when ipaddress
    refuses them, on whichever path the line takes."""
    source = ".".join(octets)
    try:
        expected: object = Proxied(f"{ipaddress.IPv4Address(source)}:1", b"")
    except ValueError:
        expected = BadHeader
    line = f"PROXY TCP4 {source} 10.0.0.1 1 2\r\n".encode()
    try:
        got: object = parse(line)
    except BadHeader:
        got = BadHeader
    assert got == expected


def test_the_bound() -> None:
    assert MAX_HEADER <= 1024


def test_behind_a_proxy_the_client_address_is_used_everywhere() -> None:
    """A trusted proxy (loopback, the default) relays two clients and a
    health check: LISTAR shows the clients' own addresses, DESCONEXION from
    a remote-looking client is refused, and the checks are counted, not
    listed."""
    import io
    import socket
    import time

    from .processes import TIMEOUT, server_process

    def relayed(port: int, header: bytes) -> tuple[socket.socket, io.BufferedReader]:
        sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        sock.sendall(header)
        return sock, sock.makefile("rb")

    with server_process("--proxy-protocol") as server:
        one, one_in = relayed(server.port, b"PROXY TCP4 203.0.113.5 10.0.0.1 4444 5000\r\n")
        two, two_in = relayed(server.port, v2_tcp4("198.51.100.9", 40000) + b"hola\n")
        check, check_in = relayed(server.port, v2(0, 0x00, b""))
        plain_check = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
        plain_check.close()  # connect and close: a TCP health check
        try:
            assert one_in.readline().startswith(b"BIENVENIDO")
            assert two_in.readline().startswith(b"BIENVENIDO")
            assert two_in.readline() == b"HOLA\n"  # the bytes after the header
            one.sendall(b"LISTAR\n")
            assert one_in.readline() == b"CLIENTES 2\n"
            rows = [one_in.readline().decode().split()[0] for _ in range(2)]
            assert rows == ["203.0.113.5:4444", "198.51.100.9:40000"]
            one.sendall(b"DESCONEXION\n")
            assert one_in.readline().startswith(b"ERROR DESCONEXION solo se acepta desde localhost")
            deadline = time.monotonic() + TIMEOUT
            while True:  # the checks are handled in their own time
                one.sendall(b"ESTADO\n")
                count = int(one_in.readline().split()[1])
                status = dict(one_in.readline().decode().split() for _ in range(count))
                if status["health_checks"] == "2" or time.monotonic() > deadline:
                    break
                time.sleep(0.02)
            assert status["health_checks"] == "2" and status["clients"] == "2"
        finally:
            for reader in (one_in, two_in, check_in):
                reader.close()
            for sock in (one, two, check):
                sock.close()
        assert server.process.poll() is None
        server.wait_for("connected 203.0.113.5:4444")
        # The balancer itself (loopback) never shows as a client in the log.
        assert not any("connected 127.0.0.1" in line for line in server.log)


def test_a_proxy_header_from_an_untrusted_address_is_refused() -> None:
    import socket

    from .processes import TIMEOUT, server_process

    with server_process("--proxy-protocol", "--trusted-proxy", "192.0.2.0/24") as server:
        # Loopback is not trusted here: its clients are direct ones.
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as direct:
            reader = direct.makefile("rb")
            assert reader.readline().startswith(b"BIENVENIDO")
            direct.sendall(b"hola\n")
            assert reader.readline() == b"HOLA\n"
            reader.close()
        for header in (b"PROXY TCP4 198.51.100.1 10.0.0.1 1 2\r\n", v2_tcp4("198.51.100.1", 1)):
            with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as liar:
                reader = liar.makefile("rb")
                assert reader.readline().startswith(b"BIENVENIDO")
                liar.sendall(header)
                assert reader.read() == b""  # closed, not one more byte
                reader.close()
        server.wait_for("it spoke PROXY")


def test_a_header_that_comes_late_and_in_pieces_is_still_read() -> None:
    """The accept loop finds nothing yet; a task waits for the rest (the
    slow path), then serves the client it names.  A malformed header from
    the same trusted proxy is refused and logged."""
    import socket
    import time

    from .processes import TIMEOUT, server_process

    header = b"PROXY TCP4 192.0.2.44 10.0.0.1 4321 5000\r\n"
    with server_process("--proxy-protocol") as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as late:
            time.sleep(0.2)  # accepted, and nothing sent yet
            late.sendall(header[:9])
            time.sleep(0.2)
            late.sendall(header[9:] + b"LISTAR\n")
            with late.makefile("rb") as replies:
                assert replies.readline().startswith(b"BIENVENIDO")
                assert replies.readline() == b"CLIENTES 1\n"
                assert replies.readline().startswith(b"192.0.2.44:4321 ")
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as wrong:
            time.sleep(0.2)
            wrong.sendall(b"GET / HTTP/1.1\r\n\r\n")
            with wrong.makefile("rb") as replies:
                assert replies.read() == b""  # closed, not greeted
        server.wait_for("closed a connection from proxy 127.0.0.1")


def test_a_v2_header_larger_than_the_first_read_is_read_on() -> None:
    """The accept loop reads at most 256 bytes of a header; a v2 header with
    more TLVs than that (cloud balancers add some) is read on by a task,
    whole, and the bytes after it are the client's first line."""
    import socket

    from .processes import TIMEOUT, server_process

    addresses = ipaddress.IPv4Address("192.0.2.81").packed + ipaddress.IPv4Address("10.0.0.1").packed
    noop_tlv = bytes([0x04]) + (400).to_bytes(2, "big") + bytes(400)  # PP2_TYPE_NOOP
    header = v2(1, 0x11, addresses + (6001).to_bytes(2, "big") + (5000).to_bytes(2, "big") + noop_tlv)
    assert 256 < len(header) <= MAX_HEADER
    with (
        server_process("--proxy-protocol") as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as relayed,
    ):
        relayed.sendall(header + b"LISTAR\n")
        with relayed.makefile("rb") as replies:
            assert replies.readline().startswith(b"BIENVENIDO")
            assert replies.readline() == b"CLIENTES 1\n"
            assert replies.readline().startswith(b"192.0.2.81:6001 ")
