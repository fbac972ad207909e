"""The server's settings, and the defaults that depend on where it listens.

``ServerConfig`` is checked whole when it is made, so a bad setting is one
clear error at start, never a failure later; the ``*_in_force`` functions
settle the defaults that depend on the addresses the server is bound to
(loopback or beyond).
"""

from __future__ import annotations

import ipaddress
import sys
from dataclasses import dataclass

from eco_trio.server import handshakes
from eco_trio.transport import tls
from eco_trio.transport.readiness import io_path
from eco_trio.wire import protocol

#: Idle timeout when listening beyond loopback and none was chosen: a slot
#: held by a silent client is freed after this long (nginx closes a silent
#: client after 60 s; an interactive line session deserves longer).
REMOTE_IDLE_TIMEOUT = 300.0


#: Clients from one address when listening beyond loopback and no limit was
#: chosen (nginx's limit_conn, set by default): one address cannot take all
#: of --max-clients.
REMOTE_MAX_CLIENTS_PER_IP = 64


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "localhost"
    port: int = 5000
    #: Seconds connections get to say goodbye once shutdown starts.
    grace: float = 2.0
    #: Seconds of silence after which an unterminated fragment counts as a line.
    pause: float = 0.1
    max_line: int = protocol.DEFAULT_MAX_LINE
    max_clients: int = 1000
    #: Clients at once from one address (an IPv6 one: its /64).  None: none
    #: on loopback, REMOTE_MAX_CLIENTS_PER_IP when listening beyond it; 0: no limit.
    max_clients_per_ip: int | None = None
    #: Close a connection after this long without a complete line.  0: never;
    #: None: never on loopback, REMOTE_IDLE_TIMEOUT when listening beyond it.
    idle_timeout: float | None = None
    #: Close a connection that takes none of our data for this long.
    send_timeout: float = 30.0
    #: Required after DESCONEXION when set (any bytes but whitespace; a str is
    #: taken as UTF-8); without it only loopback peers may.
    token: bytes | str | None = None
    remote_shutdown: bool = True
    backlog: int = 1024
    #: The I/O path: "auto" ($ECO_TRIO_IO, else epoll where it exists),
    #: "epoll" (Linux) or "portable" (trio's own I/O, everywhere).
    io: str = "auto"
    #: With a certificate and its key, ``port`` speaks TLS.
    tls_cert: str | None = None
    tls_key: str | None = None
    #: CA file or directory: clients must present a certificate it signed.
    tls_ca: str | None = None
    tls_handshake_timeout: float = tls.DEFAULT_HANDSHAKE_TIMEOUT
    #: Certificate names, ``FIELD=value`` (CN=, DNS=, email=, URI=, IP=),
    #: whose holders may send DESCONEXION without the token (needs tls_ca).
    tls_admin: tuple[str, ...] = ()
    #: TLS connections in their handshake at once (apart from max_clients;
    #: past it the oldest is dropped), and handshakes started per second, in
    #: all and per client address (0: no bound).  See handshakes.py.
    max_handshakes: int = handshakes.DEFAULT_LIMIT
    handshake_rate: float = handshakes.DEFAULT_RATE
    handshake_rate_per_ip: float = handshakes.DEFAULT_RATE_PER_SOURCE
    #: With TLS, a plain-text listener on this port too (None: none).
    plain_port: int | None = None
    #: Serve Prometheus metrics on this ``[HOST:]PORT`` (None: no).
    metrics: str | None = None
    #: Join the deployment on this Redis (``redis://``, ``rediss://``,
    #: ``unix://``): LISTAR, DESCONEXION, max_clients and ESTADO then span
    #: every node sharing it.  None: a single server, no Redis.
    redis: str | None = None
    #: The deployment's name: the prefix of its keys in Redis.
    deployment: str = "eco_trio"
    #: This node's name in the deployment (None: ``hostname:port``).
    node: str | None = None
    #: Seconds between a node's heartbeats, and how long a node that stops
    #: beating is still counted (its clients, its share of max_clients).
    heartbeat: float = 1.0
    lease: float = 5.0
    #: Listen with SO_REUSEPORT (Linux): each worker of ``--workers`` has a
    #: listener of its own and the kernel spreads connections over them.
    reuse_port: bool = False
    #: Expect a PROXY protocol header (v1 or v2) from the trusted proxies,
    #: and take the client's address from it.
    proxy_protocol: bool = False
    #: Who may send one: addresses or networks (CIDR).  Empty: loopback.
    trusted_proxies: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        positive = {"grace": self.grace, "pause": self.pause, "send_timeout": self.send_timeout}
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"{name} must be greater than 0, not {value}")
        if self.idle_timeout is not None and not self.idle_timeout >= 0:
            raise ValueError(f"idle_timeout must be 0 (never) or more, not {self.idle_timeout}")
        if isinstance(self.token, str):
            object.__setattr__(self, "token", self.token.encode("utf-8", "surrogateescape"))
        if self.token is not None and (not self.token or self.token.split() != [self.token]):
            raise ValueError("the token must be one word: not empty, no spaces or line breaks")
        if self.token is not None and 0xFF in self.token:
            raise ValueError("the token cannot contain byte 255, which telnet clients send as a command")
        if self.max_clients_per_ip is not None and self.max_clients_per_ip < 0:
            raise ValueError(
                f"max_clients_per_ip must be 0 (no limit) or more, not {self.max_clients_per_ip}"
            )
        if self.max_line < 1 or self.max_clients < 1:
            raise ValueError("max_line and max_clients must be at least 1")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, not {self.port}")
        io_path(self.io)  # an unknown or unavailable path is refused here, not mid-start
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.tls_cert is None and (self.tls_ca or self.tls_admin or self.plain_port is not None):
            raise ValueError("tls_ca, tls_admin and plain_port need tls_cert and tls_key")
        object.__setattr__(self, "tls_admin", tuple(tls.parse_admin(name) for name in self.tls_admin))
        if self.max_handshakes < 1:
            raise ValueError(f"max_handshakes must be at least 1, not {self.max_handshakes}")
        if not (self.handshake_rate >= 0 and self.handshake_rate_per_ip >= 0):
            raise ValueError("handshake rates must be 0 (no bound) or more")
        if self.tls_admin and self.tls_ca is None:
            raise ValueError("tls_admin needs tls_ca: only verified client certificates carry names")
        if not self.tls_handshake_timeout > 0:
            raise ValueError(
                f"tls_handshake_timeout must be greater than 0, not {self.tls_handshake_timeout}"
            )
        if self.metrics is not None:
            try:
                parse_address(self.metrics)
            except ValueError as exc:
                raise ValueError(f"metrics takes [HOST:]PORT, not {self.metrics!r}: {exc}") from None
        if not (self.heartbeat > 0 and self.lease >= 2 * self.heartbeat):
            raise ValueError("heartbeat must be greater than 0, and lease at least twice the heartbeat")
        words: dict[str, str | None] = {"deployment": self.deployment, "node": self.node}
        for name, word in words.items():
            if word is not None and (not word or "|" in word or word.split() != [word]):
                raise ValueError(f"{name} must be one word without '|', not {word!r}")
        if self.redis is not None and not self.redis.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("redis takes a redis://, rediss:// or unix:// URL")
        try:
            networks = [ipaddress.ip_network(cidr, strict=False) for cidr in self.trusted_proxies]
        except ValueError as exc:
            raise ValueError(f"trusted_proxies takes addresses or networks (CIDR): {exc}") from None
        object.__setattr__(self, "trusted_proxies", tuple(str(network) for network in networks))
        if self.proxy_protocol and self.tls_cert is not None:
            raise ValueError(
                "proxy_protocol with tls_cert is not supported yet: terminate TLS at the balancer"
            )
        if self.reuse_port and not sys.platform.startswith("linux"):
            raise ValueError("reuse_port needs Linux (SO_REUSEPORT spreads connections there only)")
        if self.plain_port is not None and not 0 <= self.plain_port <= 65535:
            raise ValueError(f"plain_port must be between 0 and 65535, not {self.plain_port}")


