"""A progress bar on stderr for the long runs (stdout stays the table alone).

On a terminal the bar redraws in place; otherwise (a log, CI) each step is one line.
"""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, stream=None, width: int = 24, enabled: bool = True):
        self.stream = stream if stream is not None else sys.stderr
        self.width, self.enabled = width, enabled
        self.total = self.done = 0
        self.started = time.perf_counter()
        self._last_len = 0

    def start(self, total: int) -> None:
        self.total, self.done, self.started = total, 0, time.perf_counter()

    def step(self, label: str) -> None:
        """Announces the step about to run."""
        self._draw(label)
        self.done += 1

    def finish(self) -> None:
        self._draw("done")
        if self.enabled and self._tty():
            self.stream.write("\n")
            self.stream.flush()

    def _tty(self) -> bool:
        return hasattr(self.stream, "isatty") and self.stream.isatty()

    def _draw(self, label: str) -> None:
        if not self.enabled:
            return
        filled = self.width * self.done // max(1, self.total)
        line = (f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} "
                f"{time.perf_counter() - self.started:5.0f}s  {label}")
        if self._tty():
            self.stream.write("\r" + line.ljust(self._last_len))
            self._last_len = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
