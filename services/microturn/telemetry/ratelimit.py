"""Rate-limited logging of errors about client or bus input: each one can be logged, but a flood of
bad input cannot flood the logs (at most ``burst`` lines per key per interval; the next line that gets
through says how many were held back). Counting is the metrics' job: count every error, log some."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class _Window:
    start: float
    lines: int = 0
    suppressed: int = 0


class RateLimitedLog:
    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = 10.0,
        burst: int = 1,
        level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger, self.interval_s, self.burst, self.level = logger, interval_s, burst, level
        self._clock = clock
        self._windows: dict[str, _Window] = {}
        self._lock = threading.Lock()  # the bus logs from reader threads too

    def log(self, key: str, msg: str, *args: object, exc_info: bool = False, **fields: Any) -> bool:
        """Log ``msg % args`` unless ``key`` is over its budget; True when the line was written.
        The message may quote client input: it is cut to 300 characters and kept on one line."""
        now = self._clock()
        with self._lock:
            w = self._windows.setdefault(key, _Window(now))
            if now - w.start >= self.interval_s:
                w.start, w.lines = now, 0
            if w.lines >= self.burst:
                w.suppressed += 1
                return False
            w.lines += 1
            held, w.suppressed = w.suppressed, 0
        line = repr((msg % args if args else msg)[:300])[1:-1]
        if held:
            line += f" (and {held} more {key} in the last {self.interval_s:g} s)"
        self.logger.log(
            self.level, "%s", line, exc_info=exc_info, extra={"fields": {"error.key": key, **fields}}
        )
        return True
