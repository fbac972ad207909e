"""Where the client's user types: a prompt_toolkit prompt, or piped input.

The prompt is prompt_toolkit's (the line editor under iredis, pgcli and
ptpython, on Linux, macOS and Windows alike).  It runs in a worker thread,
so trio stays in charge of the connection, and it owns the screen: server
lines are written through its :class:`~prompt_toolkit.patch_stdout.StdoutProxy`,
which prints them above the prompt and redraws what the user has typed, so
the two never tear.  The proxy also escapes control sequences, so a server
cannot drive the terminal.  History persists in a file (:func:`history_path`)
and the commands complete with Tab.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import BinaryIO, TextIO

import trio
from prompt_toolkit import PromptSession
from prompt_toolkit.completion import WordCompleter
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.patch_stdout import StdoutProxy

COMMANDS = ["AYUDA", "LISTAR", "APAGAR", "DESCONEXION", "hola servidor"]
_CHUNK = 64 * 1024


def history_path() -> Path:
    """``$ECO_TRIO_HISTORY``, else a file in the user's state directory:
    ``$XDG_STATE_HOME`` or ``~/.local/state`` (``%LOCALAPPDATA%`` on Windows)."""
    if explicit := os.environ.get("ECO_TRIO_HISTORY"):
        return Path(explicit)
    if sys.platform == "win32" and (local := os.environ.get("LOCALAPPDATA")):
        return Path(local) / "eco_trio" / "history"
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "eco_trio" / "history"


def _history(path: Path, warn: Callable[[str], None]) -> History:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    except OSError as exc:
        warn(f"history will not be kept: {path}: {exc.strerror or exc}")
        return InMemoryHistory()
    return FileHistory(str(path))


class Prompt:
    """The interactive prompt.  ``message`` is asked again on every redraw
    (twice a second too), so it can show the connection's state."""

    def __init__(self, message: Callable[[], str], warn: Callable[[str], None]) -> None:
        self._session: PromptSession[str] = PromptSession(
            message,
            history=_history(history_path(), warn),
            completer=WordCompleter(COMMANDS, ignore_case=True, sentence=True),
            complete_while_typing=False,
            refresh_interval=0.5,
        )
        self._out = StdoutProxy(sleep_between_writes=0.01)

    async def read(self) -> str | None:
        """The next line the user enters; None at Ctrl-D.  Ctrl-C raises
        KeyboardInterrupt."""
        try:
            return await trio.to_thread.run_sync(self._prompt, abandon_on_cancel=True)
        except EOFError:
            return None

    def _prompt(self) -> str:
        # A worker thread has no signal handlers of its own: Ctrl-C is a key
        # here (prompt_toolkit raises KeyboardInterrupt for it).
        return self._session.prompt(handle_sigint=False)

    def show(self, text: str) -> None:
        self._out.write(text + "\n")
        self._out.flush()

    def close(self) -> None:
        self._out.close()


async def input_chunks(source: BinaryIO) -> AsyncGenerator[bytes, None]:
    """A non-interactive input, in chunks as large as they come (one read
    call per chunk, not one per line)."""
    read = source.read1 if hasattr(source, "read1") else source.read
    while chunk := await trio.to_thread.run_sync(read, _CHUNK):
        yield chunk


def write_lines(output: TextIO) -> Callable[[list[str]], None]:
    """Write a batch of lines with one write and one flush."""

    def write(lines: list[str]) -> None:
        output.write("".join(line + "\n" for line in lines))
        output.flush()

    return write


def print_line(output: TextIO) -> Callable[[str], None]:
    def show(text: str) -> None:
        output.write(text + "\n")
        output.flush()

    return show


class PlainPrompt:
    """Where prompt_toolkit cannot drive the terminal (no termios on a POSIX
    system, say): plain ``input()`` in a worker thread, no editing, no
    history.  Server lines are printed as they come."""

    def __init__(self, message: Callable[[], str], output: TextIO) -> None:
        self._message = message
        self._output = output

    async def read(self) -> str | None:
        try:
            return await trio.to_thread.run_sync(input, self._message(), abandon_on_cancel=True)
        except EOFError:
            self._output.write("\n")
            return None

    def show(self, text: str) -> None:
        self._output.write(text + "\n")
        self._output.flush()

    def close(self) -> None:
        pass


def open_prompt(
    message: Callable[[], str], output: TextIO, warn: Callable[[str], None]
) -> Prompt | PlainPrompt:
    """prompt_toolkit's prompt, or the plain one where it cannot run."""
    try:
        return Prompt(message, warn)
    except ImportError as exc:  # its terminal layer needs a module this platform lacks
        warn(f"line editing is not available here ({exc.name or exc}); using plain input")
        return PlainPrompt(message, output)
