"""Where the client's user types: a prompt_toolkit prompt, or piped input.

The prompt is prompt_toolkit's (the line editor under iredis, pgcli and
ptpython, on Linux, macOS and Windows alike).  It runs in a worker thread,
so trio stays in charge of the connection, and it owns the screen: server
lines are printed through its ``run_in_terminal``, above the prompt, which
is then redrawn with what the user has typed, so the two never tear (see
:class:`Prompt`).  Control characters from the server are shown as U+FFFD,
so a server cannot drive the terminal.  History persists in a file
(:func:`history_path`) and the commands complete with Tab.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import BinaryIO, TextIO

import trio
from prompt_toolkit import PromptSession
from prompt_toolkit.application import run_in_terminal
from prompt_toolkit.completion import WordCompleter
from prompt_toolkit.history import FileHistory, History, InMemoryHistory

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
    (twice a second too), so it can show the connection's state.

    Screen ownership: while a prompt is drawn, server lines are handed to
    its event loop and printed with ``run_in_terminal`` (above the prompt,
    which is then redrawn).  From the moment the user presses Enter until
    the next prompt is up, they wait, and are printed before it: a line
    printed while prompt_toolkit finishes the accepted one would overwrite
    it.  With no prompt in progress at all, they are printed at once.
    """

    def __init__(self, message: Callable[[], str], output: TextIO, warn: Callable[[str], None]) -> None:
        self._session: PromptSession[str] = PromptSession(
            message,
            history=_history(history_path(), warn),
            completer=WordCompleter(COMMANDS, ignore_case=True, sentence=True),
            complete_while_typing=False,
            refresh_interval=0.5,
        )
        self._output = output
        self._lock = threading.Lock()
        self._in_progress = False  # the prompt thread is inside session.prompt()
        self._drawn = False  # ... and the prompt is up (pre_run has run)
        self._pending: list[str] = []  # to print before the next prompt is up
        self._handed_over: list[str] = []  # given to the prompt's loop, not yet printed

    async def read(self) -> str | None:
        """The next line the user enters; None at Ctrl-D.  Ctrl-C raises
        KeyboardInterrupt."""
        try:
            return await trio.to_thread.run_sync(self._prompt, abandon_on_cancel=True)
        except EOFError:
            return None

    def _prompt(self) -> str:
        with self._lock:
            self._in_progress = True
        try:
            # A worker thread has no signal handlers of its own: Ctrl-C is a
            # key here (prompt_toolkit raises KeyboardInterrupt for it).
            return self._session.prompt(handle_sigint=False, pre_run=self._prompt_is_up)
        finally:
            with self._lock:
                self._in_progress = self._drawn = False
                lines = self._handed_over + self._pending
                self._handed_over, self._pending = [], []
                self._write(lines)

    def _prompt_is_up(self) -> None:  # in the prompt's loop, before its first drawing
        with self._lock:
            self._drawn = True
            lines, self._pending = self._pending, []
            self._write(lines)  # nothing of this prompt is on the screen yet

    def show(self, text: str) -> None:
        text = _printable(text)
        with self._lock:
            if not self._in_progress:
                self._write([text])
                return
            if not self._drawn:
                self._pending.append(text)
                return
            loop = self._session.app.loop
            if loop is None:  # the prompt has just ended: its thread prints what waits
                self._pending.append(text)
                return
            self._handed_over.append(text)
        # If its loop closed meanwhile, the line waits in _handed_over for the
        # prompt thread, which prints whatever is left as the prompt ends.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._print_handed_over)

    def _print_handed_over(self) -> None:  # in the prompt's loop
        if not self._settle_if_done():
            run_in_terminal(self._write_handed_over)

    def _write_handed_over(self) -> None:  # in the prompt's loop, the prompt erased
        if not self._settle_if_done():
            with self._lock:
                lines, self._handed_over = self._handed_over, []
                self._write(lines)

    def _settle_if_done(self) -> bool:
        """Once Enter was pressed, lines wait for the next prompt (or for
        this one's end); a line printed now would overwrite the accepted one."""
        with self._lock:
            if not self._session.app.is_done:
                return False
            self._pending += self._handed_over
            self._handed_over = []
            return True

    def _write(self, lines: list[str]) -> None:
        if lines:
            self._output.write("".join(line + "\n" for line in lines))
            self._output.flush()

    def close(self) -> None:
        pass


#: Control characters a server could use to drive the terminal (escape
#: sequences, carriage returns that overwrite the prompt) are shown as U+FFFD.
_UNPRINTABLE = {code: "\ufffd" for code in [*range(0x20), 0x7F, *range(0x80, 0xA0)] if code != 0x09}


def _printable(text: str) -> str:
    return text.translate(_UNPRINTABLE)


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
        return Prompt(message, output, warn)
    except ImportError as exc:  # its terminal layer needs a module this platform lacks
        warn(f"line editing is not available here ({exc.name or exc}); using plain input")
        return PlainPrompt(message, output)
