"""Counting and logging the messages a consumer refuses.

Every consumer treats the bus as a trust boundary: a message it cannot use is dead-lettered,
terminated or answered with a typed error, and counted here under a short ``code`` (the only
metric attribute, from the fixed set below, so hostile input cannot grow the label set). The log
line saying why is rate-limited per code: a flood of bad messages costs a counter increment each,
not a log line each.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from opentelemetry import metrics

from microturn.config import BusSettings
from microturn.telemetry import RateLimitedLog

log = logging.getLogger(__name__)
meter = metrics.get_meter("microturn.bus")

# Codes (metric attribute values).
UNDECODABLE = "undecodable"  # not the protobuf / JSON the subject carries
INVALID_ID = "invalid_id"  # an id that cannot be a subject token
INVALID_FIELD = "invalid_field"  # a field out of its range (deadline, duration, session mismatch, ...)
TOO_LARGE = "too_large"  # a field or the message over its limit
TRUNCATED = "truncated"  # accepted with a text cut to its limit
NO_KIND = "no_kind"  # an update that carries nothing
PERMANENT = "permanent"  # the handler said retrying cannot help
GAVE_UP = "gave_up"  # failed on every allowed attempt
CRASH_LOOP = "crash_loop"  # delivered past the limit without ever being settled
HANDLER_FAILED = "handler_failed"  # the code that took the message raised on it
CODES = frozenset(
    {
        UNDECODABLE,
        INVALID_ID,
        INVALID_FIELD,
        TOO_LARGE,
        TRUNCATED,
        NO_KIND,
        PERMANENT,
        GAVE_UP,
        CRASH_LOOP,
        HANDLER_FAILED,
    }
)

# One counter per consumer: ``microturn_<name>_rejected_total{code=...}`` on /metrics.
COUNTER_NAMES = {
    "delegation": "microturn_delegations_rejected",
    "tool": "microturn_tool_calls_rejected",
    "timer": "microturn_timers_rejected",
    "update": "microturn_updates_rejected",
    "cancel": "microturn_cancels_rejected",
    "tool_result": "microturn_tool_results_rejected",
}
_counters: dict[str, metrics.Counter] = {}
_counters_lock = threading.Lock()
_instances: dict[tuple[str, int, float], Rejections] = {}


def _counter(name: str) -> metrics.Counter:
    with _counters_lock:
        if name not in _counters:
            _counters[name] = meter.create_counter(
                name, unit="{message}", description="bus messages refused, by code"
            )
        return _counters[name]


@dataclass
class Rejections:
    """What one consumer refuses: counted by code, logged with the reason at a bounded rate."""

    kind: str
    burst: int = 5
    period_s: float = 10.0
    _log: RateLimitedLog = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.counter = _counter(COUNTER_NAMES.get(self.kind, f"microturn_bus_{self.kind}_rejected"))
        self._log = RateLimitedLog(log, self.period_s, burst=self.burst)

    @classmethod
    def for_kind(cls, kind: str, settings: BusSettings | None = None) -> Rejections:
        """The process-wide instance for ``kind``: every reader of that kind shares one log budget."""
        s = settings or BusSettings()
        key = (kind, s.reject_log_burst, s.reject_log_period_s)
        with _counters_lock:
            found = _instances.get(key)
        if found is None:
            found = cls(kind, s.reject_log_burst, s.reject_log_period_s)
            with _counters_lock:
                found = _instances.setdefault(key, found)
        return found

    def record(self, code: str, reason: str, where: str = "") -> None:
        if code not in CODES:  # a programming error, but never a new label value
            code = HANDLER_FAILED
        self.counter.add(1, {"code": code})
        self._log.log(
            code, "%s message refused (%s)%s: %s", self.kind, code, where, clean_reason(reason, 300)
        )

    def warn(self, key: str, message: str, *args: object) -> None:
        """A rate-limited warning that is not a refusal (e.g. a retry)."""
        self._log.log(key, message, *args)


def clean_reason(reason: str, limit: int = 500) -> str:
    """A reason fit for a header or a log line: printable, one line, bounded."""
    out = "".join(c if c.isprintable() and not 0xD800 <= ord(c) <= 0xDFFF else " " for c in reason[:limit])
    return out.strip() or "(no reason given)"
