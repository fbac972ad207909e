"""nginx's ``stream`` module in front of a node, for real: ``proxy_protocol
on`` (PROXY v1), as docs/DEPLOY.md shows it, all on loopback."""

from __future__ import annotations

import contextlib
import io
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .processes import TIMEOUT, DidNotStart, free_port, program_server, server_process

#: Where Debian's libnginx-mod-stream puts the module; elsewhere nginx may
#: have it built in.
STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")


@contextlib.contextmanager
def nginx(folder: Path, port: int, backend: int) -> Iterator[subprocess.Popen[bytes]]:
    program = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if program is None:
        pytest.skip("nginx is not installed (Debian packages nginx and libnginx-mod-stream)")
    load = f"load_module {STREAM_MODULE};" if STREAM_MODULE.exists() else ""
    (folder / "nginx.conf").write_text(
        f"""daemon off;
master_process off;
pid {folder}/nginx.pid;
error_log stderr warn;
{load}
events {{ worker_connections 64; }}
stream {{
    server {{
        listen 127.0.0.1:{port};
        proxy_pass 127.0.0.1:{backend};
        proxy_protocol on;
    }}
}}
"""
    )
    command = [program, "-p", str(folder), "-c", str(folder / "nginx.conf"), "-e", "stderr"]
    try:
        with program_server(command, port) as process:
            yield process
    except DidNotStart as failure:
        why = failure.args[1]
        if 'unknown directive "stream"' in why or "load_module" in why:
            pytest.skip(f"nginx has no stream module (Debian package libnginx-mod-stream): {why}")
        raise


def _greeted(port: int) -> tuple[socket.socket, io.BufferedReader]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    reader = sock.makefile("rb")
    assert reader.readline().startswith(b"BIENVENIDO")
    return sock, reader


def test_nginx_stream_with_proxy_protocol_names_the_real_client(tmp_path: Path) -> None:
    """LISTAR shows each client's own port: the address nginx relays, not
    nginx's connection to the node."""
    front = free_port()
    with server_process("--proxy-protocol") as node, nginx(tmp_path, front, node.port):
        first, first_reader = _greeted(front)
        second, second_reader = _greeted(front)
        with first, second:
            first.sendall(b"hola\nLISTAR\n")
            assert first_reader.readline() == b"HOLA\n"
            assert first_reader.readline() == b"CLIENTES 2\n"
            rows = [first_reader.readline().decode() for _ in range(2)]
            listed = {row.split()[0] for row in rows}
            own = {f"127.0.0.1:{sock.getsockname()[1]}" for sock in (first, second)}
            assert listed == own, (listed, own)
            first_reader.close()
            second_reader.close()
        for address in own:
            node.wait_for(f"connected {address}")


def test_a_proxy_outside_trusted_proxy_is_refused(tmp_path: Path) -> None:
    """A node that trusts another balancer: nginx's header is a foreign
    protocol, refused, and nobody gets to claim an address."""
    front = free_port()
    with (
        server_process("--proxy-protocol", "--trusted-proxy", "192.0.2.1/32") as node,
        nginx(tmp_path, front, node.port),
    ):
        with socket.create_connection(("127.0.0.1", front), timeout=TIMEOUT) as sock:
            reader = sock.makefile("rb")
            assert reader.readline().startswith(b"BIENVENIDO")  # a direct client's welcome...
            assert reader.read() == b""  # ...then nginx's PROXY line: closed, not one byte more
            reader.close()
        node.wait_for("it spoke PROXY")
