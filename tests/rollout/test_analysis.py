"""The per-step analysis (microturn.rollout.analysis.analyse): candidate against stable."""

from __future__ import annotations

import pytest

from microturn.rollout.analysis import AnalysisSpec, SloMetrics, Verdict, analyse


def misses(ratio: float, outputs: int) -> SloMetrics:
    return SloMetrics(deadline_miss_ratio=ratio, outputs=outputs)


@pytest.mark.parametrize(
    ("cand", "stable", "verdict"),
    [
        # a loaded machine: both miss; the candidate's 3.5 % against 2 % is within chance on a few hundred
        # outputs...
        (misses(0.035, 300), misses(0.02, 600), Verdict.PASS),
        # ...and not on tens of thousands
        (misses(0.035, 30_000), misses(0.02, 60_000), Verdict.FAIL),
        # a slow candidate misses every output: beyond chance even on a few
        (misses(1.0, 40), misses(0.3, 400), Verdict.FAIL),
        # stable misses none: any candidate miss above the limit is beyond chance
        (misses(0.05, 200), misses(0.0, 200), Verdict.FAIL),
        # no counts (an older controller's observation): the margin alone decides
        (misses(0.035, 0), misses(0.02, 0), Verdict.FAIL),
    ],
)
def test_deadline_misses_fail_a_candidate_only_when_worse_than_stable_beyond_chance(cand, stable, verdict):
    assert analyse(AnalysisSpec(min_sessions=1), cand, stable, 5).verdict is verdict


def test_the_z_test_is_configurable():
    cand, stable = misses(0.035, 3000), misses(0.02, 6000)  # z ~ 4.3
    assert analyse(AnalysisSpec(min_sessions=1), cand, stable, 5).verdict is Verdict.FAIL
    assert analyse(AnalysisSpec(min_sessions=1, miss_z=5.0), cand, stable, 5).verdict is Verdict.PASS


def test_errors_need_no_significance_a_few_are_real():
    cand = SloMetrics(deadline_miss_ratio=0.0, stream_error_ratio=0.01, outputs=100)
    stable = SloMetrics(deadline_miss_ratio=0.0, stream_error_ratio=0.0, outputs=1000)
    got = analyse(AnalysisSpec(min_sessions=1), cand, stable, 5)
    assert got.verdict is Verdict.FAIL and "stream_error_ratio: candidate 0.01 vs stable 0" in got.reason


def test_a_pass_says_what_was_measured():
    cand = SloMetrics(deadline_miss_ratio=0.001, tick_p99_ms=41.5, outputs=500)
    stable = SloMetrics(deadline_miss_ratio=0.002, tick_p99_ms=40.0, outputs=500)
    got = analyse(AnalysisSpec(min_sessions=1), cand, stable, 5)
    assert got.verdict is Verdict.PASS
    assert (
        got.reason
        == "within limits: deadline_miss_ratio 0.001 vs stable 0.002, tick_p99_ms 41.5 vs stable 40"
    )
