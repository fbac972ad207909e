"""Where the client's user types: a readline prompt, or piped lines.

The prompt runs ``input()`` in a worker thread, so the terminal stays in
blocking mode (no ``O_NONBLOCK`` left behind on a shared tty) and readline
gives line editing and history.  Server lines that arrive meanwhile are
printed above the prompt, which is then redrawn with what the user has typed
so far.  Where there is no readline or termios (Windows), the prompt is
plain ``input()`` and the terminal needs no restoring.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

import trio

try:
    import readline
except ImportError:  # pragma: no cover - platforms without GNU readline
    readline = None  # type: ignore[assignment]
try:
    import termios
except ImportError:  # pragma: no cover - Windows
    termios = None  # type: ignore[assignment]

PROMPT = "eco> "


class Console:
    def __init__(
        self,
        output: TextIO,
        *,
        prompt: str = PROMPT,
        read_line: Callable[[str], str] = input,
    ) -> None:
        self._output = output
        self._prompt = prompt
        self._read_line = read_line
        self._prompting = False
        # With readline, "prompting" starts once readline has drawn the
        # prompt (its pre-input hook); marking it earlier would let a server
        # line draw a prompt that readline then draws a second time.
        self._uses_hook = readline is not None and read_line is input
        if self._uses_hook:
            readline.set_pre_input_hook(self._prompt_drawn)

    def _prompt_drawn(self) -> None:
        self._prompting = True

    def _read(self) -> str:
        if not self._uses_hook:
            self._prompting = True
        try:
            return self._read_line(self._prompt)
        finally:
            self._prompting = False

    async def lines(self) -> AsyncGenerator[str, None]:
        """What the user types, a line at a time, until end of input (Ctrl-D).
        Blank lines are not sent."""
        while True:
            try:
                line = await trio.to_thread.run_sync(self._read, abandon_on_cancel=True)
            except EOFError:
                self._output.write("\n")
                return
            if line.strip():
                yield line

    def finish(self) -> None:
        """Clear a prompt the session ended under (its input is abandoned)."""
        if self._prompting:
            self._output.write("\r\x1b[2K")
            self._output.flush()
            self._prompting = False

    def show(self, text: str) -> None:
        if self._prompting:
            typed = readline.get_line_buffer() if readline is not None else ""
            # Clear the prompt line, print above it, then redraw the prompt.
            self._output.write(f"\r\x1b[2K{text}\n{self._prompt}{typed}")
        else:
            self._output.write(text + "\n")
        self._output.flush()


@contextmanager
def terminal_restored(stream: TextIO) -> Iterator[None]:
    """Put the terminal back as it was, even if we leave while readline,
    in its worker thread, still has it in character-at-a-time mode."""
    if termios is None:
        yield
        return
    try:
        saved = termios.tcgetattr(stream)
    except (termios.error, ValueError):
        yield
        return
    try:
        yield
    finally:
        termios.tcsetattr(stream, termios.TCSADRAIN, saved)


async def piped_lines(source: TextIO) -> AsyncGenerator[str, None]:
    """Lines of a non-interactive input, without their line endings."""
    async for line in trio.wrap_file(source):
        yield line.rstrip("\r\n")


def print_line(output: TextIO) -> Callable[[str], None]:
    def show(text: str) -> None:
        output.write(text + "\n")
        output.flush()

    return show