def parse_address(text: str) -> tuple[str, int]:
    """``[HOST:]PORT`` (loopback when only a port is given), as --metrics takes it."""
    host, _, port = text.rpartition(":")
    number = int(port)
    if not 0 <= number <= 65535:
        raise ValueError(f"port must be between 0 and 65535, not {number}")
    return (host.strip("[]") or "127.0.0.1"), number


def idle_timeout_in_force(config: ServerConfig, addresses: list[str]) -> float | None:
    """The idle timeout for a server bound to ``addresses`` (None: never)."""
    if config.idle_timeout is None:
        on_loopback = all(is_loopback(address) for address in addresses)
        return None if on_loopback else REMOTE_IDLE_TIMEOUT
    return config.idle_timeout or None


def clients_per_ip_in_force(config: ServerConfig, addresses: list[str]) -> int | None:
    """The per-address client limit for a server bound to ``addresses``
    (None: no limit)."""
    if config.max_clients_per_ip is None:
        if all(is_loopback(address) for address in addresses):
            return None
        return min(REMOTE_MAX_CLIENTS_PER_IP, config.max_clients)
    return config.max_clients_per_ip or None


def exposure_warning(addresses: list[str], config: ServerConfig) -> str | None:
    """What to tell the operator when others can reach the server: who may
    shut it down, and how long a silent client may hold a slot."""
    if all(is_loopback(address) for address in addresses):
        return None
    notes = []
    if config.token is None and config.remote_shutdown:
        notes.append(
            "DESCONEXION is accepted from loopback peers only (token=TOKEN allows it "
            "elsewhere, remote_shutdown=False refuses it)"
        )
    if config.idle_timeout is None:
        notes.append(
            f"silent clients are closed after {REMOTE_IDLE_TIMEOUT:g} s (idle_timeout; 0 keeps "
            "them forever, and each holds one of max_clients)"
        )
    elif config.idle_timeout == 0:
        notes.append("silent clients are never closed (idle_timeout=0): each holds one of max_clients")
    if not notes:
        return None
    return "listening beyond loopback: " + "; ".join(notes)


def is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
