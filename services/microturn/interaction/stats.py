"""What a replica tells the rollout controller about its service, every ``stats_interval_s``, on
``mt.stats.interaction.<replica>`` (core NATS, no stream: a lost report is replaced by the next).

Counters are totals since the replica started, so the controller takes differences between two
reports of the same replica (a restarted replica starts from zero again: a decrease resets it).
Tick times are counted into fixed buckets (cumulative, like a Prometheus histogram) for the same
reason: the controller takes the tick-time p99 of exactly its analysis window, the same window for
the candidate and the stable version, merged over each version's replicas.
The controller parses reports as untrusted input: a malformed one is refused with the reason; a
field it does not know (from a newer or older replica) is ignored.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

MAX_REPORT_BYTES = 8192
# upper bounds of the tick-time buckets, in ms: fine around the analysis' 150 ms limit
TICK_BOUNDS_MS = (
    10,
    20,
    30,
    40,
    50,
    60,
    75,
    90,
    100,
    110,
    125,
    140,
    150,
    160,
    175,
    200,
    250,
    300,
    400,
    500,
    1000,
)


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
    ticks: int = 0  # engine steps run
    ticks_le: list[int] = field(default_factory=list)  # of them, how many took at most each TICK_BOUNDS_MS
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
        known = {f.name for f in fields(cls)}
        try:
            stats = cls(**{k: v for k, v in doc.items() if k in known})
        except TypeError as exc:
            raise StatsError(f"fields: {exc}") from None
        for name in ("replica", "version", "app"):
            if not isinstance(getattr(stats, name), str) or not getattr(stats, name):
                raise StatsError(f"{name} must be a non-empty string")
        for name in ("at_unix_ms", "sessions", "opened", "rebuilt", "outputs", "misses", "ticks", "turns"):
            v = getattr(stats, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise StatsError(f"{name} must be a non-negative integer, got {v!r}")
        if not isinstance(stats.errors, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
            for k, v in stats.errors.items()
        ):
            raise StatsError("errors must map error codes to non-negative integers")
        le = stats.ticks_le
        if not (
            isinstance(le, list) and len(le) in (0, len(TICK_BOUNDS_MS))
            and all(isinstance(n, int) and not isinstance(n, bool) for n in le)
            and all(0 <= a <= b for a, b in zip(le, [*le[1:], stats.ticks], strict=True))
        ):  # fmt: skip
            raise StatsError(
                f"ticks_le must be {len(TICK_BOUNDS_MS)} non-decreasing counts up to ticks ({stats.ticks}), "
                f"one per bound of {TICK_BOUNDS_MS} ms"
            )
        if stats.turn_p50_ms is not None and (
            not isinstance(stats.turn_p50_ms, int | float) or isinstance(stats.turn_p50_ms, bool)
            or stats.turn_p50_ms < 0
        ):  # fmt: skip
            raise StatsError(f"turn_p50_ms must be a non-negative number or null, got {stats.turn_p50_ms!r}")
        return stats
