"""Streams and how they wait: the socket stream, the readiness paths
(epoll reactor, trio's portable one), the TLS stream, scheduling.  Knows the
wire at most; knows nothing of servers or clients."""
