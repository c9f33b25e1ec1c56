"""Rate-limited logging of errors sent to clients: each one is logged, but a client that sends a flood
of bad input cannot flood the logs (at most one line per key per interval, with the count it stands for)."""

from __future__ import annotations

import logging
import time
from typing import Any


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, interval_s: float = 10.0) -> None:
        self.logger, self.interval_s = logger, interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, msg: str, **fields: Any) -> bool:
        """Log ``msg`` unless ``key`` was logged within the interval; returns whether it logged."""
        now = time.monotonic()
        if now - self._last.get(key, -self.interval_s - 1) < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._last[key] = now
        n = self._suppressed.pop(key, 0)
        if n:
            msg = f"{msg} (+{n} more like it in the last {self.interval_s:g} s)"
        self.logger.warning(msg, extra={"fields": {"error.key": key, **fields}})
        return True
