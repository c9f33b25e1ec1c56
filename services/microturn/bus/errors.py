"""Outcomes a work handler signals to its queue besides success."""

from __future__ import annotations


class PermanentError(Exception):
    """Retrying cannot help (e.g. an undecodable message): dead-letter it now."""


class RetryableError(Exception):
    """Worth another attempt later (e.g. a backend briefly down): nak with a delay."""


class Defer(Exception):
    """Not due yet: redeliver after ``delay_s`` without counting it as a failure (timers)."""

    def __init__(self, delay_s: float) -> None:
        super().__init__(f"deferred {delay_s:.3f}s")
        self.delay_s = delay_s


class PublishError(RuntimeError):
    """A publish did not reach JetStream within the publish timeout."""


class Rejected(PermanentError):
    """A message refused for what it is (undecodable, unusable ids, over a limit): it is dead-lettered
    at once and counted under ``code``, a short fixed word, so a metric label cannot explode."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class PayloadTooLarge(ValueError):
    """A message (payload and headers) over the bus limit; sending it would make the server drop the
    connection, so it is refused before it leaves."""
