"""Where the client's user types: a prompt_toolkit prompt, or piped input.

The prompt is prompt_toolkit's (the line editor under iredis, pgcli and
ptpython, on Linux, macOS and Windows alike).  It runs in a worker thread,
so trio stays in charge of the connection, and it owns the screen: server
lines are printed through its ``run_in_terminal``, above the prompt, which
is then redrawn with what the user has typed, so the two never tear (see
:class:`Prompt`).  Control characters from the server are shown escaped
(``\\x1b``), so a server cannot drive the terminal; ``--raw`` shows them as
they are.  Lines waiting to be printed are bounded (MAX_WAITING): under a
flood faster than the terminal, the oldest are dropped and counted.  History persists in a file
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
from prompt_toolkit.application import get_app, run_in_terminal
from prompt_toolkit.completion import WordCompleter
from prompt_toolkit.filters import has_completions
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.keys import Keys

from eco_trio.client.interactive import CTRL_C
from eco_trio.wire.protocol import carries_token
from eco_trio.wire.visible import escape

#: What Tab completes, with the one-line description its menu shows (as
#: iredis shows a command's summary), and the syntax the toolbar shows
#: while the command is being typed.
COMMANDS: dict[str, tuple[str, str]] = {
    "AYUDA": ("la lista de comandos", "AYUDA"),
    "LISTAR": ("los clientes conectados", "LISTAR"),
    "ESTADO": ("los contadores del servidor", "ESTADO [token]"),
    "AUTENTICAR": ("demostrar el token del servidor", "AUTENTICAR <token>"),
    "APAGAR": ("cerrar esta conexión y salir", "APAGAR"),
    "DESCONEXION": ("apagar el servidor, para todos (pregunta antes)", "DESCONEXION [token]"),
    "CONECTAR": ("volver a conectar (local: no se envía)", "CONECTAR"),
    "hola servidor": ("el saludo del proyecto original", "hola servidor"),
}
#: Server lines waiting to be printed, at most (a flood drops the oldest).
MAX_WAITING = 5000
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


def _syntax_hint() -> str:
    """The bottom toolbar: the syntax of the command being typed, or how to
    find the commands."""
    words = get_app().current_buffer.text.split()
    if words:
        typed = words[0].upper()
        for word, (summary, syntax) in COMMANDS.items():
            if word.upper().startswith(typed) and " " not in word:
                return f" {syntax}: {summary}"
    return " Tab: comandos · Ctrl-C: borra la línea · Ctrl-D: salir"


def _key_bindings() -> KeyBindings:
    bindings = KeyBindings()

    @bindings.add("escape", eager=True, filter=has_completions)
    def _close_menu(event: KeyPressEvent) -> None:
        """Escape closes the completion menu (without waiting to see
        whether it starts an Alt- key)."""
        event.current_buffer.cancel_completion()

    @bindings.add(Keys.BracketedPaste)
    def _paste(event: KeyPressEvent) -> None:
        """A pasted block that ends with a newline is entered as it is:
        every line of it, and no empty line after."""
        text = event.data.replace("\r\n", "\n").replace("\r", "\n")
        buffer = event.current_buffer
        if text.endswith("\n"):
            buffer.insert_text(text[:-1])
            buffer.validate_and_handle()
        else:
            buffer.insert_text(text)

    return bindings


class PrivateHistory(FileHistory):
    """The history file, kept as redis-cli keeps its own: lines that carry
    the token (``AUTENTICAR``, ``ESTADO``/``DESCONEXION`` with an argument)
    are never kept, and the file is readable by its owner only."""

    def append_string(self, string: str) -> None:
        if not carries_token(string):
            super().append_string(string)


def _history(path: Path, warn: Callable[[str], None]) -> History:
    try:
        private_folder(path.parent)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
        if sys.platform != "win32":
            os.chmod(path, 0o600)  # a file made by an older version was 0644
    except OSError as exc:
        warn(f"history will not be kept: {path}: {exc.strerror or exc}")
        return InMemoryHistory()
    return PrivateHistory(str(path))


def private_folder(folder: Path) -> None:
    """Make ``folder`` (mode 0700), or make it 0700 if it is ours."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if sys.platform != "win32" and folder.stat().st_uid == os.getuid():
        os.chmod(folder, 0o700)


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

    def __init__(
        self, message: Callable[[], str], output: TextIO, warn: Callable[[str], None], *, raw: bool = False
    ) -> None:
        self._shown = shown(output, raw=raw)
        self._session: PromptSession[str] = PromptSession(
            message,
            history=_history(history_path(), warn),
            completer=WordCompleter(
                list(COMMANDS),
                meta_dict={word: summary for word, (summary, _) in COMMANDS.items()},
                ignore_case=True,
                sentence=True,
            ),
            complete_while_typing=False,
            refresh_interval=0.5,
            bottom_toolbar=_syntax_hint,
            key_bindings=_key_bindings(),
        )
        self._output = output
        self._lock = threading.Lock()
        self._in_progress = False  # the prompt thread is inside session.prompt()
        self._drawn = False  # ... and the prompt is up (pre_run has run)
        self._pending: list[str] = []  # to print before the next prompt is up
        self._handed_over: list[str] = []  # given to the prompt's loop, not yet printed
        self._scheduled = False  # a call to print _handed_over is on its way to the loop
        self._omitted = 0  # lines dropped from the waiting ones (MAX_WAITING)

    async def read(self) -> str | None:
        """The next line the user enters; None at Ctrl-D, CTRL_C at Ctrl-C
        (the line is cleared; the session goes on)."""
        try:
            return await trio.to_thread.run_sync(self._prompt, abandon_on_cancel=True)
        except EOFError:
            return None
        except KeyboardInterrupt:
            return CTRL_C

    async def confirm(self, question: str) -> bool:
        """Ask a yes/no question (no by default; Ctrl-C and Ctrl-D say no)."""

        def ask() -> str:
            return PromptSession[str]().prompt(question, handle_sigint=False)

        try:
            answer = await trio.to_thread.run_sync(ask, abandon_on_cancel=True)
        except (EOFError, KeyboardInterrupt):
            return False
        return answer.strip().lower() in ("s", "si", "sí", "y", "yes")

    def _prompt(self) -> str:
        with self._lock:
            self._in_progress = True
        try:
            # A worker thread has no signal handlers of its own: Ctrl-C is a
            # key here (prompt_toolkit raises KeyboardInterrupt for it).
            return self._session.prompt(handle_sigint=False, pre_run=self._prompt_is_up)
        finally:
            with self._lock:
                self._in_progress = self._drawn = self._scheduled = False
                lines = self._handed_over + self._pending
                self._handed_over, self._pending = [], []
                self._write(lines)

    def _prompt_is_up(self) -> None:  # in the prompt's loop, before its first drawing
        with self._lock:
            self._drawn = True
            lines, self._pending = self._pending, []
            self._write(lines)  # nothing of this prompt is on the screen yet

    def show(self, text: str) -> None:
        text = self._shown(text)
        with self._lock:
            if not self._in_progress:
                self._write([text])
                return
            loop = self._session.app.loop if self._drawn else None
            if loop is None:  # not up yet, or just ended: printed before the next prompt
                self._pending.append(text)
                self._bound()
                return
            self._handed_over.append(text)
            self._bound()
            if self._scheduled:  # one call prints every line handed over by then
                return
            self._scheduled = True
        # If its loop closed meanwhile, the line waits in _handed_over for the
        # prompt thread, which prints whatever is left as the prompt ends.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._print_handed_over)

    def _bound(self) -> None:
        """Under a flood faster than the terminal, drop the oldest half of
        the waiting lines (counted, and said) instead of holding them all."""
        waiting = len(self._handed_over) + len(self._pending)
        if waiting <= MAX_WAITING:
            return
        drop = waiting // 2
        from_handed = min(drop, len(self._handed_over))
        del self._handed_over[:from_handed]
        del self._pending[: drop - from_handed]
        self._omitted += drop

    def _print_handed_over(self) -> None:  # in the prompt's loop
        with self._lock:
            self._scheduled = False
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
        if self._omitted:
            lines = [
                f"[{self._omitted} líneas del servidor omitidas: llegaban más rápido de lo que se muestran]",
                *lines,
            ]
            self._omitted = 0
        if lines:
            self._output.write("".join(line + "\n" for line in lines))
            self._output.flush()

    def close(self) -> None:
        pass


