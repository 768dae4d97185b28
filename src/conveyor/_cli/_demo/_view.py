"""The live view: a block of lines redrawn in place on a terminal; elsewhere (a pipe,
a CI log, a test) one plain summary line every few seconds, so the output stays
readable. Notes (a worker recycled, a process's final books) are printed once, above
the block, in both cases.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from typing import TextIO

_UP_AND_CLEAR = "\x1b[{n}F\x1b[J"  # cursor up n lines to column 1, clear to the end


class LiveView:
    def __init__(
        self,
        block: Callable[[], list[str]],
        line: Callable[[], str],
        stream: TextIO | None = None,
        tty: bool | None = None,
    ) -> None:
        self._block = block
        self._line = line
        self._stream = stream if stream is not None else sys.stdout
        self.tty = self._stream.isatty() if tty is None else tty
        self._drawn = 0  # lines of the block on the screen now
        self._every = 0.25 if self.tty else 3.0
        self._next = time.monotonic() + self._every

    def _write(self, text: str) -> None:
        self._stream.write(text)
        self._stream.flush()

    def _erase(self) -> str:
        drawn, self._drawn = self._drawn, 0
        return _UP_AND_CLEAR.format(n=drawn) if drawn else ""

    def tick(self, force: bool = False) -> None:
        """Redraw (or print the summary line) if it is due."""
        now = time.monotonic()
        if not force and now < self._next:
            return
        self._next = now + self._every
        if self.tty:
            # A line wider than the terminal wraps, and the block would no longer be
            # where the cursor goes back to: cut each to the width.
            width = max(20, shutil.get_terminal_size().columns - 1)
            lines = [text[:width] for text in self._block()]
            self._write(self._erase() + "".join(f"{text}\n" for text in lines))
            self._drawn = len(lines)
        else:
            self._write(self._line() + "\n")

    def note(self, text: str) -> None:
        """A line that stays: printed above the live block."""
        self._write(self._erase() + text + "\n")
        if self.tty:
            self.tick(force=True)

    def close(self) -> None:
        """Leave the last state of the block on the screen (and stop redrawing it)."""
        if self.tty:
            self.tick(force=True)
            self._drawn = 0
