"""What a service manager (systemd) asks of a server: readiness and
stopping notices (``sd_notify``), the watchdog, and listening sockets it
passes in (socket activation).

The protocol is small and stable (``man sd_notify``, ``man
sd_listen_fds``): a datagram of ``KEY=value`` lines to the unix socket named
by ``$NOTIFY_SOCKET``, and sockets from descriptor 3 on, ``$LISTEN_FDS`` of
them, for the process ``$LISTEN_PID``.  No package is needed for it.  The
command line reads the environment and hands the values here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("eco_trio.server")

#: The first descriptor systemd passes (SD_LISTEN_FDS_START).
LISTEN_FDS_START = 3


class Notifier:
    """Sends state to the service manager; does nothing where there is
    none (no ``$NOTIFY_SOCKET``)."""

    def __init__(self, address: str | None) -> None:
        # An abstract socket is written with a leading "@" (systemd's convention).
        if address is not None and address.startswith("@"):
            address = "\0" + address[1:]
        self._address = address or None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> Notifier:
        return cls(environ.get("NOTIFY_SOCKET"))

    @property
    def active(self) -> bool:
        return self._address is not None

    def send(self, **state: object) -> None:
        """``send(READY=1, STATUS="...")``: one datagram; failures are
        logged at DEBUG (a manager that went away must not stop us)."""
        if self._address is None:
            return
        message = "\n".join(f"{key}={value}" for key, value in state.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message, self._address)
        except OSError as exc:
            log.debug("could not notify the service manager: %s", exc)


def watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """How often to send ``WATCHDOG=1`` (half the manager's timeout), or
    None when no watchdog is asked for (or it is for another process)."""
    usec = environ.get("WATCHDOG_USEC")
    pid = environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    with contextlib.suppress(ValueError):
        return max(int(usec) / 2e6, 0.01)
    return None


def activated_sockets(environ: Mapping[str, str]) -> list[socket.socket]:
    """The listening sockets systemd passed (socket activation), or none."""
    if environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    try:
        count = int(environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return []
    return [socket.socket(fileno=LISTEN_FDS_START + n) for n in range(count)]
