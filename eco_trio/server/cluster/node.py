"""One server's membership of a deployment: joining, the heartbeat, the
deployment-wide admission, the shared LISTAR, ESTADO and DESCONEXION, and
what happens when Redis is lost.

Redis is off the per-message path: a message costs nothing here.  A
connection costs one round trip per *accept batch* (admission), and
everything else a node tells Redis (its clients' counters, who left, its
status) goes once per heartbeat.  Every call has a deadline
(:data:`CALL_TIMEOUT`): a frozen Redis must not freeze the node.

Failure, in short (docs/PROTOCOL.md has the whole story): a node that has
had no successful heartbeat for a lease *fences* itself (refuses new
clients, answers LISTAR and ESTADO from its own data marked ``parcial``,
refuses DESCONEXION), and rejoins by itself when Redis answers again,
registering everything anew, which also covers a Redis restarted empty.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import coredis
import coredis.exceptions
import trio
from coredis.retry import NoRetryPolicy

from eco_trio.server.cluster import DeploymentError, resp, scripts
from eco_trio.server.registry import ClientEntry
from eco_trio.wire.visible import escape_word

log = logging.getLogger("eco_trio.server")
# coredis logs each retry at INFO ("No matching script", after a Redis
# restart); the node says what matters in its own words.
logging.getLogger("coredis").setLevel(logging.WARNING)

#: How long any one call to Redis may take.
CALL_TIMEOUT = 1.0
#: LISTAR rows fetched from Redis per round trip (and sent per part): a
#: part costs the node about 3 ms of parsing and formatting, and the first
#: is smaller, so the first rows come quickly (benchmarks/cluster.py).
PART = 512
FIRST_PART = 128

_FAILURES = (
    OSError,
    trio.TooSlowError,
    coredis.exceptions.RedisError,
    coredis.exceptions.ConnectionError,
    TimeoutError,
    trio.BrokenResourceError,
    resp.ReplyError,
)


def redacted(url: str) -> str:
    """``url`` without its password, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else "***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


@dataclass
class Peer:
    """Another node, as its last heartbeat described it."""

    name: str
    info: dict[str, Any]


def _row(entry: ClientEntry, redis_ms: Callable[[float], int], now: float) -> str:
    """A client's row as Redis keeps it: tab-separated, escaped fields."""
    parser = entry.protocol
    secret = parser.secret_bytes if parser is not None else 0
    command = parser.last_command if parser is not None else None
    return "\t".join(
        (
            entry.address,
            str(redis_ms(entry.connected_at)),
            str(entry.lines_in),
            str(entry.lines_out),
            str(entry.bytes_in - secret),
            str(entry.bytes_out),
            str(redis_ms(entry.last_line_at)),
            (command or "").replace(" ", "_").replace("\t", "_"),
            escape_word(entry.certificate_names[0]) if entry.certificate_names else "",
        )
    )


def _format_row(node: str, row: str, now_ms: int) -> str:
    """A LISTAR row from a Redis row: today's form, plus ``nodo=``."""
    fields = row.split("\t")
    address, connected = fields[0], int(fields[1])
    if len(fields) < 9:  # admitted since that node's last heartbeat
        fields += ["0", "0", "0", "0", str(connected), "", ""]
    lines_in, lines_out, bytes_in, bytes_out, last_line, command, cert = fields[2:9]
    text = (
        f"{address} conectado={max(0, now_ms - connected) / 1000:.0f}s"
        f" inactivo={max(0, now_ms - int(last_line)) / 1000:.0f}s"
        f" lineas={lines_in}/{lines_out} bytes={bytes_in}/{bytes_out}"
    )
    if command:
        text += f" ultimo={command}"
    if cert:
        text += f" cert={cert}"
    return f"{text} nodo={node}"


