"""eco_trio where there is no epoll, termios or readline (macOS, Windows),
simulated on this machine: the package, the server, the client and the
bench run under ``tests/simulated_platform/sitecustomize.py``, which hides
them from everything but trio.  A Linux-only import reintroduced anywhere
fails here."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from .processes import server_process
from .test_cli import Terminal

SIMULATED = str(Path(__file__).parent / "simulated_platform")
TIMEOUT = 20


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [SIMULATED, env.get("PYTHONPATH")]))
    env.pop("ECO_TRIO_IO", None)  # auto must find its own way here
    return env


def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=environment(),
    )


def test_the_simulation_hides_what_it_says() -> None:
    probe = (
        "import select\n"
        "for name in ('termios', 'readline', 'resource'):\n"
        "    try:\n"
        "        __import__(name)\n"
        "    except ImportError:\n"
        "        print('no', name)\n"
        "print(hasattr(select, 'epoll'))\n"
    )
    result = run("-c", probe)
    assert result.stdout == "no termios\nno readline\nno resource\nFalse\n", result.stderr


def test_every_module_imports() -> None:
    code = (
        "import importlib, pkgutil, eco_trio\n"
        "names = [m.name for m in pkgutil.walk_packages(eco_trio.__path__, 'eco_trio.')]\n"
        "for name in names: importlib.import_module(name)\n"
        "print(len(names))\n"
    )
    result = run("-c", code)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) >= 10


@contextmanager
def simulated_server(*args: str) -> Iterator[tuple[int, list[str]]]:
    with server_process(*args, env=environment()) as server:
        yield server.port, server.log


def test_server_client_and_bench_run_on_the_portable_path() -> None:
    with simulated_server("--log-level", "DEBUG") as (port, log):
        assert any("I/O path: portable" in line for line in log)
        common = ["-m", "eco_trio", "cliente", "--host", "127.0.0.1", "--port", str(port)]
        piped = run(*common, stdin="hola\nñandú\n")
        assert piped.returncode == 0, piped.stderr
        assert piped.stdout.splitlines()[1:] == ["HOLA", "ÑANDÚ"]
        messages = run(*common, "uno", "LISTAR")
        assert messages.returncode == 0, messages.stderr
        assert messages.stdout.splitlines()[:2] == ["UNO", "CLIENTES 1"]
        bench = run(
            "-m", "eco_trio", "bench", "--port", str(port), "--clients", "4", "--seconds", "0.5",
            "--warmup", "0.1", "--json",
        )  # fmt: skip
        assert bench.returncode == 0, bench.stderr
        assert '"mismatches": 0' in bench.stdout and '"errors": 0' in bench.stdout
        cpu = run("-m", "eco_trio", "bench", "--port", str(port), "--cpu", "0")
        assert cpu.returncode == 2 and cpu.stderr.count("\n") == 1 and "affinity" in cpu.stderr
    assert not any("Traceback" in line for line in log)


def test_refused_connection_and_epoll_on_request_are_one_clear_line() -> None:
    refused = run("-m", "eco_trio", "cliente", "--host", "127.0.0.1", "--port", "1", "hola")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    epoll = run("-m", "eco_trio", "servidor", "--port", "0", "--io", "epoll")
    assert epoll.returncode == 2
    assert epoll.stderr.count("\n") == 1 and "--io portable" in epoll.stderr


@pytest.mark.parametrize("args", [["--help"], ["servidor", "--help"], ["cliente", "--help"], ["--version"]])
def test_help_and_version(args: list[str]) -> None:
    result = run("-m", "eco_trio", *args)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal (POSIX)")
def test_the_interactive_client_falls_back_to_plain_input_in_a_terminal() -> None:
    """No readline, no termios: the prompt is plain input(), in a real
    pseudo-terminal, and server lines still show."""
    with simulated_server() as (port, _):
        session = Terminal(
            [sys.executable, "-m", "eco_trio", "cliente", "--host", "127.0.0.1", "--port", str(port)],
            env=environment(),
        )
        try:
            session.expect(b"eco> ")
            assert b"BIENVENIDO" in session.screen
            session.type("hola ñandú\n".encode())
            session.expect("HOLA ÑANDÚ".encode())
            session.type(b"\x04")  # Ctrl-D: end of input
            assert session.process.wait(TIMEOUT) == 0
        finally:
            session.close()
