"""Many servers as one (``servidor --redis``), end to end: real server
processes on loopback ports sharing a real redis-server, and the faults a
deployment must survive (a node killed, Redis frozen, restarted empty, its
subscriber connection killed)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import ClassVar

import pytest

from . import processes
from .processes import TIMEOUT, ServerProcess, eco, server_process
from .redis_server import RedisServer

#: Short enough for the fault tests to be quick, as the options allow.
FAST = ("--heartbeat", "0.2", "--lease", "1")


class Line(processes.Line):
    """A client, closed by nodes() at the end of the test."""

    #: Every one still open.
    opened: ClassVar[list[Line]] = []

    def __init__(self, port: int) -> None:
        super().__init__(port)
        Line.opened.append(self)


@contextlib.contextmanager
def nodes(redis: RedisServer, count: int, *args: str) -> Iterator[list[ServerProcess]]:
    with contextlib.ExitStack() as stack:
        stack.callback(_close_lines)
        yield [
            stack.enter_context(server_process("--redis", redis.url, "--node", f"n{i}", *args))
            for i in range(1, count + 1)
        ]


def _close_lines() -> None:
    while Line.opened:
        Line.opened.pop().close()


def eventually(check: Callable[[], bool], seconds: float = 5.0) -> None:
    """Poll a state another process reaches in its own time (a heartbeat)."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.05)


def addresses(rows: list[str]) -> list[str]:
    return [row.split()[0] for row in rows]


def test_two_nodes_list_every_client_and_one_desconexion_stops_both(redis: RedisServer) -> None:
    with nodes(redis, 2) as (first, second):
        a, b = Line(first.port), Line(second.port)
        assert a.greeting.startswith("BIENVENIDO") and b.greeting.startswith("BIENVENIDO")
        assert a.request("hola") == "HOLA"
        mine_a, mine_b = (f"127.0.0.1:{c.sock.getsockname()[1]}" for c in (a, b))
        for client, node in ((a, "n1"), (b, "n2")):
            header, rows = client.block("LISTAR")
            assert header == "CLIENTES 2"
            assert addresses(rows) == [mine_a, mine_b]  # admission order, whichever node asks
            assert [row.rsplit("nodo=", 1)[1].split()[0] for row in rows] == ["n1", "n2"]
            assert sum(row.endswith("(tú)") for row in rows) == 1
            assert f"nodo={node} (tú)" in "\n".join(rows)
        assert b.request("DESCONEXION") == "DESCONEXION: apagando el servidor."
        assert a.line().startswith("AVISO")  # the other node's client hears the notice
        for process in (first, second):
            assert process.process.wait(TIMEOUT) == 0
        assert "joined deployment eco_trio as node n1" in "".join(first.log)
        assert "as node n2 on" in "".join(second.log) and "2 node(s)" in "".join(second.log)
        assert "shutting down: DESCONEXION through node n2" in "".join(first.log)


def test_estado_adds_up_the_nodes(redis: RedisServer) -> None:
    with nodes(redis, 2, *FAST) as (first, second):
        a, b = Line(first.port), Line(second.port)
        a.request("uno")
        b.request("dos")
        b.request("tres")

        asked = 0

        def totals() -> dict[str, str]:
            nonlocal asked
            asked += 1
            _, rows = a.block("ESTADO")
            return dict(row.split(" ", 1) for row in rows)

        eventually(lambda: totals()["clients"] == "2")  # once n1 has heard n2's heartbeat
        status = totals()
        assert status["nodes"] == "2"
        # n1's own lines (fresh) plus n2's (as of its last heartbeat, which
        # came after its two lines: it reported its client).
        assert status["lines_in"] == str(1 + asked + 2)
        assert status["node.n1"].startswith(f"address=127.0.0.1:{first.port} clients=1")
        assert status["node.n2"].startswith(f"address=127.0.0.1:{second.port} clients=1")