class Node:
    """This server in the deployment ``deployment`` on the Redis at ``url``.

    Resource handling: an async context manager; leaving it leaves the
    deployment (this node's clients and share go at once).
    """

    def __init__(
        self,
        url: str,
        deployment: str,
        *,
        name: str | None,
        heartbeat: float,
        lease: float,
        cap: int,
    ) -> None:
        self.url, self.deployment = url, deployment
        self.prefix = f"{deployment}:"
        self.name = name or ""
        self.heartbeat, self.lease, self.cap = heartbeat, lease, cap
        self.instance = secrets.token_hex(8)
        self.address = ""
        self.fenced = False
        self.peers: dict[str, Peer] = {}
        self._redis: coredis.Redis[str] = coredis.Redis.from_url(
            url,
            decode_responses=True,
            stream_timeout=CALL_TIMEOUT,
            connect_timeout=CALL_TIMEOUT,
            retry_policy=NoRetryPolicy(),
        )
        #: The node's own calls (scripts): see resp.py for why not coredis.
        self._link = resp.Link(url)
        self._local: dict[int, ClientEntry] = {}  # seq -> this node's clients
        #: Clients gone, not yet known to Redis: their ``seq|address`` fields.
        #: Sent with the next admission or heartbeat, whichever comes first.
        self._gone: list[str] = []
        self._sent: dict[int, tuple[int, int, int]] = {}  # seq -> counters last sent
        self._stop_generation = 0
        self._offset_ms = 0.0  # Redis's clock minus trio's, in ms
        self._last_ok = -math.inf
        self._status: Callable[[], dict[str, object]] = dict

    # --- joining and leaving ----------------------------------------------------

    async def __aenter__(self) -> Node:
        try:
            await self._redis.__aenter__()
        except _FAILURES as exc:
            raise DeploymentError(f"cannot reach Redis at {redacted(self.url)}: {exc}") from None
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        with trio.CancelScope(shield=True):
            try:
                with trio.fail_after(CALL_TIMEOUT):
                    await self._link.script(scripts.LEAVE, self.prefix, self.name, self.instance)
            except _FAILURES:
                pass  # its lease ends by itself
            await self._link.aclose()
        # (Outside the shield: the client's task group was entered outside it.)
        await self._redis.__aexit__(None, None, None)

    async def join(self, address: str, status: Callable[[], dict[str, object]]) -> None:
        """Register this node (listening on ``address``); DeploymentError
        when Redis does not answer or another live node has the name."""
        self.address = address
        self.name = self.name or f"{socket.gethostname()}:{address.rsplit(':', 1)[1]}"
        self._status = status
        try:
            with trio.fail_after(CALL_TIMEOUT):
                await self._link.call("PING")
            registered = await self._register()
        except _FAILURES as exc:
            raise DeploymentError(f"cannot reach Redis at {redacted(self.url)}: {_why(exc)}") from None
        if registered:
            await self._beat(lambda why: None)  # learn the other nodes now
        if not registered:
            raise DeploymentError(
                f"the name {self.name} is taken by a live node of deployment {self.deployment}: "
                "give this one another with node=NAME"
            )
        log.info(
            "joined deployment %s as node %s on %s: %d node(s)",
            self.deployment,
            self.name,
            redacted(self.url),
            len(self.peers) + 1,
            extra={"event": "cluster_join"},
        )

    async def _register(self) -> bool:
        now = trio.current_time()
        rows: list[str] = []
        for seq, entry in self._local.items():
            rows += [f"{seq}|{entry.address}", _row(entry, self._redis_ms, now)]
        with trio.fail_after(CALL_TIMEOUT * 4):
            reply = _array(
                await self._link.script(
                    scripts.REGISTER,
                    self.prefix,
                    self.name,
                    self.instance,
                    int(self.lease * 1000),
                    self._info(),
                    max(self._local, default=0),
                    *rows,
                )
            )
        if reply[0] == -1:
            return False
        self._clock_from(int(reply[0]))
        if not self._stop_generation:
            self._stop_generation = int(reply[1])
        self._gone, self._sent = [], {}
        self._last_ok = trio.current_time()
        return True

    # --- the heartbeat and the stop signal ----------------------------------------

    async def run(
        self, stop: Callable[[str], None], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Heartbeat and listen for DESCONEXION until cancelled; ``stop``
        starts this node's shutdown, given who asked.  Started (for
        ``nursery.start``) once the node is subscribed, so a DESCONEXION
        sent to any node after this one takes clients reaches it at once."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._heartbeats, stop)
            await nursery.start(self._listen, stop)
            task_status.started()

    async def _heartbeats(self, stop: Callable[[str], None]) -> None:
        while True:
            await trio.sleep(self.heartbeat)
            try:
                await self._beat(stop)
            except _FAILURES as exc:
                self._missed(exc)

    async def _beat(self, stop: Callable[[str], None]) -> None:
        now = trio.current_time()
        dirty: list[str] = []
        # Thousands of clients: a turn for everyone else every PART of them.
        for done, (seq, entry) in enumerate(list(self._local.items()), 1):
            if done % PART == 0:
                await trio.lowlevel.checkpoint()
            counters = (entry.lines_in, entry.lines_out, entry.bytes_out)
            if self._sent.get(seq) != counters:
                self._sent[seq] = counters
                dirty += [f"{seq}|{entry.address}", _row(entry, self._redis_ms, now)]
        gone = list(self._gone)  # (more may leave during the call)
        with trio.fail_after(CALL_TIMEOUT):
            reply = _array(
                await self._link.script(
                    scripts.HEARTBEAT,
                    self.prefix,
                    self.name,
                    self.instance,
                    int(self.lease * 1000),
                    self._info(),
                    len(gone),
                    *gone,
                    *dirty,
                )
            )
        if reply[0] == -1:  # reaped while away, or Redis lost its keys
            log.warning(
                "deployment: this node (%s) had been forgotten; registering again",
                self.name,
                extra={"event": "cluster_rejoin"},
            )
            await self._register()
            self._regained()
            return
        self._sent_departures(gone)
        self._clock_from(int(reply[0]))
        self._regained()
        if int(reply[1]) > self._stop_generation:
            self._stop_generation = int(reply[1])
            stop("a DESCONEXION in the deployment (seen at the heartbeat)")
        self._update_peers(reply[2:])

    def _update_peers(self, flat: list[str]) -> None:
        peers = {}
        for name, info in zip(flat[::2], flat[1::2], strict=True):
            if name != self.name:
                try:
                    peers[name] = Peer(name, json.loads(info))
                except ValueError:
                    continue
        for name in peers.keys() - self.peers.keys():
            log.info("deployment: node %s joined", name, extra={"event": "cluster_node_up"})
        for name in self.peers.keys() - peers.keys():
            log.info("deployment: node %s left", name, extra={"event": "cluster_node_down"})
        self.peers = peers

    def _missed(self, exc: BaseException) -> None:
        if not self.fenced and trio.current_time() - self._last_ok > self.lease:
            self.fenced = True
            log.warning(
                "deployment: node %s lost Redis (%s): no new clients until it is back",
                self.name,
                _why(exc),
                extra={"event": "cluster_lost"},
            )

    def _regained(self) -> None:
        self._last_ok = trio.current_time()
        if self.fenced:
            self.fenced = False
            log.info("deployment: node %s regained Redis", self.name, extra={"event": "cluster_regained"})

    async def _listen(
        self, stop: Callable[[str], None], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """DESCONEXION, fast: through pub/sub.  get_message with a timeout
        keeps working across a reconnection (an ``async for`` over the
        subscription ends silently then); a message published while the
        subscriber was away is caught by the heartbeat's stop generation.
        Reports started once subscribed, or after CALL_TIMEOUT without it
        (the heartbeat still carries a stop)."""
        channel = self.prefix + "events"
        started = False
        give_up_at = trio.current_time() + CALL_TIMEOUT
        while True:
            try:
                async with self._redis.pubsub(channels=[channel]) as pubsub:
                    while True:
                        wait = self.heartbeat if started else max(0.0, give_up_at - trio.current_time())
                        message = await pubsub.get_message(timeout=wait)
                        if not started and (message is None or message.get("type") == "subscribe"):
                            started = True
                            task_status.started()
                        if message is None or message.get("type") != "message":
                            continue
                        words = str(message.get("data", "")).split()
                        stopping = len(words) == 3 and words[0] == "stop" and words[1].isdigit()
                        if stopping and int(words[1]) > self._stop_generation:
                            self._stop_generation = int(words[1])
                            stop(f"DESCONEXION through node {escape_word(words[2])}")
            except _FAILURES:
                if not started:
                    started = True
                    task_status.started()
                await trio.sleep(min(self.heartbeat, 1.0))

    # --- what the server asks ------------------------------------------------------

    async def admit(self, addresses: list[str]) -> tuple[int, int] | None:
        """How many of ``addresses`` (in accept order) the deployment-wide
        cap admits, and the first one's admission number; None when this
        node cannot ask (fenced, or Redis failed: refuse them)."""
        if self.fenced:
            return None
        gone = list(self._gone)
        try:
            with trio.fail_after(CALL_TIMEOUT):
                reply = _array(
                    await self._link.script(
                        scripts.ADMIT,
                        self.prefix,
                        self.name,
                        self.instance,
                        self.cap,
                        len(gone),
                        *gone,
                        *addresses,
                    )
                )
        except _FAILURES as exc:
            log.warning("deployment: admission failed on node %s: %s", self.name, _why(exc))
            return None
        if reply[0] == -1:
            return None  # forgotten: the heartbeat registers again
        self._sent_departures(gone)
        self._clock_from(int(reply[2]))
        return int(reply[0]), int(reply[1])

    def joined(self, entry: ClientEntry) -> None:
        self._local[entry.seq] = entry

    def left(self, entry: ClientEntry) -> None:
        if self._local.pop(entry.seq, None) is not None:
            self._gone.append(f"{entry.seq}|{entry.address}")
            self._sent.pop(entry.seq, None)

    def _sent_departures(self, sent: list[str]) -> None:
        """``sent`` reached Redis: drop exactly those (an admission and a
        heartbeat may have sent some of the same; sending twice is harmless)."""
        if sent:
            done = set(sent)
            self._gone = [field for field in self._gone if field not in done]

    async def request_stop(self) -> str | None:
        """Stop every node: None once Redis has it, else why not."""
        if self.fenced:
            return "este nodo ha perdido el contacto con Redis"
        try:
            with trio.fail_after(CALL_TIMEOUT):
                generation = await self._link.script(scripts.STOP, self.prefix, self.name)
        except _FAILURES:
            return "Redis no responde"
        if isinstance(generation, int):
            self._stop_generation = max(self._stop_generation, generation)
        return None

    async def listing(
        self, own_rows: Callable[[list[ClientEntry]], list[str]]
    ) -> tuple[int, AsyncIterator[list[str]]] | None:
        """Every client of the deployment, in admission order: the count and
        the rows in parts of PART, each fetched when the one before has
        been sent; None when Redis cannot say (answer locally).  This
        node's rows come from its own, fresh data (``own_rows``)."""
        if self.fenced:
            return None
        listing_id = secrets.token_hex(6)
        try:
            first = await self._list_part(listing_id, 0, FIRST_PART)
        except _FAILURES:
            return None
        total = int(first[1])

        async def parts() -> AsyncIterator[list[str]]:
            reply, start, size = first, 0, FIRST_PART
            while start < total:
                rows = self._rows(reply, own_rows)
                expected = min(size, total - start)
                # The header promised ``total`` rows: a part Redis could not
                # give (it went away mid-listing) is rows of ``?``.
                yield rows + [_UNKNOWN_ROW] * (expected - len(rows))
                start, size = start + size, PART
                if start < total:
                    try:
                        reply = await self._list_part(listing_id, start, size)
                    except _FAILURES:
                        reply = [0, total]

        return total, parts()

    async def _list_part(self, listing_id: str, start: int, size: int) -> list[Any]:
        with trio.fail_after(CALL_TIMEOUT):
            reply = _array(
                await self._link.script(
                    scripts.LIST, self.prefix, listing_id, start, size, int(CALL_TIMEOUT * 30 * 1000)
                )
            )
        return reply

    def _rows(self, reply: list[Any], own_rows: Callable[[list[ClientEntry]], list[str]]) -> list[str]:
        now_ms = int(reply[0])
        out: list[str] = []
        for member, row in zip(reply[2::2], reply[3::2], strict=True):
            node, seq, address = member.split("|", 2)
            entry = self._local.get(int(seq)) if node == self.name else None
            if entry is not None:
                out += own_rows([entry])
            elif row:
                out.append(_format_row(node, row, now_ms))
            else:  # it left since the listing began: its address is all there is
                out.append(f"{address} nodo={node}")
        return out

    def merged_status(self, own: dict[str, object]) -> dict[str, object]:
        """ESTADO for the deployment: ``own`` (this node, fresh) plus every
        peer's last heartbeat for the counters; then one line per node."""
        merged = dict(own)
        for peer in self.peers.values():
            for key, value in peer.info.get("status", {}).items():
                if key in _NODE_OWN or not isinstance(value, int):
                    continue
                current = merged.get(key, 0)
                merged[key] = (current if isinstance(current, int) else 0) + value
        merged["deployment"] = self.deployment
        merged["nodes"] = len(self.peers) + 1
        merged[f"node.{self.name}"] = (
            f"address={self.address} clients={own.get('clients', 0)} heartbeat_age_s=0.0"
        )
        for peer in sorted(self.peers.values(), key=lambda p: p.name):
            age = max(0.0, (self._redis_ms(trio.current_time()) - int(peer.info.get("at_ms", 0))) / 1000)
            merged[f"node.{peer.name}"] = (
                f"address={peer.info.get('address', '-')} "
                f"clients={peer.info.get('status', {}).get('clients', 0)} heartbeat_age_s={age:.1f}"
            )
        return merged

    # --- clocks and what a heartbeat says -------------------------------------------

    def _clock_from(self, redis_now_ms: int) -> None:
        self._offset_ms = redis_now_ms - trio.current_time() * 1000

    def _redis_ms(self, trio_time: float) -> int:
        return int(trio_time * 1000 + self._offset_ms)

    def _info(self) -> str:
        status = {key: value for key, value in self._status().items() if isinstance(value, int)}
        return json.dumps(
            {"address": self.address, "at_ms": self._redis_ms(trio.current_time()), "status": status}
        )


#: A LISTAR row Redis could not give (it went away mid-listing).
_UNKNOWN_ROW = "? nodo=?"

#: ESTADO keys that describe one node, not the deployment: never added up.
_NODE_OWN = frozenset(
    {
        "pid",
        "uptime_s",
        "rss_bytes",
        "peak_rss_bytes",
        "max_clients",
        "max_clients_per_ip",
        "max_line",
        "idle_timeout_s",
        "send_timeout_s",
    }
)


def _array(reply: resp.Reply) -> list[Any]:
    """A script's reply, which is always an array."""
    if not isinstance(reply, list):
        raise resp.ReplyError(f"unexpected reply from Redis: {reply!r}")
    return reply


def _why(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return f"no answer within {CALL_TIMEOUT:g} s"
    return str(exc) or type(exc).__name__
