"""Listening sockets, and what is done to each accepted one: TCP options,
and the quick refusal of a client the server cannot take."""

from __future__ import annotations

import contextlib
import errno
import socket
import sys

import trio

from eco_trio.server.registry import format_address

#: accept() errors that mean only that one connection failed (the list trio's
#: SocketListener skips): Linux reports a firewall's refusal as EPERM, and
#: pending network errors of the new connection come out of accept too.
CONNECTION_ACCEPT_ERRORS = {
    getattr(errno, name)
    for name in (
        "EPERM", "ECONNABORTED", "EPROTO", "ENETDOWN", "ENOPROTOOPT", "EHOSTDOWN", "ENONET",
        "EHOSTUNREACH", "EOPNOTSUPP", "ENETUNREACH", "ENOSR", "ESOCKTNOSUPPORT",
        "EPROTONOSUPPORT", "ETIMEDOUT", "ECONNRESET",
    )
    if hasattr(errno, name)
}  # fmt: skip


#: Any other accept() error (out of file descriptors or memory, above all)
#: makes the loop wait this long before trying again, as trio's
#: serve_listeners does: the server must neither stop nor spin.
ACCEPT_BACKOFF = 0.1


KEEPALIVE_IDLE = 60


KEEPALIVE_INTERVAL = 15


KEEPALIVE_PROBES = 4


#: Whether accepted sockets inherit the listener's TCP options (Linux does).
OPTIONS_INHERITED = sys.platform.startswith("linux")


def refuse(sock: socket.socket, line: bytes) -> None:
    """Say why and close at once: a storm of refused connections must not
    hold file descriptors.  A new socket's send buffer is empty, so the line
    goes out without waiting; reading what the client already sent keeps
    the close from becoming a reset that could destroy that line."""
    try:
        sock.setblocking(False)
        if line:
            sock.send(line)
        sock.recv(65536)
    except OSError:
        pass  # nothing there to read, or the client is already gone
    finally:
        sock.close()


def tune(sock: socket.socket) -> None:
    """Connection socket options: no Nagle delay on replies, and TCP
    keepalive so a peer that vanished without a FIN (a half-open connection)
    is found within about two minutes, not the kernel's default two hours.

    Set on each listener; Linux copies them to every accepted socket, which
    saves five system calls per connection.  Elsewhere they are set again on
    each connection (see ``OPTIONS_INHERITED``)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    # Linux, recent macOS and Windows 10 have these; where one is missing or
    # refused, the OS default applies.
    for name, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
        ("TCP_KEEPCNT", KEEPALIVE_PROBES),
    ):
        if hasattr(socket, name):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


async def open_listeners(
    host: str, port: int, backlog: int, *, reuse_port: bool = False, listen: bool = True
) -> list[socket.socket]:
    """Non-blocking listening sockets for every address ``host`` resolves to.

    With port 0 and several addresses, all listeners share the first one's
    port when it is free on the others, so one number reaches them all.
    ``reuse_port`` (Linux): other processes may listen on the same port, and
    the kernel spreads connections over them.  ``listen=False`` only binds
    (a supervisor holding the port number for its workers).
    """
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    seen: set[tuple[int, object]] = set()
    listeners: list[socket.socket] = []
    try:
        for family, type_, proto, _, sockaddr in infos:
            if (family, sockaddr[0]) in seen:
                continue
            seen.add((family, sockaddr[0]))
            if port == 0 and listeners:
                shared = listeners[0].getsockname()[1]
                sockaddr = (sockaddr[0], shared, *sockaddr[2:])
            sock = socket.socket(family, type_, proto)
            listeners.append(sock)
            if sys.platform != "win32":
                # Restart at once on a port in TIME_WAIT.  On Windows the same
                # option lets another process steal a port in use (as trio's
                # open_tcp_listeners notes), and immediate reuse is the default.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                sock.bind(sockaddr)
            except OSError as exc:
                if port == 0 and exc.errno == errno.EADDRINUSE:
                    sock.bind((sockaddr[0], 0, *sockaddr[2:]))
                else:
                    # The address goes in filename: the caller names the one that failed.
                    raise OSError(exc.errno, exc.strerror, format_address(sockaddr)) from None
            tune(sock)
            if listen:
                sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in listeners:
            sock.close()
        raise
    return listeners


async def open_one_listener(host: str, port: int, backlog: int) -> socket.socket:
    """One listening socket, on the first address ``host`` resolves to:
    an endpoint a scraper asks at one address (``--metrics``)."""
    first, *others = await open_listeners(host, port, backlog)
    for other in others:
        other.close()
    return first
