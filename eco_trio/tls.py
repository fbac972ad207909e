"""TLS and mutual TLS, on trio's ``SSLStream`` over eco_trio's own stream.

The server wraps each connection accepted on its TLS port in a
:class:`trio.SSLStream` and does the handshake before the conversation
starts, within a deadline: a client that never finishes it (a slowloris on
the handshake) is closed, and frees its slot.  Everything above the stream
(the conversation, the limits, the send timeout, shutdown) is the same code
as for plain text.

Contexts use the ssl module's secure defaults
(``ssl.create_default_context``): TLS 1.2 at least, certificate checks on.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .registry import ClientEntry

log = logging.getLogger("eco_trio.server")

DEFAULT_HANDSHAKE_TIMEOUT = 10.0


def server_context(cert: str, key: str, ca: str | None = None) -> ssl.SSLContext:
    """The server's context; with ``ca`` (a file or a directory of CA
    certificates) clients must present a certificate it signed."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if ca is not None:
        if os.path.isdir(ca):
            context.load_verify_locations(capath=ca)
        else:
            context.load_verify_locations(cafile=ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(ca: str | None = None, cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
    """A client's context: trust ``ca`` (default: the system's store), and
    present ``cert`` when the server asks for one."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca is not None:
        if os.path.isdir(ca):
            context.load_verify_locations(capath=ca)
        else:
            context.load_verify_locations(cafile=ca)
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


def certificate_names(certificate: dict[str, Any] | None) -> list[str]:
    """A peer certificate's names: its subject's common name, then its
    subject alternative names (DNS, email, URI, IP), in that order."""
    if not certificate:
        return []
    names = [value for rdn in certificate.get("subject", ()) for key, value in rdn if key == "commonName"]
    names += [value for _, value in certificate.get("subjectAltName", ())]
    return list(dict.fromkeys(names))


def describe(exc: BaseException) -> str:
    """What went wrong in a handshake, in a few words (no traceback)."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ssl.SSLError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {cause.verify_message}"
    if isinstance(cause, ssl.SSLError):
        return (cause.reason or str(cause)).replace("_", " ").lower()
    return str(exc) or type(exc).__name__


async def serve_tls(
    stream: trio.abc.Stream,
    entry: ClientEntry,
    context: ssl.SSLContext,
    handshake_timeout: float,
    conversation: Callable[[trio.abc.Stream, ClientEntry], Awaitable[None]],
    give_up: Callable[[ClientEntry], None],
) -> None:
    """Handshake within ``handshake_timeout`` seconds, then run ``conversation`` over
    TLS.  A failed or late handshake is logged once, at INFO, with its
    reason; ``give_up`` releases the client's slot, and the connection is
    closed at once."""
    tls_stream = trio.SSLStream(stream, context, server_side=True)
    failure: str | None = None
    with trio.move_on_after(handshake_timeout) as deadline:
        try:
            await tls_stream.do_handshake()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            failure = describe(exc)
    if deadline.cancelled_caught:
        failure = f"no handshake within {handshake_timeout:g} s (--tls-handshake-timeout)"
    if failure is not None:
        log.info("%s: TLS handshake failed: %s", entry.address, failure)
        give_up(entry)
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)
        return
    names = certificate_names(tls_stream.getpeercert())
    entry.certificate_names = tuple(names)
    await conversation(tls_stream, entry)
