"""HAProxy in front of a deployment, for real: ``haproxy`` in TCP mode with
``send-proxy-v2`` and ``check-send-proxy`` in front of two eco_trio nodes
sharing a ``redis-server``, all on loopback."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .processes import TIMEOUT, Line, free_port, program_server, server_process
from .redis_server import RedisServer

#: HAProxy rewrites every client's source to this address (documentation
#: range) before relaying it: a client that does not look local, which this
#: machine's loopback-only network could not otherwise produce.
OUTSIDER = "203.0.113.7"


@contextlib.contextmanager
def haproxy(folder: Path, port: int, backends: list[int]) -> Iterator[subprocess.Popen[bytes]]:
    program = shutil.which("haproxy")
    if program is None:
        pytest.skip("haproxy is not installed (Debian package haproxy)")
    config = folder / "haproxy.cfg"
    servers = "\n".join(
        f"    server node{n} 127.0.0.1:{backend} send-proxy-v2 check check-send-proxy inter 200ms"
        for n, backend in enumerate(backends, 1)
    )
    config.write_text(
        f"""global
    maxconn 200
defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend eco
    bind 127.0.0.1:{port}
    tcp-request connection set-src ipv4({OUTSIDER})
    default_backend nodes
backend nodes
    balance roundrobin
{servers}
"""
    )
    with program_server([program, "-f", str(config), "-db"], port) as process:
        yield process


def test_haproxy_in_front_of_two_nodes(redis: RedisServer, tmp_path: Path) -> None:
    options = ["--redis", redis.url, "--proxy-protocol", "--token", "secreto"]
    options += ["--heartbeat", "0.2", "--lease", "1"]
    front = free_port()
    with (
        server_process(*options, "--node", "n1") as first,
        server_process(*options, "--node", "n2") as second,
        haproxy(tmp_path, front, [first.port, second.port]) as balancer,
    ):
        time.sleep(1.0)  # a few health checks
        clients = [Line(front) for _ in range(4)]
        try:
            assert all(c.greeting.startswith("BIENVENIDO") for c in clients)
            assert clients[0].request("AUTENTICAR secreto") == "OK autenticado."
            _, rows = clients[0].block("LISTAR")
            assert len(rows) == 4
            assert all(row.startswith(f"{OUTSIDER}:") for row in rows)  # the real client, not the balancer
            assert {row.split("nodo=")[1].split()[0] for row in rows} == {"n1", "n2"}  # spread over both
            refused = clients[1].request("DESCONEXION")
            assert refused.startswith("ERROR DESCONEXION requiere el token")
            time.sleep(0.5)  # the other node's heartbeat: ESTADO adds it up
            _, lines = clients[0].block("ESTADO")
            pairs = dict(line.split() for line in lines if len(line.split()) == 2)
            assert int(pairs["health_checks"]) >= 2 and pairs["clients"] == "4"
            assert clients[2].request("DESCONEXION secreto").startswith("DESCONEXION")
        finally:
            for client in clients:
                client.close()
        assert first.process.wait(TIMEOUT) == 0 and second.process.wait(TIMEOUT) == 0
        log = "".join(first.log + second.log)
        assert f"connected {OUTSIDER}:" in log and "connected 127.0.0.1" not in log
        assert balancer.poll() is None
