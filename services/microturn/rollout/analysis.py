"""Per-step analysis: the candidate's SLO metrics against the stable version's.

Each metric is a "lower is better" ratio or duration measured per version over the analysis window.
A metric fails when the candidate is above its absolute limit *and* worse than the stable version by
more than the allowed margin (so a fleet-wide problem, which hurts both, does not roll a good
candidate back). Deadline misses come and go with the machine's load, so on them the candidate must
also be worse than stable beyond chance: a one-sided two-proportion z-test on the outputs of the
window (``miss_z``; 2.33 is 99 %). The verdict is inconclusive until the candidate has served enough
sessions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class SloMetrics:
    """One version's service over the analysis window (None: not measured)."""

    deadline_miss_ratio: float | None = None  # outputs later than a micro-turn after their input
    tick_p99_ms: float | None = None
    stream_error_ratio: float | None = None  # typed errors / outputs
    recoveries_per_session_hour: float | None = None
    turn_latency_ms: float | None = None  # where measured
    outputs: int | None = None  # the outputs the ratios are of


@dataclass(frozen=True)
class Threshold:
    limit: float  # the candidate fails only above this...
    margin: float = 0.0  # ...and above stable * (1 + margin) (when stable is measured)


def default_thresholds() -> dict[str, Threshold]:
    return {
        "deadline_miss_ratio": Threshold(0.01, 0.5),
        "tick_p99_ms": Threshold(150.0, 0.25),  # against the 200 ms micro-turn
        "stream_error_ratio": Threshold(0.005, 0.5),
        "recoveries_per_session_hour": Threshold(2.0, 0.5),
        "turn_latency_ms": Threshold(1000.0, 0.2),
    }


@dataclass(frozen=True)
class AnalysisSpec:
    thresholds: dict[str, Threshold] = field(default_factory=default_thresholds)
    min_sessions: int = 5  # candidate sessions in the window before any verdict but inconclusive
    miss_z: float = 2.33  # how far beyond chance the candidate's deadline misses must be worse


def _worse_beyond_chance(cand: SloMetrics, stable: SloMetrics, z: float) -> bool:
    """Is the candidate's deadline-miss ratio above stable's by more than ``z`` standard errors?"""
    n1, n2 = cand.outputs, stable.outputs
    p1, p2 = cand.deadline_miss_ratio, stable.deadline_miss_ratio
    if not n1 or not n2 or p1 is None or p2 is None:
        return True  # counts unknown: the margin alone decides
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    return p1 > p2 if se == 0 else (p1 - p2) / se > z


@dataclass(frozen=True)
class Analysis:
    verdict: Verdict
    failed: tuple[str, ...] = ()  # "metric: candidate X vs stable Y (limit Z)" per failed metric
    reason: str = ""


def analyse(
    spec: AnalysisSpec, candidate: SloMetrics | None, stable: SloMetrics | None, candidate_sessions: int
) -> Analysis:
    if candidate is None:
        return Analysis(Verdict.INCONCLUSIVE, reason="no metrics from the candidate yet")
    failed, measured = [], []
    for name, th in spec.thresholds.items():
        value = getattr(candidate, name)
        if value is None:
            continue
        base = getattr(stable, name) if stable is not None else None
        vs = f" vs stable {base:.4g}" if base is not None else ""
        measured.append(f"{name} {value:.4g}{vs}")
        worse_than_stable = base is None or value > base * (1 + th.margin)
        if worse_than_stable and name == "deadline_miss_ratio" and stable is not None:
            worse_than_stable = _worse_beyond_chance(candidate, stable, spec.miss_z)
        if value > th.limit and worse_than_stable:
            failed.append(f"{name}: candidate {value:.4g}{vs} (limit {th.limit:g})")
    if failed:  # a failure counts even on few sessions: errors on the first calls are real
        return Analysis(Verdict.FAIL, tuple(failed), "; ".join(failed))
    if candidate_sessions < spec.min_sessions:
        return Analysis(
            Verdict.INCONCLUSIVE,
            reason=f"{candidate_sessions} candidate sessions, {spec.min_sessions} needed for a verdict",
        )
    return Analysis(Verdict.PASS, reason="within limits: " + ", ".join(measured))
