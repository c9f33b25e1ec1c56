"""A dependency-free progress bar: one redrawn line on a terminal, a plain line every few seconds
otherwise (so CI logs and ``nohup`` files stay readable)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, total: int, start: int = 0, stream: TextIO | None = None, every_s: float = 10.0):
        self.total, self.step = total, start
        self.stream = sys.stderr if stream is None else stream
        self.tty = self.stream.isatty()
        self.every_s = every_s
        self.t0 = self._last = time.perf_counter()
        self.start = start

    def update(self, step: int, text: str) -> None:
        self.step = step
        now = time.perf_counter()
        if not self.tty and now - self._last < self.every_s and step < self.total:
            return
        self._last = now
        done = (step - self.start) / max(1, self.total - self.start)
        eta = (now - self.t0) / max(done, 1e-9) * (1 - done) if done > 0 else 0.0
        width = 24
        bar = "#" * int(width * step / max(1, self.total))
        line = f"[{bar:<{width}}] {step}/{self.total} {text} eta {eta / 60:.1f}m"
        if self.tty:
            self.stream.write("\r" + line[:160].ljust(160))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def write(self, text: str) -> None:
        """A line that stays (evals, checkpoints) above the bar."""
        self.stream.write(("\n" if self.tty else "") + text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
