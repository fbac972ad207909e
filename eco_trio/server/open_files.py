"""Fitting ``--max-clients`` to the process's open-files limit.

Every client costs a file descriptor.  If the limit is lower than
``--max-clients``, connections past it are never accepted: they get neither
a greeting nor an ERROR line, and ``accept`` fails over and over.  So, as
Redis does with ``maxclients``, the soft limit is raised as far as the hard
limit allows, and if the clients still do not fit, fewer are allowed, said
once at start.
"""

from __future__ import annotations

import logging

log = logging.getLogger("eco_trio.server")

#: Descriptors kept for everything but clients: stdio, trio's and the
#: reactor's epoll and wake-up sockets, listeners, and a refused connection
#: in the moment it is being told so (Redis reserves 32 too).
RESERVED = 32


def fit_clients(max_clients: int, others: int = 0) -> int:
    """How many clients the open-files limit allows, at most ``max_clients``,
    after raising the soft limit to the hard one.  ``others``: descriptors
    held besides clients' (TLS handshakes in progress, metrics scrapes)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows has no such limit
        return max_clients
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    reserved = RESERVED + others
    wanted = max_clients + reserved
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit from %d: %s", soft, exc)
    log.debug("open-files limit: %d", soft)
    if soft == resource.RLIM_INFINITY or soft >= max_clients + reserved:
        return max_clients
    fitting = max(soft - reserved, 1)
    log.warning(
        "max_clients lowered from %d to %d: the open-files limit is %d (ulimit -n) and %d "
        "descriptors are kept for the server itself",
        max_clients,
        fitting,
        soft,
        reserved,
    )
    return fitting
