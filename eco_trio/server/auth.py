"""Who may see the other clients, the counters, and stop the server.

With a token set (``--token``), a client proves it either once per session,
``AUTENTICAR <token>`` (as Redis' ``AUTH``), or on the line itself,
``ESTADO <token>`` / ``DESCONEXION <token>``.  Guessing is made slow, as
OpenSSH does with ``MaxAuthTries`` and its per-source penalties:

- a connection is closed after MAX_TRIES wrong tokens;
- wrong tokens are bounded per source address, FAILURES_PER_SECOND with a
  burst of FAILURE_BURST: past that, a token from that address is not even
  compared until the bound allows it again (the reply says so);
- wrong tokens are logged once a second at most, with a count.

The comparison is in constant time (``hmac.compare_digest``).
"""

from __future__ import annotations

import enum
import hmac
from typing import Final

from eco_trio.server.handshakes import PerSource
from eco_trio.server.registry import ClientEntry

#: Wrong tokens one connection may send before it is closed.
MAX_TRIES: Final = 3
#: Wrong tokens accepted per second from one address, and at once.
FAILURES_PER_SECOND: Final = 1.0
FAILURE_BURST: Final = 5.0


class Verdict(enum.Enum):
    ACCEPTED = "accepted"
    #: No token sent (and the session has not proved it): not a guess.
    MISSING = "missing"
    WRONG = "wrong"
    #: Wrong, and the connection has had its MAX_TRIES: close it.
    WRONG_LAST = "wrong, last try"
    #: Too many wrong tokens from this address lately: not compared.
    THROTTLED = "throttled"


class TokenGuard:
    """The server's token, and the bookkeeping of wrong guesses."""

    def __init__(self, token: bytes | None) -> None:
        self.token = token
        self._failures = PerSource(FAILURES_PER_SECOND, FAILURE_BURST)
        #: Wrong or throttled tokens since the start (ESTADO).
        self.failures = 0

    @property
    def required(self) -> bool:
        return self.token is not None

    def check(self, entry: ClientEntry, token: bytes | None, now: float) -> Verdict:
        """Whether ``token`` (None: none sent) is the server's, for ``entry``.
        ACCEPTED when the server has no token or the session has proved it."""
        if self.token is None or (token is None and entry.authenticated):
            return Verdict.ACCEPTED
        if token is None:
            return Verdict.MISSING
        bound = self._failures.get(entry.address)
        if bound is not None and not bound.available(now):
            self.failures += 1
            return Verdict.THROTTLED
        if hmac.compare_digest(token, self.token):
            return Verdict.ACCEPTED
        self.failures += 1
        self._failures.bound(entry.address, now).reserve(now)
        entry.auth_failures += 1
        return Verdict.WRONG_LAST if entry.auth_failures >= MAX_TRIES else Verdict.WRONG
