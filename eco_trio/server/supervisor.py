"""``servidor --workers N``: a supervisor that runs N server processes as
the nodes of one deployment, and keeps them alive.

Modelled on gunicorn's arbiter and uvicorn's supervisor:

* The supervisor binds the listening sockets and hands them to every
  worker (inherited descriptors, ``pass_fds``), so the port is taken once
  and a hung worker strands no connections in a queue of its own.
* Workers are new processes (``python -m eco_trio servidor ...``), never
  forked from inside ``trio.run`` (trio does not support that: trio
  issues #1614, #464).  Without ``--redis``, the supervisor starts a
  private ``redis-server`` for the deployment (a unix socket in a 0700
  folder, no persistence), and stops it at the end.
* Each worker reports ``ready`` on its standard output once it serves,
  then ``alive`` every second; one silent for :data:`LIVENESS_TIMEOUT` is
  killed and replaced.  A worker's standard input is a pipe from the
  supervisor: at its end of file (the supervisor died) the worker stops.
* A worker that dies is restarted, with backoff.  One that dies twice in a
  row before it was ever ready stops the whole server: a crash loop must
  not spin.
* TERM, INT and HUP stop everything gracefully (each worker tells its
  clients); a second one stops at once.  A DESCONEXION stops the
  deployment, and the supervisor with it, with status 0.
* SIGUSR2 replaces the workers one at a time: the new one reports ready
  before the old one stops accepting; the old one keeps serving its
  clients until they leave or ``--grace`` ends.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import trio

from eco_trio.server.cluster import DeploymentError

log = logging.getLogger("eco_trio.server")

#: A worker that says nothing for this long is taken for hung.
LIVENESS_TIMEOUT = 10.0
#: How long a new worker may take to report ready.
READY_TIMEOUT = 30.0
#: Restart backoff: doubling from the first, up to the last.
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 5.0
#: The signal that replaces the workers one at a time (HUP already stops).
RESTART_SIGNAL = signal.SIGUSR2 if hasattr(signal, "SIGUSR2") else None
_STOP_SIGNALS = [getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n)]


@dataclass(eq=False)
class Worker:
    slot: int
    generation: int
    process: trio.Process | None = None
    ready: trio.Event = field(default_factory=trio.Event)
    was_ready: bool = False
    #: Replaced (SIGUSR2) or being stopped: its exit is expected.
    retired: bool = False
    desconexion: bool = False

    def running(self) -> trio.Process | None:
        """Its process, while it runs."""
        process = self.process
        return process if process is not None and process.returncode is None else None

    @property
    def name(self) -> str:
        return f"worker-{self.slot}" + (f".{self.generation}" if self.generation > 1 else "")


class Supervisor:
    def __init__(
        self,
        count: int,
        worker_argv: Sequence[str],
        *,
        listeners: list[socket.socket],
        metrics_socket: socket.socket | None,
        redis_url: str | None,
        deployment: str,
        grace: float,
    ) -> None:
        self.count = count
        self.worker_argv = list(worker_argv)
        self.listeners, self.metrics_socket = listeners, metrics_socket
        self.redis_url, self.deployment, self.grace = redis_url, deployment, grace
        self.current: dict[int, Worker] = {}
        self.all: set[Worker] = set()
        self.stopping = False
        self.status = 0
        self._early_deaths: dict[int, int] = {}
        self._restarts: dict[int, int] = {}
        self._nursery: trio.Nursery | None = None
        self._everyone_gone = trio.Event()

    async def run(self) -> int:
        """Start the workers and supervise them until the server stops;
        the exit status.  DeploymentError when it cannot start."""
        async with contextlib.AsyncExitStack() as stack:
            if self.redis_url is None:
                self.redis_url = await stack.enter_async_context(_embedded_redis())
                self.worker_argv.append("--private-redis")
            signals = [*_STOP_SIGNALS, *([RESTART_SIGNAL] if RESTART_SIGNAL is not None else [])]
            with trio.open_signal_receiver(*signals) as received:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._watch_signals, received)
                    for slot in range(1, self.count + 1):
                        await self._start(slot, 1)
                    if not self.stopping:
                        log.info(
                            "supervisor: %d of %d workers serving (pid %d; SIGUSR2 replaces them one by one)",
                            sum(worker.was_ready for worker in self.current.values()),
                            self.count,
                            os.getpid(),
                            extra={"event": "workers_ready"},
                        )
                    await self._everyone_gone.wait()
                    nursery.cancel_scope.cancel()
        log.info("supervisor: stopped", extra={"event": "stopped"})
        return self.status

    # --- starting and watching ----------------------------------------------------

    async def _start(self, slot: int, generation: int) -> Worker | None:
        """Start a worker for ``slot`` and wait until it is ready (or gone)."""
        if self.stopping or self._nursery is None:
            return None
        worker = Worker(slot, generation)
        fds = [sock.fileno() for sock in self.listeners]
        argv = [*self.worker_argv, "--worker", worker.name, "--redis", self.redis_url or ""]
        argv += [arg for fd in fds for arg in ("--listen-fd", str(fd))]
        if self.metrics_socket is not None and slot == 1:
            fds.append(self.metrics_socket.fileno())
            argv += ["--metrics-fd", str(self.metrics_socket.fileno())]
        worker.process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "eco_trio", "servidor", *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            pass_fds=fds,
        )
        self.current[slot] = worker
        self.all.add(worker)
        log.info(
            "supervisor: started %s (pid %d)",
            worker.name,
            worker.process.pid,
            extra={"event": "worker_start"},
        )
        self._nursery.start_soon(self._watch, worker)
        with trio.move_on_after(READY_TIMEOUT):
            await worker.ready.wait()
        return worker if worker.was_ready else None

    async def _watch(self, worker: Worker) -> None:
        process = worker.process
        assert process is not None and process.stdout is not None
        buffer = b""
        while True:
            with trio.move_on_after(LIVENESS_TIMEOUT) as quiet:
                data = await process.stdout.receive_some(4096)
            if quiet.cancelled_caught:
                log.warning(
                    "supervisor: %s said nothing for %g s: killing it",
                    worker.name,
                    LIVENESS_TIMEOUT,
                    extra={"event": "worker_hung"},
                )
                process.kill()
                break
            if not data:
                break
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line == b"ready":
                    worker.was_ready = True
                    worker.ready.set()
                elif line == b"desconexion":
                    worker.desconexion = True
        code = await process.wait()
        worker.ready.set()  # whoever waits for it: it is not coming
        await self._exited(worker, code)

    async def _exited(self, worker: Worker, code: int) -> None:
        self.all.discard(worker)
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"status {code}"
        log.log(
            logging.INFO if worker.retired or self.stopping or code == 0 else logging.WARNING,
            "supervisor: %s exited (%s)",
            worker.name,
            how,
            extra={"event": "worker_exit"},
        )
        if self.current.get(worker.slot) is worker:
            del self.current[worker.slot]
        if code != 0 or not worker.desconexion:
            await self._forget(worker)
        if worker.desconexion and not self.stopping:
            log.info("supervisor: DESCONEXION: stopping every worker", extra={"event": "desconexion"})
            self.stop()
        elif not (worker.retired or self.stopping):
            self._replace(worker)
        if self.stopping and not self.all:
            self._everyone_gone.set()

    def _replace(self, worker: Worker) -> None:
        slot = worker.slot
        if not worker.was_ready:
            self._early_deaths[slot] = self._early_deaths.get(slot, 0) + 1
            if self._early_deaths[slot] >= 2:
                log.error(
                    "supervisor: %s died twice before it was ready (see its log above): stopping the server",
                    worker.name,
                    extra={"event": "crash_loop"},
                )
                self.status = 1
                self.stop()
                return
        else:
            self._early_deaths[slot] = 0
        restarts = self._restarts.get(slot, 0)
        self._restarts[slot] = restarts + 1
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2**restarts) if not worker.was_ready else BACKOFF_FIRST
        log.info("supervisor: restarting worker %d in %g s", slot, delay, extra={"event": "worker_restart"})
        assert self._nursery is not None
        self._nursery.start_soon(self._restart_later, slot, worker.generation + 1, delay)

    async def _restart_later(self, slot: int, generation: int, delay: float) -> None:
        await trio.sleep(delay)
        await self._start(slot, generation)

    async def _forget(self, worker: Worker) -> None:
        """A dead worker's clients and share leave the deployment now."""
        from eco_trio.server.cluster import resp, scripts

        link = resp.Link(self.redis_url or "")
        try:
            with trio.move_on_after(1.0):
                await link.script(scripts.FORGET, f"{self.deployment}:", worker.name)
        except (OSError, trio.BrokenResourceError, resp.ReplyError):
            pass  # its lease ends by itself
        finally:
            await link.aclose()

    # --- stopping and restarting ----------------------------------------------------

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop every worker (``sig``: TERM is graceful, KILL at once)."""
        self.stopping = True
        for worker in list(self.all):
            worker.retired = True
            if (process := worker.running()) is not None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(sig)
        if not self.all:
            self._everyone_gone.set()

    async def _watch_signals(self, received: AsyncIterator[int]) -> None:
        async for signum in received:
            name = signal.Signals(signum).name
            if signum == RESTART_SIGNAL:
                log.info(
                    "supervisor: %s: replacing the workers one at a time", name, extra={"event": "signal"}
                )
                assert self._nursery is not None
                self._nursery.start_soon(self._rolling_restart)
            elif self.stopping:
                log.warning(
                    "supervisor: %s again: stopping every worker now", name, extra={"event": "signal"}
                )
                self.status = self.status or 130
                self.stop(signal.SIGKILL)
            else:
                log.info(
                    "supervisor: %s: stopping every worker (send it again to stop at once)",
                    name,
                    extra={"event": "signal"},
                )
                self.stop()

    async def _rolling_restart(self) -> None:
        for slot in range(1, self.count + 1):
            old = self.current.get(slot)
            generation = max((w.generation for w in self.all if w.slot == slot), default=0) + 1
            new = await self._start(slot, generation)
            if new is None:
                log.error(
                    "supervisor: the new worker %d did not become ready: keeping the old one", slot,
                    extra={"event": "restart_failed"},
                )  # fmt: skip
                if old is not None and old.running():
                    self.current[slot] = old
                return
            if old is not None and (process := old.running()) is not None:
                old.retired = True
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGUSR2)  # drain: stop accepting, let clients leave
        log.info("supervisor: every worker replaced", extra={"event": "restart_done"})


def worker_count(text: str) -> int:
    """``--workers``: a number, or ``auto`` for the cores this process may use."""
    if text == "auto":
        affinity = getattr(os, "sched_getaffinity", None)
        return len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)
    count = int(text)
    if count < 1:
        raise ValueError("workers must be at least 1, or auto")
    return count


def _die_with_parent() -> None:
    """In a child: be sent SIGTERM when the supervisor dies (Linux), so a
    supervisor killed with SIGKILL leaves no redis-server behind."""
    if os.environ.get("ECO_TRIO_FAULT") == "no-parent-death-signal":  # a test hook, in CONTRIBUTING
        return  # as on macOS: the orphaned workers must stop Redis themselves
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


@contextlib.asynccontextmanager
async def _embedded_redis() -> AsyncIterator[str]:
    """A private redis-server for the deployment; its URL."""
    program = shutil.which("redis-server")
    if program is None:
        raise DeploymentError(
            "workers need redis-server, which is not installed (apt install redis-server, "
            "brew install redis), or redis=URL for one that runs elsewhere"
        )
    from eco_trio.server.cluster import resp

    with tempfile.TemporaryDirectory(prefix="eco_trio-") as folder:
        os.chmod(folder, 0o700)
        path = os.path.join(folder, "redis.sock")
        # Started from this (the main) thread, not through trio's process
        # API, which forks from a worker thread: the parent-death signal
        # follows the thread that forked, and trio's idle threads exit.
        process = subprocess.Popen(  # noqa: ASYNC220 (a fork and exec: no waiting)
            [program, "--port", "0", "--unixsocket", path, "--unixsocketperm", "700",
             "--save", "", "--appendonly", "no", "--dir", folder],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent,
        )  # fmt: skip
        url = f"unix://{path}"
        try:
            link = resp.Link(url)
            deadline = trio.current_time() + 5.0
            while True:
                try:
                    if await link.call("PING") == "PONG":
                        break
                except (OSError, trio.BrokenResourceError, resp.ReplyError):
                    pass
                if trio.current_time() > deadline or process.poll() is not None:
                    raise DeploymentError("the private redis-server did not answer PING")
                await trio.sleep(0.02)
            await link.aclose()
            log.info("supervisor: private redis-server on %s (pid %d)", url, process.pid)
            yield url
        finally:
            with trio.CancelScope(shield=True):
                if process.poll() is None:
                    process.terminate()
                with trio.move_on_after(5):
                    while process.poll() is None:  # noqa: ASYNC110 (a Popen has no async wait)
                        await trio.sleep(0.02)
                if process.poll() is None:
                    process.kill()
                    process.wait()
