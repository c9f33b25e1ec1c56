"""From the replicas' service reports (interaction/stats.py) to what the state machine observes per
version: live sessions, sessions opened so far, and SLO metrics over the analysis window.

Reports are totals since each replica started; metrics are differences over ``window_s`` between a
replica's newest report and its oldest one still inside the window, summed per version. A replica
whose totals went down restarted: its older reports are dropped. A replica that stopped reporting
for ``stale_s`` no longer counts as live, but the sessions it opened still count (``opened`` only
grows), so a step's session count does not fall back when a replica goes away.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from microturn.interaction.stats import TICK_BOUNDS_MS, ReplicaStats
from microturn.rollout.analysis import SloMetrics
from microturn.rollout.machine import VersionObservation

SERVICE_ERRORS = ("ERROR_CODE_INTERNAL", "ERROR_CODE_DROPPED")  # the replica's fault, not the client's


@dataclass
class _Replica:
    reports: deque[tuple[float, ReplicaStats]] = field(default_factory=deque)
    opened_before: int = 0  # sessions opened by earlier lives of this replica id (before a restart)


class StatsWindow:
    def __init__(self, window_s: float = 30.0, stale_s: float = 10.0) -> None:
        self.window_s, self.stale_s = window_s, stale_s
        self._replicas: dict[str, _Replica] = {}

    def add(self, stats: ReplicaStats, now: float) -> None:
        r = self._replicas.setdefault(stats.replica, _Replica())
        if r.reports and (stats.outputs < r.reports[-1][1].outputs or stats.opened < r.reports[-1][1].opened):
            r.opened_before += r.reports[-1][1].opened  # a restart: start its window again
            r.reports.clear()
        r.reports.append((now, stats))
        while len(r.reports) > 1 and r.reports[1][0] <= now - self.window_s:
            r.reports.popleft()

    def versions(self, now: float, ready: dict[str, bool]) -> dict[str, VersionObservation]:
        """What each version looks like now; ``ready``: whether its deployment serves."""
        per: dict[str, list[_Replica]] = {}
        for r in self._replicas.values():
            per.setdefault(r.reports[-1][1].version, []).append(r)
        out = {}
        for version in set(per) | set(ready):
            replicas = per.get(version, [])
            live = [r for r in replicas if now - r.reports[-1][0] <= self.stale_s]
            out[version] = VersionObservation(
                ready=ready.get(version, False),
                sessions=sum(r.reports[-1][1].sessions for r in live),
                opened=sum(r.opened_before + r.reports[-1][1].opened for r in replicas),
                metrics=_metrics(live, self.window_s),
            )
        return out


def _metrics(replicas: list[_Replica], window_s: float) -> SloMetrics | None:
    outputs = misses = errors = rebuilt = ticks = 0
    ticks_le = [0] * len(TICK_BOUNDS_MS)
    session_seconds = 0.0
    turns = [(last.turn_p50_ms, last.turns) for r in replicas
             if (last := r.reports[-1][1]).turn_p50_ms is not None and last.turns > 0]  # fmt: skip
    for r in replicas:
        (t0, first), (t1, last) = r.reports[0], r.reports[-1]
        outputs += last.outputs - first.outputs
        misses += last.misses - first.misses
        errors += sum(last.errors.get(c, 0) - first.errors.get(c, 0) for c in SERVICE_ERRORS)
        rebuilt += last.rebuilt - first.rebuilt
        session_seconds += (first.sessions + last.sessions) / 2 * (t1 - t0)
        if first.ticks_le and last.ticks_le:  # (a replica too old to count its ticks: not measured)
            ticks += last.ticks - first.ticks
            ticks_le = [n + b - a for n, a, b in zip(ticks_le, first.ticks_le, last.ticks_le, strict=True)]
    if outputs <= 0:
        return None
    hours = session_seconds / 3600
    return SloMetrics(
        deadline_miss_ratio=misses / outputs,
        tick_p99_ms=quantile(0.99, ticks_le, ticks),
        stream_error_ratio=errors / outputs,
        recoveries_per_session_hour=rebuilt / hours if hours > 0 else None,
        # the replicas' medians weighted by their turns (a replica with few turns weighs little)
        turn_latency_ms=sum(p * n for p, n in turns) / sum(n for _, n in turns) if turns else None,
        outputs=outputs,
    )


def quantile(q: float, le: list[int], total: int) -> float | None:
    """The ``q`` quantile of ``total`` tick times counted into TICK_BOUNDS_MS buckets (``le``:
    cumulative counts), interpolated linearly inside its bucket as Prometheus' histogram_quantile
    does; at least the last bound when it lies beyond it. None: no tick."""
    if total <= 0:
        return None
    rank, lower, below = q * total, 0.0, 0
    for bound, n in zip(TICK_BOUNDS_MS, le, strict=True):
        if n >= rank:
            return lower + (bound - lower) * (rank - below) / (n - below) if n > below else float(bound)
        lower, below = float(bound), n
    return float(TICK_BOUNDS_MS[-1])