async def input_chunks(source: BinaryIO) -> AsyncGenerator[bytes, None]:
    """A non-interactive input, in chunks as large as they come (one read
    call per chunk, not one per line)."""
    read = source.read1 if hasattr(source, "read1") else source.read
    while chunk := await trio.to_thread.run_sync(read, _CHUNK):
        yield chunk


def shown(output: TextIO, *, raw: bool = False) -> Callable[[str], str]:
    """How server text is shown on ``output``: exact into a pipe or a file
    (or with ``raw``), control characters escaped (``\\x1b``) on a terminal,
    as redis-cli does, so a server cannot drive it (clear the screen, set
    the title, write the clipboard)."""
    if raw or not _isatty(output):
        return str
    return escape


def _isatty(output: TextIO) -> bool:
    try:
        return output.isatty()
    except (ValueError, OSError):
        return False


def write_lines(output: TextIO, *, raw: bool = False) -> Callable[[list[str]], None]:
    """Write a batch of lines with one write and one flush."""
    show = shown(output, raw=raw)

    def write(lines: list[str]) -> None:
        output.write("".join(show(line) + "\n" for line in lines))
        output.flush()

    return write


def print_line(output: TextIO, *, raw: bool = False) -> Callable[[str], None]:
    show = shown(output, raw=raw)

    def write(text: str) -> None:
        output.write(show(text) + "\n")
        output.flush()

    return write


class PlainPrompt:
    """Where prompt_toolkit cannot drive the terminal (no termios on a POSIX
    system, say): plain ``input()`` in a worker thread, no editing, no
    history.  Server lines are printed as they come."""

    def __init__(self, message: Callable[[], str], output: TextIO, *, raw: bool = False) -> None:
        self._message = message
        self._output = output
        self._shown = shown(output, raw=raw)

    async def read(self) -> str | None:
        try:
            return await trio.to_thread.run_sync(input, self._message(), abandon_on_cancel=True)
        except EOFError:
            self._output.write("\n")
            return None

    def show(self, text: str) -> None:
        self._output.write(self._shown(text) + "\n")
        self._output.flush()

    def close(self) -> None:
        pass


def open_prompt(
    message: Callable[[], str], output: TextIO, warn: Callable[[str], None], *, raw: bool = False
) -> Prompt | PlainPrompt:
    """prompt_toolkit's prompt, or the plain one where it cannot run."""
    try:
        return Prompt(message, output, warn, raw=raw)
    except ImportError as exc:  # its terminal layer needs a module this platform lacks
        warn(f"line editing is not available here ({exc.name or exc}); using plain input")
        return PlainPrompt(message, output, raw=raw)
