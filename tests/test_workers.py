"""``servidor --workers N``, end to end: a supervisor, its workers and its
private redis-server, all real processes on loopback."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from .processes import TIMEOUT, Line, ServerProcess, server_process
from .redis_server import require_redis


@pytest.fixture(autouse=True)
def _redis_server_installed() -> None:
    require_redis()


def eventually(check: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.05)


@contextlib.contextmanager
def supervised(*args: str, env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    with server_process("--workers", *args, env=env) as server:
        yield server


def serving(server: ServerProcess) -> bool:
    return any("workers serving" in line for line in server.log)


def pids(server: ServerProcess) -> dict[str, int]:
    """Every process the supervisor said it started, by name (the last of each)."""
    found = {}
    for line in list(server.log):
        if match := re.search(r"started (worker-[\d.]+) \(pid (\d+)\)", line):
            found[match[1]] = int(match[2])
        elif match := re.search(r"private redis-server on \S+ \(pid (\d+)\)", line):
            found["redis"] = int(match[1])
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes (its parent has not reaped it yet).
    with contextlib.suppress(OSError):
        return Path_state(pid) != "Z"
    return True


def Path_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


@contextlib.contextmanager
def lines(port: int, count: int) -> Iterator[list[Line]]:
    opened = [Line(port) for _ in range(count)]
    try:
        yield opened
    finally:
        for line in opened:
            line.close()


def accepted_by(worker: str, port: int, started: dict[str, int]) -> Line:
    """A client that ``worker`` accepts: which idle worker wins an accept
    on the shared listener is a race (here one often wins every time), so
    the other workers are stopped (SIGSTOP) while it connects.  The shared
    queue strands nobody behind a stopped worker."""
    others = [pid for name, pid in started.items() if name.startswith("worker-") and name != worker]
    for pid in others:
        os.kill(pid, signal.SIGSTOP)
    try:
        return Line(port)
    finally:
        for pid in others:
            os.kill(pid, signal.SIGCONT)


def test_clients_spread_over_workers_and_one_listar_lists_them_all() -> None:
    with supervised("3") as server:
        eventually(lambda: serving(server))
        started = pids(server)
        workers = ["worker-1", "worker-2", "worker-3"]
        with lines(server.port, 9) as clients:
            clients += [accepted_by(worker, server.port, started) for worker in workers]  # one more on each
            assert all(c.greeting.startswith("BIENVENIDO") for c in clients)
            rows = clients[0].listing()
            assert len(rows) == 12
            nodes = {row.rsplit("nodo=", 1)[1].split()[0] for row in rows}
            assert nodes == set(workers)
            assert clients[-1].request("hola") == "HOLA"


def test_a_storm_against_a_small_cap_admits_exactly_the_cap() -> None:
    with supervised("3", "--max-clients", "10") as server:
        eventually(lambda: serving(server))
        with lines(server.port, 40) as clients:
            greeted = [c for c in clients if c.greeting.startswith("BIENVENIDO")]
            assert len(greeted) == 10
            assert all("demasiados clientes" in c.greeting for c in clients if c not in greeted)


def test_a_killed_worker_is_replaced_and_its_clients_leave_listar() -> None:
    with supervised("2", "--heartbeat", "0.2", "--lease", "1") as server:
        eventually(lambda: serving(server))
        clients: list[Line] = []
        try:
            # Two clients on each worker.
            started = pids(server)
            for worker in ("worker-1", "worker-1", "worker-2", "worker-2"):
                clients.append(accepted_by(worker, server.port, started))
            nodes = [row.split("nodo=")[1].split()[0] for row in clients[0].listing()]
            assert sorted(nodes) == ["worker-1"] * 2 + ["worker-2"] * 2, nodes
            victim = "worker-2"
            os.kill(started[victim], signal.SIGKILL)
            eventually(lambda: any(f"started {victim}.2" in line for line in server.log))

            def answers(client: Line) -> bool:
                try:
                    return client.request("sigo") == "SIGO"
                except OSError:
                    return False

            survivors = [c for c in clients if answers(c)]
            assert survivors, "the other worker's clients are still served"
            eventually(
                lambda: all(row.split("nodo=")[1].split()[0] != victim for row in survivors[0].listing())
            )
            with lines(server.port, 1) as (new,):
                assert new.request("hola") == "HOLA"
        finally:
            for client in clients:
                client.close()


def test_a_worker_that_crashes_at_start_stops_the_server_without_spinning() -> None:
    env = {**os.environ, "ECO_TRIO_FAULT": "worker-crash-at-start"}
    with supervised("2", env=env) as server:
        assert server.process.wait(TIMEOUT) == 1
        text = "".join(server.log)
        assert "died twice before it was ready" in text
        assert text.count("supervisor: started worker-1") == 2  # one retry, then no more


@pytest.mark.parametrize("how", ["DESCONEXION", "SIGTERM"])
def test_desconexion_and_sigterm_stop_everything(how: str) -> None:
    with supervised("2") as server:
        eventually(lambda: serving(server))
        started = pids(server)
        with lines(server.port, 1) as (client,):
            if how == "DESCONEXION":
                assert client.request("DESCONEXION").startswith("DESCONEXION")
            else:
                server.process.send_signal(signal.SIGTERM)
                assert client.file.readline().startswith(b"AVISO")
            assert server.process.wait(TIMEOUT) == 0
        eventually(lambda: not any(alive(pid) for pid in started.values()), seconds=5)


def test_a_killed_supervisor_takes_its_workers_and_redis_with_it() -> None:
    with supervised("2") as server:
        eventually(lambda: serving(server))
        started = pids(server)
        assert {"worker-1", "worker-2", "redis"} <= started.keys()
        server.process.send_signal(signal.SIGKILL)
        eventually(lambda: not any(alive(pid) for pid in started.values()), seconds=5)


def test_without_a_parent_death_signal_the_orphaned_workers_stop_redis() -> None:
    """As on macOS, where no parent-death signal stops the private
    redis-server: the workers, orphaned, stop it themselves."""
    with supervised("2", env={**os.environ, "ECO_TRIO_FAULT": "no-parent-death-signal"}) as server:
        eventually(lambda: serving(server))
        started = pids(server)
        server.process.send_signal(signal.SIGKILL)
        eventually(lambda: not any(alive(pid) for pid in started.values()), seconds=5)


def test_sigusr2_replaces_every_worker_under_load_and_loses_nothing() -> None:
    with supervised("2", "--grace", "5") as server:
        eventually(lambda: serving(server))
        errors: list[str] = []
        done = threading.Event()
        answered = [0]

        def load() -> None:
            # New connections and a request on each, over and over.
            while not done.is_set():
                try:
                    with lines(server.port, 1) as (client,):
                        if client.request("carga") != "CARGA":
                            errors.append(f"bad reply after {client.greeting!r}")
                        answered[0] += 1
                except OSError as exc:
                    errors.append(str(exc))

        with lines(server.port, 1) as (held,):
            threads = [threading.Thread(target=load) for _ in range(4)]
            for thread in threads:
                thread.start()
            time.sleep(0.5)
            server.process.send_signal(signal.SIGUSR2)
            eventually(lambda: any("every worker replaced" in line for line in server.log), seconds=20)
            time.sleep(0.5)
            assert held.request("sigo") == "SIGO"  # a client of an old worker is still served
            done.set()
            for thread in threads:
                thread.join(TIMEOUT)
        assert errors == [] and answered[0] > 50


def test_without_redis_server_it_says_what_to_install(tmp_path: object) -> None:
    python_only = str(tmp_path)
    os.symlink(shutil.which("python3") or "/usr/bin/python3", os.path.join(python_only, "python3"))
    result = subprocess.run(
        [os.sys.executable, "-m", "eco_trio", "servidor", "--port", "0", "--workers", "2"],  # type: ignore[attr-defined]
        capture_output=True, text=True, timeout=TIMEOUT, env={**os.environ, "PATH": python_only},
    )  # fmt: skip
    assert result.returncode == 1
    assert "redis-server" in result.stderr and "apt install redis-server" in result.stderr
    assert "--redis URL" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="SO_REUSEPORT spreads connections on Linux only"
)
def test_reuse_port_gives_each_worker_its_own_listener() -> None:
    with supervised("3", "--reuse-port") as server:
        eventually(lambda: serving(server))
        assert any("each worker listens itself" in line for line in server.log)
        with lines(server.port, 60) as clients:
            time.sleep(1.5)  # every worker's heartbeat
            rows = clients[0].listing()
            assert len(rows) == 60
            per = {row.rsplit("nodo=", 1)[1].split()[0] for row in rows}
            assert len(per) >= 2  # the kernel spread them: not all on one worker


def test_a_hung_worker_is_killed_and_replaced() -> None:
    """A worker that stops reporting (SIGSTOP: alive to the kernel, silent to
    its supervisor) is killed after the liveness timeout and replaced."""
    with supervised("1") as server:
        eventually(lambda: serving(server))
        os.kill(pids(server)["worker-1"], signal.SIGSTOP)
        eventually(lambda: any("said nothing for" in line for line in server.log), seconds=15)
        eventually(lambda: any("started worker-1.2" in line for line in server.log))
        eventually(lambda: sum("workers serving" in line or "ready" in line for line in server.log) >= 1)
        with lines(server.port, 1) as (client,):
            assert client.request("hola") == "HOLA"


def test_a_second_sigterm_stops_at_once() -> None:
    with supervised("2", "--grace", "30") as server:
        eventually(lambda: serving(server))
        started = pids(server)
        with lines(server.port, 1) as (client,):
            # Lines sent and replies never read, until both directions are
            # full: that worker's goodbye would wait out the 30 s of grace.
            client.sock.setblocking(False)
            deadline = time.monotonic() + 2
            with contextlib.suppress(BlockingIOError):
                while time.monotonic() < deadline:
                    client.sock.send(b"x" * 60 + b"\n" * 4000)
            server.process.send_signal(signal.SIGTERM)
            eventually(lambda: any("SIGTERM: stopping every worker" in line for line in server.log))
            server.process.send_signal(signal.SIGTERM)
            assert server.process.wait(10) == 130
        eventually(lambda: not any(alive(pid) for pid in started.values()), seconds=5)


def test_one_metrics_endpoint_shows_the_whole_server() -> None:
    """--metrics under --workers: one address, bound by the supervisor,
    with every worker's clients and nodes in it."""
    import urllib.request

    with supervised("2", "--metrics", "127.0.0.1:0", "--heartbeat", "0.2") as server:
        eventually(lambda: serving(server))
        url = re.search(r"metrics on (http://\S+/metrics)", server.wait_for("metrics on http://"))
        assert url is not None
        started = pids(server)
        with lines(server.port, 2) as clients:
            clients += [accepted_by(worker, server.port, started) for worker in ("worker-1", "worker-2")]

            def scraped() -> dict[str, str]:
                with urllib.request.urlopen(url[1], timeout=TIMEOUT) as response:
                    text = response.read().decode()
                return dict(line.split(" ", 1) for line in text.splitlines() if line and line[0] != "#")

            eventually(lambda: float(scraped().get("eco_trio_clients", "0")) == 4)
            assert float(scraped()["eco_trio_deployment_nodes"]) == 2
