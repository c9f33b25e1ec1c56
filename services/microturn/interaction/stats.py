"""What a replica tells the rollout controller about its service, every ``stats_interval_s``, on
``mt.stats.interaction.<replica>`` (core NATS, no stream: a lost report is replaced by the next).

Counters are totals since the replica started, so the controller takes differences between two
reports of the same replica (a restarted replica starts from zero again: a decrease resets it).
The controller parses reports as untrusted input: a malformed one is refused with the reason.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

MAX_REPORT_BYTES = 8192


class StatsError(ValueError):
    """A stats report that cannot be used (the message says why)."""


@dataclass(frozen=True)
class ReplicaStats:
    replica: str
    version: str  # the model version the replica serves
    app: str  # its Serve application
    at_unix_ms: int
    sessions: int  # live now
    opened: int  # new sessions accepted (not replays)
    rebuilt: int  # sessions rebuilt from a replay (recoveries and migrations)
    outputs: int  # output chunks sent
    misses: int  # outputs later than a micro-turn after their input ended
    errors: dict[str, int] = field(default_factory=dict)  # typed errors sent, by code
    tick_p99_ms: float = 0.0  # over the last ticks (up to 1000)
    # the median turn-taking latency (telemetry/turns.py) over the last turns answered (up to 200), and
    # how many that is; None: no turn answered yet
    turn_p50_ms: float | None = None
    turns: int = 0

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ReplicaStats:
        if len(data) > MAX_REPORT_BYTES:
            raise StatsError(f"report of {len(data)} bytes (at most {MAX_REPORT_BYTES})")
        try:
            doc: Any = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StatsError(f"not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise StatsError("a report is a JSON object")
        try:
            stats = cls(**doc)
        except TypeError as exc:
            raise StatsError(f"fields: {exc}") from None
        for name in ("replica", "version", "app"):
            if not isinstance(getattr(stats, name), str) or not getattr(stats, name):
                raise StatsError(f"{name} must be a non-empty string")
        for name in ("at_unix_ms", "sessions", "opened", "rebuilt", "outputs", "misses"):
            v = getattr(stats, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise StatsError(f"{name} must be a non-negative integer, got {v!r}")
        if not isinstance(stats.errors, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
            for k, v in stats.errors.items()
        ):
            raise StatsError("errors must map error codes to non-negative integers")
        if (
            not isinstance(stats.tick_p99_ms, int | float)
            or isinstance(stats.tick_p99_ms, bool)
            or stats.tick_p99_ms < 0
        ):
            raise StatsError(f"tick_p99_ms must be a non-negative number, got {stats.tick_p99_ms!r}")
        if stats.turn_p50_ms is not None and (
            not isinstance(stats.turn_p50_ms, int | float) or isinstance(stats.turn_p50_ms, bool)
            or stats.turn_p50_ms < 0
        ):  # fmt: skip
            raise StatsError(f"turn_p50_ms must be a non-negative number or null, got {stats.turn_p50_ms!r}")
        if not isinstance(stats.turns, int) or isinstance(stats.turns, bool) or stats.turns < 0:
            raise StatsError(f"turns must be a non-negative integer, got {stats.turns!r}")
        return stats