def test_a_connection_storm_never_exceeds_the_deployment_cap(redis: RedisServer) -> None:
    """Three nodes, --max-clients 30 for the deployment, 150 connections
    at once spread over them: exactly 30 greeted, the rest told why."""
    cap, attempts = 30, 150
    with nodes(redis, 3, *FAST, "--max-clients", str(cap)) as servers:
        socks = [
            socket.create_connection(("127.0.0.1", servers[i % 3].port), timeout=TIMEOUT)
            for i in range(attempts)
        ]
        try:
            files = [sock.makefile("rb") for sock in socks]
            first_lines = [file.readline() for file in files]
            greeted = [i for i, line in enumerate(first_lines) if line.startswith(b"BIENVENIDO")]
            refused = [line for line in first_lines if line.startswith(b"ERROR")]
            assert len(greeted) == cap and len(refused) == attempts - cap
            assert all(b"demasiados clientes" in line for line in refused)
            socks[greeted[0]].sendall(b"LISTAR\n")
            assert files[greeted[0]].readline() == f"CLIENTES {cap}\n".encode()
            for file in files:
                file.close()
        finally:
            for sock in socks:
                sock.close()
        # Every close reaches Redis at its node's next heartbeat: nothing
        # of the storm is left behind, in the order or in the cap.
        eventually(lambda: redis.command("ZCARD", "eco_trio:order") == 0)
        eventually(lambda: all(redis.command("HLEN", f"eco_trio:clients:n{i}") == 0 for i in (1, 2, 3)))


def test_a_killed_node_leaves_listar_and_frees_its_share_within_the_lease(redis: RedisServer) -> None:
    with nodes(redis, 2, *FAST, "--max-clients", "2") as (first, second):
        a = Line(first.port)
        victims = [Line(second.port)]
        assert victims[0].greeting.startswith("BIENVENIDO")
        assert Line(first.port).greeting.startswith("ERROR")  # the cap of 2 is full
        killed_at = time.monotonic()
        second.process.send_signal(signal.SIGKILL)  # our own child
        second.process.wait(TIMEOUT)
        eventually(lambda: len(a.block("LISTAR")[1]) == 1, seconds=1 + 1 + 1)
        assert time.monotonic() - killed_at <= 1 + 1 + 0.5  # lease + 1 s (and polling)
        assert Line(first.port).greeting.startswith("BIENVENIDO")  # its share is free again


