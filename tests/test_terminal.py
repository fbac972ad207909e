"""The interactive client in a real terminal (tmux), read off the screen as
a person would see it: greeting, prompt, replies, a notice arriving while a
line is half typed, a paste of several lines, history after a restart,
Ctrl-C.  Skipped, with the reason, where tmux is not installed."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from .processes import free_port, server_process

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")

TIMEOUT = 10.0
WIDTH = 250  # wide enough that the greeting stays one line
HEIGHT = 40


class Tmux:
    """One program in its own tmux server (its own socket: nothing shared
    with a tmux the user may run), driven with send-keys, read with
    capture-pane."""

    def __init__(self, command: str, tmp_path: Path) -> None:
        self.socket = str(tmp_path / f"tmux-{uuid.uuid4().hex[:8]}")
        self.status = tmp_path / "status"
        wrapped = f"{command}; echo $? > {shlex.quote(str(self.status))}; sleep 30"
        self._tmux("new-session", "-d", "-x", str(WIDTH), "-y", str(HEIGHT), wrapped)

    def _tmux(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-S", self.socket, *args], capture_output=True, text=True, timeout=TIMEOUT, check=True
        ).stdout

    def screen(self) -> list[str]:
        """The screen above the bottom toolbar (the pane's last row)."""
        lines = self._tmux("capture-pane", "-p").rstrip("\n").split("\n")[: HEIGHT - 1]
        while lines and not lines[-1].strip():
            lines.pop()
        return [line.rstrip() for line in lines]

    def toolbar(self) -> str:
        return self._tmux("capture-pane", "-p").split("\n")[HEIGHT - 1].strip()

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", *keys)

    def paste(self, text: str, *, bracketed: bool = False) -> None:
        self._tmux("set-buffer", text)
        self._tmux("paste-buffer", *(["-p"] if bracketed else []))

    def wait_for(self, condition: str, *, last: bool = False) -> list[str]:
        """Until a screen line contains ``condition`` (is the last line, if ``last``)."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            screen = self.screen()
            found = (
                screen and screen[-1] == condition.rstrip()
                if last
                else any(condition in line for line in screen)
            )
            if found:
                return screen
            assert time.monotonic() < deadline, f"{condition!r} never showed:\n" + "\n".join(screen)
            time.sleep(0.05)

    def exit_status(self) -> int:
        deadline = time.monotonic() + TIMEOUT
        while not self.status.exists() or not self.status.read_text().strip():
            assert time.monotonic() < deadline, "the client did not exit:\n" + "\n".join(self.screen())
            time.sleep(0.05)
        return int(self.status.read_text())

    def close(self) -> None:
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True, timeout=TIMEOUT)


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    with server_process() as server:
        yield server.port, tmp_path


def client_command(port: int, history: Path) -> str:
    env = f"ECO_TRIO_HISTORY={shlex.quote(str(history))}"
    return f"{env} {shlex.quote(sys.executable)} -m eco_trio cliente -H 127.0.0.1 -p {port}"


@contextmanager
def started(port: int, tmp_path: Path) -> Iterator[Tmux]:
    """The interactive client in tmux, once its prompt is up; closed after,
    whatever happens (its start included)."""
    session = Tmux(client_command(port, tmp_path / "history"), tmp_path)
    try:
        session.wait_for("eco> ", last=True)
        yield session
    finally:
        session.close()


def test_greeting_then_prompt_then_replies(terminal: tuple[int, Path]) -> None:
    port, tmp_path = terminal
    with started(port, tmp_path) as session:
        screen = session.screen()
        assert screen[0].startswith("BIENVENIDO") and screen[1:] == ["eco>"]
        session.keys("ñandú straße", "Enter")
        session.wait_for("ÑANDÚ STRASSE")
        screen = session.wait_for("eco> ", last=True)
        assert screen[1:] == ["eco> ñandú straße", "ÑANDÚ STRASSE", "eco>"]
        session.keys("APAGAR", "Enter")
        assert session.exit_status() == 0


def test_a_notice_while_typing_and_a_reconnect(terminal: tuple[int, Path]) -> None:
    port, tmp_path = terminal
    with started(port, tmp_path) as session:
        session.keys("medio escri")
        time.sleep(0.3)
        kicker = subprocess.run(
            [sys.executable, "-m", "eco_trio", "cliente", "-p", str(port), "DESCONEXION"],
            capture_output=True, text=True, timeout=TIMEOUT,
        )  # fmt: skip
        assert kicker.returncode == 0
        screen = session.wait_for("eco (desconectado)> medio escri", last=True)
        assert any(line.startswith("AVISO: el servidor se está apagando") for line in screen)
        assert "eco> medio escri" not in screen  # the half line moved below the notice, whole


def test_a_paste_of_five_lines_never_tears(terminal: tuple[int, Path]) -> None:
    port, tmp_path = terminal
    words = ["uno", "dos", "tres", "cuatro", "cinco"]
    with started(port, tmp_path) as session:
        session.paste("".join(word + "\n" for word in words))
        screen = session.wait_for("CINCO")
        screen = session.wait_for("eco> ", last=True)
        body = screen[1:]
        assert [line for line in body if line.isupper()] == [word.upper() for word in words]
        assert [line.removeprefix("eco> ") for line in body if line.startswith("eco> ")] == words
        assert all(line.isupper() or line.startswith("eco>") for line in body), body


def test_history_is_kept_across_runs_and_commands_complete(terminal: tuple[int, Path]) -> None:
    port, tmp_path = terminal
    with started(port, tmp_path) as session:
        session.keys("recuerdame", "Enter")
        session.wait_for("RECUERDAME")
        session.keys("C-d")
        assert session.exit_status() == 0
    (tmp_path / "status").unlink()
    with started(port, tmp_path) as session:
        session.keys("Up")
        session.wait_for("eco> recuerdame", last=True)
        session.keys("C-u", "lis", "Tab")
        session.wait_for("eco> LISTAR")  # completed (the menu may show below)
        session.keys("Enter")
        if "CLIENTES 1" not in "\n".join(session.screen()):
            time.sleep(0.3)
            session.keys("Enter")  # the first Enter may only close the menu
        session.wait_for("CLIENTES 1")


def test_ctrl_c_clears_the_line_and_ctrl_d_leaves(terminal: tuple[int, Path]) -> None:
    """As in iredis, pgcli and bash: Ctrl-C clears the line and the session
    goes on; Ctrl-D leaves."""
    port, tmp_path = terminal
    with started(port, tmp_path) as session:
        session.keys("a medias", "C-c")
        session.wait_for("eco> ", last=True)
        session.keys("sigo", "Enter")
        screen = session.wait_for("SIGO")
        assert "A MEDIAS" not in screen
        session.keys("C-d")
        assert session.exit_status() == 0
        assert os.path.exists(tmp_path / "history")


def test_completion_has_descriptions_and_the_toolbar_shows_the_syntax(terminal: tuple[int, Path]) -> None:
    port, tmp_path = terminal
    with started(port, tmp_path) as session:
        assert "ESTADO" in session.screen()[0]  # the greeting names it
        session.keys("ES", "Tab")
        session.wait_for("eco> ESTADO", last=True)
        assert "ESTADO [token]" in session.toolbar()
        session.keys("C-u", "Tab")  # the whole menu, each with what it does
        screen = session.wait_for("apagar el servidor")
        assert any("ESTADO" in line and "contadores" in line for line in screen)
        session.keys("Escape")  # closes the menu at once
        deadline = time.monotonic() + TIMEOUT
        while any("contadores" in line for line in session.screen()):
            assert time.monotonic() < deadline, "Escape left the menu open"
            time.sleep(0.05)


def test_desconexion_asks_first(terminal: tuple[int, Path]) -> None:
    port, tmp_path = terminal
    with started(port, tmp_path) as session:
        session.keys("desconexion", "Enter")
        session.wait_for("¿Seguro? (s/N)")
        session.keys("n", "Enter")
        session.wait_for("[DESCONEXION no enviado]")
        session.keys("hola", "Enter")
        session.wait_for("HOLA")  # still connected: nothing was sent
        session.keys("desconexion", "Enter")
        session.wait_for("¿Seguro? (s/N)")
        session.keys("s", "Enter")
        session.wait_for("DESCONEXION: apagando el servidor.")
        assert session.exit_status() == 0


def test_a_bracketed_paste_ending_in_a_newline_is_sent_as_it_is(terminal: tuple[int, Path]) -> None:
    port, tmp_path = terminal
    words = [f"linea{n}" for n in range(10)]
    with started(port, tmp_path) as session:
        session.paste("".join(word + "\n" for word in words), bracketed=True)
        session.wait_for("LINEA9")  # no Enter needed
        session.wait_for("eco> ", last=True)
        session.keys("LISTAR", "Enter")
        screen = session.wait_for("(tú)")
        own = next(line for line in screen if line.endswith("(tú)"))
        assert "lineas=11/" in own, own  # ten pasted lines and LISTAR: no empty eleventh


def test_starting_with_no_server_waits_at_a_disconnected_prompt(tmp_path: Path) -> None:
    port = free_port()
    session = Tmux(client_command(port, tmp_path / "history"), tmp_path)
    try:
        screen = session.wait_for("eco (desconectado)> ", last=True)
        assert any("no hay servidor en" in line for line in screen)  # one line, in Spanish
        with server_process("--port", str(port)):
            session.keys("CONECTAR", "Enter")
            session.wait_for("BIENVENIDO")
            session.keys("APAGAR", "Enter")
            assert session.exit_status() == 0
    finally:
        session.close()


def test_apagar_while_disconnected_leaves(tmp_path: Path) -> None:
    session = Tmux(client_command(free_port(), tmp_path / "history"), tmp_path)
    try:
        session.wait_for("eco (desconectado)> ", last=True)
        session.keys("apagar", "Enter")
        assert session.exit_status() == 0
    finally:
        session.close()
