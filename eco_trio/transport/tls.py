"""TLS and mutual TLS, over eco_trio's own stream.

The server wraps each connection accepted on its TLS port in a
:class:`TLSStream` (lean, for one task; clients use trio's own
:class:`trio.SSLStream`) and does the handshake before the conversation
starts, within a deadline: a client that never finishes it (a slowloris on
the handshake) is closed, and frees its slot.  Everything above the stream
(the conversation, the limits, the send timeout, shutdown) is the same code
as for plain text.

Contexts use the ssl module's secure defaults
(``ssl.create_default_context``): TLS 1.2 at least, certificate checks on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import trio

log = logging.getLogger("eco_trio.server")

DEFAULT_HANDSHAKE_TIMEOUT = 10.0


class TLSFileError(ValueError):
    """A certificate, key or CA file that cannot be used; the message names
    the file and says what is wrong with it (as nginx's ``cannot load
    certificate "x.pem"``)."""


def _load(what: str, path: str, load: Callable[[], object]) -> None:
    try:
        load()
    except FileNotFoundError:
        raise TLSFileError(f'cannot load {what} "{path}": no such file') from None
    except PermissionError:
        raise TLSFileError(f'cannot load {what} "{path}": permission denied') from None
    except IsADirectoryError:
        raise TLSFileError(f'cannot load {what} "{path}": it is a directory') from None
    except ssl.SSLError as exc:
        reason = (exc.reason or str(exc)).replace("_", " ").lower()
        if "pem lib" in reason or "no start line" in reason or "key values mismatch" in reason:
            reason = "not a PEM private key, or not the key of this certificate"
        elif "no certificate or crl found" in reason:
            reason = "no PEM certificate in it"
        raise TLSFileError(f'cannot load {what} "{path}": {reason}') from None
    except OSError as exc:
        raise TLSFileError(f'cannot load {what} "{path}": {exc.strerror or exc}') from None


def server_context(cert: str, key: str, ca: str | None = None) -> ssl.SSLContext:
    """The server's context; with ``ca`` (a file or a directory of CA
    certificates) clients must present a certificate it signed.  Raises
    :class:`TLSFileError` naming the file that cannot be used."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_pair(context, cert, key)
    if ca is not None:
        _load("CA certificates", ca, lambda: _trust(context, ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(ca: str | None = None, cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
    """A client's context: trust ``ca`` (default: the system's store), and
    present ``cert`` when the server asks for one."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca is not None:
        _load("CA certificates", ca, lambda: _trust(context, ca))
    if cert is not None:
        _load_pair(context, cert, key)
    return context


def _load_pair(context: ssl.SSLContext, cert: str, key: str | None) -> None:
    """The certificate, then its key: each file is checked on its own, so
    the error names the one at fault."""
    _load("certificate", cert, lambda: ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cert))
    if key is not None:
        _load("key", key, lambda: open(key, "rb").close())
    _load("key", key or cert, lambda: context.load_cert_chain(cert, key))


def _trust(context: ssl.SSLContext, ca: str) -> None:
    """Trust the CA certificates in ``ca``, a file or a directory."""
    if os.path.isdir(ca):
        context.load_verify_locations(capath=ca)
    else:
        context.load_verify_locations(cafile=ca)


#: The certificate fields --tls-admin may name, as HAProxy and nginx spell
#: them (subject common name, then the subject alternative name kinds).
IDENTITY_FIELDS = ("CN", "DNS", "email", "URI", "IP")
_SAN_FIELDS = {"DNS": "DNS", "email": "email", "URI": "URI", "IP Address": "IP"}


def certificate_names(certificate: dict[str, Any] | None) -> list[str]:
    """A peer certificate's names as ``FIELD=value``: each subject common
    name (``CN=``), then each subject alternative name (``DNS=``,
    ``email=``, ``URI=``, ``IP=``), in that order."""
    if not certificate:
        return []
    names = [
        f"CN={value}" for rdn in certificate.get("subject", ()) for key, value in rdn if key == "commonName"
    ]
    names += [
        f"{_SAN_FIELDS[kind]}={value}"
        for kind, value in certificate.get("subjectAltName", ())
        if kind in _SAN_FIELDS
    ]
    return list(dict.fromkeys(names))


def parse_admin(text: str) -> str:
    """A ``--tls-admin`` value, ``FIELD=value``, with the field's canonical
    spelling; ValueError when no known field is named."""
    field, separator, value = text.partition("=")
    canonical = {name.lower(): name for name in IDENTITY_FIELDS}.get(field.strip().lower())
    if not separator or canonical is None or not value:
        fields = ", ".join(f"{name}=" for name in IDENTITY_FIELDS)
        raise ValueError(
            f"tls_admin takes FIELD=value, naming which certificate field must match ({fields}), "
            f"e.g. CN=admin or DNS=admin.example; not {text!r}"
        )
    return f"{canonical}={value}"


def admin_name(names: tuple[str, ...] | list[str], admins: tuple[str, ...]) -> str | None:
    """The ``--tls-admin`` name a certificate with ``names`` matches, if
    any.  A certificate with more than one common name matches no ``CN=``
    admin: which one would count is a matter of parser taste."""
    common_names = sum(name.startswith("CN=") for name in names)
    for name in names:
        if name in admins and (common_names == 1 or not name.startswith("CN=")):
            return name
    return None


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


class HandshakeFailed(Exception):
    """A server-side handshake failed; the message says why, in a few words."""


class NotTLS(HandshakeFailed):
    """The client spoke plain text (``nc``, ``telnet``, a client without
    ``--tls``) to the TLS port: it can be told so in plain text."""


#: What a plain-text client on the TLS port reads (as nginx's "The plain
#: HTTP request was sent to HTTPS port").
NOT_TLS_LINE = b"ERROR este puerto habla TLS: usa un cliente TLS (cliente --tls, openssl s_client).\n"


#: The most a client may send before its handshake is done: a certificate
#: chain is a few KiB, and each byte of a huge one costs the server time
#: to parse, in the event loop.
MAX_HANDSHAKE_BYTES = 32 * 1024


async def handshake(
    stream: trio.abc.Stream,
    context: ssl.SSLContext,
    seconds: float,
    wait_turn: Callable[[], Awaitable[None]],
) -> TLSStream:
    """The server's side of a handshake over ``stream``, within ``seconds``,
    as a :class:`TLSStream`.  ``wait_turn`` is awaited once the
    client has sent its first bytes, before the costly part starts (the
    rate bound).  Raises :class:`HandshakeFailed` (a late or broken
    handshake, or one past MAX_HANDSHAKE_BYTES); the caller closes
    ``stream``."""
    tls_stream = TLSStream(stream, context)
    with trio.move_on_after(seconds):
        try:
            first = await tls_stream.receive_hello()
            if first is not None and first != 0x16:  # not a TLS handshake record
                raise NotTLS("plain text on the TLS port")
            await wait_turn()
            await tls_stream.do_handshake()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise HandshakeFailed(describe(exc)) from exc
        return tls_stream
    raise HandshakeFailed(f"no handshake within {seconds:g} s (tls_handshake_timeout)")


class TLSStream(trio.abc.HalfCloseableStream):
    """TLS over a transport stream, for the server's connections: an
    ``ssl.SSLObject`` between two memory BIOs, driven by the one task that
    owns the connection.

    trio's own :class:`trio.SSLStream` is general (any number of tasks,
    renegotiation while both directions are busy), and pays for it on
    every message: pingpong over it ran at 0.57x asyncio's TLS.  A server
    connection has one task, which reads, then writes its reply: so here a
    read feeds the incoming BIO and decrypts, a write encrypts into the
    outgoing BIO and sends what it holds, and nothing else waits.

    Its half-close, :meth:`send_eof`, is TLS's close_notify: nothing more
    will be sent, and what the peer still sends can be read (TLS 1.3 allows
    that, and OpenSSL reads on after sending it).

    Resource handling: owns ``transport``; :meth:`aclose` sends close_notify
    if it was not sent yet (without waiting) and closes it.
    Error handling: TLS errors become :class:`trio.BrokenResourceError`
    with the ``ssl.SSLError`` as their cause, as with trio's SSLStream.
    """

    def __init__(
        self, transport: trio.abc.Stream, context: ssl.SSLContext, *, server_side: bool = True
    ) -> None:
        self.transport = transport
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side)
        self._eof = False
        self._close_notify_sent = False
        self._handshake_bytes = 0
        self._first_byte: int | None = None

    async def receive_hello(self) -> int | None:
        """Wait for the client's first bytes (without acting on them); the
        first byte, or None if the client closed without a word."""
        if not self._incoming.pending and not self._eof:
            await self._fill()
        return self._first_byte

    async def do_handshake(self) -> None:
        while True:
            if self._handshake_bytes > MAX_HANDSHAKE_BYTES:
                await self._send_pending_quietly()
                raise trio.BrokenResourceError(f"more than {MAX_HANDSHAKE_BYTES // 1024} KiB of handshake")
            try:
                self._ssl.do_handshake()
            except ssl.SSLWantReadError:
                if self._eof:
                    raise trio.BrokenResourceError(
                        "the peer closed the connection during the handshake"
                    ) from None
                await self._send_pending()
                await self._fill()
            except ssl.SSLError as exc:
                await self._send_pending_quietly()  # the alert tells the peer why
                raise trio.BrokenResourceError(describe(exc)) from exc
            else:
                await self._send_pending()
                return

    def getpeercert(self) -> dict[str, Any] | None:
        return self._ssl.getpeercert()

    #: TLS records are read through receive_some only.
    nowait_reads = False

    def receive_nowait(self, max_bytes: int) -> None:
        return None

    def receive_interrupter(self) -> Callable[[], None] | None:
        """The transport's: an interrupted read leaves the TLS state as it
        was, since no bytes were read."""
        offer = getattr(self.transport, "receive_interrupter", None)
        return offer() if offer is not None else None

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        size = 65536 if max_bytes is None else max_bytes
        while True:
            if self._incoming.pending or self._ssl.pending():
                try:
                    return self._ssl.read(size)
                except ssl.SSLWantReadError:
                    pass  # half a record: read more
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    # close_notify, or the connection closed without one (a
                    # "ragged EOF", which Python's own sockets take as EOF too)
                    return b""
                except ssl.SSLError as exc:
                    raise trio.BrokenResourceError(describe(exc)) from exc
            if self._eof:
                return b""
            await self._send_pending()  # a TLS 1.3 ticket or key update, say
            await self._fill()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            self._ssl.write(data)
        except ssl.SSLError as exc:
            raise trio.BrokenResourceError(describe(exc)) from exc
        await self._send_pending()

    def send_nowait(self, data: bytes | bytearray | memoryview) -> int:
        """Nothing goes without a coroutine here: a record is encrypted and
        sent in :meth:`send_all`."""
        return 0

    async def close_at_once(self) -> None:
        """close_notify if the kernel takes it at once, then close."""
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(self)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        if not self._close_notify_sent:
            self._close_notify_sent = True
            # unwrap() puts close_notify in the outgoing BIO, then says it
            # wants the peer's: that one is not waited for.  Before the
            # handshake is done there is nothing to close.
            with contextlib.suppress(ssl.SSLError):
                self._ssl.unwrap()
        await self._send_pending()

    async def aclose(self) -> None:
        try:
            # Even when cancelled (aclose_forcefully), this gets close_notify
            # out if the kernel takes it at once: our transport's send_all
            # does not yield before it tries.
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self.send_eof()
        finally:
            await self.transport.aclose()

    async def _fill(self) -> None:
        data = await self.transport.receive_some(65536)
        if data:
            if not self._handshake_bytes:
                self._first_byte = data[0]
            self._handshake_bytes += len(data)  # (only looked at during the handshake)
            self._incoming.write(data)
        else:
            self._incoming.write_eof()
            self._eof = True

    async def _send_pending(self) -> None:
        if self._outgoing.pending:
            await self.transport.send_all(self._outgoing.read())

    async def _send_pending_quietly(self) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self._send_pending()