def test_redis_unreachable_at_start_is_one_line_naming_the_url(tmp_path: object) -> None:
    pytest.importorskip("coredis")
    url = f"unix://{tmp_path}/nobody.sock"
    result = subprocess.run(
        eco("servidor", "--port", "0", "--redis", url), capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and url in errors[0] and "Traceback" not in result.stderr


def test_the_password_stays_out_of_logs_and_errors(tmp_path: object) -> None:
    pytest.importorskip("coredis")
    env = {**os.environ, "ECO_TRIO_REDIS_URL": "redis://user:s3cret@127.0.0.1:1/0"}
    result = subprocess.run(
        eco("servidor", "--port", "0"), capture_output=True, text=True, timeout=TIMEOUT, env=env
    )
    assert result.returncode == 1
    assert "s3cret" not in result.stderr and "***" in result.stderr


def test_a_frozen_redis_fences_the_nodes_and_they_rejoin(redis: RedisServer) -> None:
    with nodes(redis, 2, *FAST) as (first, second):
        a = Line(first.port)
        b = Line(second.port)
        redis.pause()  # SIGSTOP: every call now meets its deadline
        try:
            eventually(lambda: "lost Redis" in "".join(first.log), seconds=1 + 2 + 1)
            assert a.request("sigo") == "SIGO"  # connected clients keep being served
            assert Line(first.port).greeting.startswith("ERROR este nodo ha perdido")
            header, rows = a.block("LISTAR")
            assert header == "CLIENTES 1 parcial" and rows[0].endswith("(tú)")
            header, rows = a.block("ESTADO")
            assert header.endswith(" parcial") and "clients 1" in rows
            assert a.request("DESCONEXION").startswith("ERROR DESCONEXION no llega a todo el despliegue")
            assert first.process.poll() is None and second.process.poll() is None
        finally:
            redis.resume()
        eventually(lambda: "regained Redis" in "".join(first.log), seconds=4)
        eventually(lambda: a.block("LISTAR")[0] == "CLIENTES 2", seconds=4)
        assert Line(second.port).greeting.startswith("BIENVENIDO")
        b.close()


def test_redis_restarted_empty_is_filled_in_again(redis: RedisServer) -> None:
    with nodes(redis, 2, *FAST) as (first, second):
        a, b = Line(first.port), Line(second.port)
        assert a.block("LISTAR")[0] == "CLIENTES 2"
        redis.restart_empty()
        eventually(lambda: redis.command("ZCARD", "eco_trio:order") == 2, seconds=4)
        header, rows = b.block("LISTAR")
        assert header == "CLIENTES 2" and rows[1].endswith("(tú)")
        assert "registering again" in "".join(first.log)
        assert b.request("DESCONEXION").startswith("DESCONEXION")
        for process in (first, second):
            assert process.process.wait(TIMEOUT) == 0


def test_desconexion_arrives_after_the_subscriber_connection_is_killed(redis: RedisServer) -> None:
    """CLIENT KILL TYPE pubsub, then DESCONEXION on the other node: the
    message is not lost (the subscriber reconnects, and the heartbeat reads
    the stop generation)."""
    with nodes(redis, 2, *FAST) as (first, second):
        b = Line(second.port)
        assert redis.command("CLIENT", "KILL", "TYPE", "pubsub") >= 1  # type: ignore[operator]
        assert b.request("DESCONEXION").startswith("DESCONEXION")
        assert first.process.wait(TIMEOUT) == 0 and second.process.wait(TIMEOUT) == 0


def test_client_pause_delays_but_loses_nothing(redis: RedisServer) -> None:
    """CLIENT PAUSE for less than a lease: nodes wait, nobody is fenced,
    and a DESCONEXION sent meanwhile still stops both."""
    with nodes(redis, 2, *FAST) as (first, second):
        b = Line(second.port)
        redis.command("CLIENT", "PAUSE", "500", "ALL")
        assert b.request("DESCONEXION").startswith("DESCONEXION")
        assert first.process.wait(TIMEOUT) == 0 and second.process.wait(TIMEOUT) == 0
        assert not any("lost Redis" in line for line in first.log + second.log)


def test_without_redis_no_redis_client_is_loaded() -> None:
    program = "import sys, eco_trio.cli.main, eco_trio.server.core; print('coredis' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=TIMEOUT)
    assert result.stdout.strip() == "False"


def test_the_metrics_add_up_the_nodes(redis: RedisServer) -> None:
    import re
    import urllib.request

    with nodes(redis, 2, *FAST, "--metrics", "127.0.0.1:0") as (first, second):
        Line(first.port)
        Line(second.port)
        address = re.search(r"metrics on http://(\S+)/metrics", "".join(first.log))
        assert address is not None

        def scrape() -> str:
            with urllib.request.urlopen(f"http://{address[1]}/metrics", timeout=TIMEOUT) as response:
                return str(response.read().decode())

        eventually(lambda: "eco_trio_clients 2.0" in scrape())
        assert "eco_trio_deployment_nodes 2.0" in scrape()


def test_redis_without_the_cluster_extra_says_what_to_install() -> None:
    program = (
        "import sys; sys.modules['coredis'] = None; from eco_trio.cli.main import main; "
        "sys.exit(main(['servidor', '--port', '0', '--redis', 'redis://127.0.0.1:1']))"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 1, result.stderr
    assert "--redis needs" in result.stderr and "eco_trio[cluster]" in result.stderr
    assert "Traceback" not in result.stderr
