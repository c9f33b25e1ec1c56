"""Per-version observations from the replicas' reports (microturn.rollout.observe)."""

from __future__ import annotations

import pytest

from microturn.interaction.stats import TICK_BOUNDS_MS, ReplicaStats
from microturn.rollout.observe import StatsWindow, quantile


def ticks_at(ms: dict[float, int]) -> tuple[int, list[int]]:
    """(ticks, ticks_le) of ``{tick time: how many}``, counted as a replica counts them."""
    return sum(ms.values()), [sum(n for t, n in ms.items() if t <= b) for b in TICK_BOUNDS_MS]


def report(
    replica="r1", version="v1", sessions=2, opened=2, rebuilt=0, outputs=0, misses=0, errors=None, ticks=None,
    turn_p50=None, turns=0,
):  # fmt: skip
    n, le = ticks_at(ticks or {})
    return ReplicaStats(replica, version, "interaction", 0, sessions, opened, rebuilt, outputs, misses,
                        errors or {}, n, le, turn_p50, turns)  # fmt: skip


def test_metrics_are_differences_over_the_window_summed_per_version():
    w = StatsWindow(window_s=30, stale_s=10)
    w.add(report("a", outputs=100, misses=1), 0)
    w.add(report("b", outputs=50), 0)
    w.add(report("a", outputs=200, misses=3, errors={"ERROR_CODE_INTERNAL": 1, "ERROR_CODE_DRAINING": 5}), 10)
    w.add(report("b", outputs=150, sessions=4, opened=5, ticks={45: 100}), 10)
    v = w.versions(10, {"v1": True})["v1"]
    assert v.ready and v.sessions == 6 and v.opened == 7
    m = v.metrics
    assert m.deadline_miss_ratio == pytest.approx(2 / 200)
    assert m.stream_error_ratio == pytest.approx(1 / 200)  # DRAINING is not the replica's fault
    assert 40 < m.tick_p99_ms <= 50  # inside 45's bucket


def test_the_tick_p99_is_of_the_window_merged_over_the_versions_replicas():
    """Both versions' p99 is of the same window (a stable replica's calm past does not flatter it
    against a candidate that only knows the busy present), and of all a version's ticks."""
    w = StatsWindow(window_s=30, stale_s=100)
    calm = {15: 5000}
    w.add(report("old", outputs=0, ticks=calm), 0)
    w.add(report("old", outputs=100, ticks={**calm, 120: 95}), 40)  # calm before the window, busy in it
    w.add(report("old", outputs=200, ticks={**calm, 120: 190}), 50)
    assert 110 < w.versions(50, {})["v1"].metrics.tick_p99_ms <= 125  # not the calm 15 ms
    two = StatsWindow()
    two.add(report("a", outputs=0), 0)
    two.add(report("b", outputs=0), 0)
    two.add(report("a", outputs=100, ticks={20: 985}), 10)
    two.add(report("b", outputs=100, ticks={20: 5, 300: 20}), 10)  # 2 % of all ticks are slow, all b's
    assert 250 < two.versions(10, {})["v1"].metrics.tick_p99_ms <= 300


def test_tick_quantiles_interpolate_inside_their_bucket_like_prometheus():
    _, le = ticks_at({5: 50, 15: 50})  # half in (0, 10], half in (10, 20]
    assert quantile(0.5, le, 100) == pytest.approx(10.0)
    assert quantile(0.75, le, 100) == pytest.approx(15.0)
    assert quantile(0.99, le, 100) == pytest.approx(19.8)
    n, le = ticks_at({5000: 10})
    assert quantile(0.99, le, n) == TICK_BOUNDS_MS[-1]  # beyond the last bound: at least it
    assert quantile(0.99, [0] * len(TICK_BOUNDS_MS), 0) is None


def test_a_replica_too_old_to_count_its_ticks_leaves_the_p99_unmeasured():
    w = StatsWindow()
    w.add(ReplicaStats("r", "v1", "interaction", 0, 1, 1, 0, 0, 0), 0)
    w.add(ReplicaStats("r", "v1", "interaction", 0, 1, 1, 0, 100, 0), 5)
    assert w.versions(5, {})["v1"].metrics.tick_p99_ms is None


def test_turn_latency_is_the_replicas_medians_weighted_by_their_turns():
    w = StatsWindow(window_s=30, stale_s=10)
    w.add(report("a", outputs=100), 0)
    w.add(report("b", outputs=100), 0)
    w.add(report("c", outputs=100), 0)
    w.add(report("a", outputs=200, turn_p50=400.0, turns=30), 10)
    w.add(report("b", outputs=200, turn_p50=1000.0, turns=10), 10)
    w.add(report("c", outputs=200), 10)  # no turn answered yet: does not count
    assert w.versions(10, {})["v1"].metrics.turn_latency_ms == pytest.approx((400 * 30 + 1000 * 10) / 40)
    w2 = StatsWindow()
    w2.add(report(outputs=0), 0)
    w2.add(report(outputs=100), 5)
    assert w2.versions(5, {})["v1"].metrics.turn_latency_ms is None  # not measured: no verdict on it


def test_old_reports_leave_the_window():
    w = StatsWindow(window_s=30, stale_s=100)
    w.add(report(outputs=0, misses=0), 0)
    w.add(report(outputs=100, misses=50), 10)  # a bad start...
    w.add(report(outputs=200, misses=50), 40)
    w.add(report(outputs=300, misses=50), 70)  # ...that the window forgot
    assert w.versions(70, {})["v1"].metrics.deadline_miss_ratio == 0


def test_a_restarted_replica_keeps_its_opened_sessions_and_restarts_its_window():
    w = StatsWindow()
    w.add(report(opened=5, outputs=500), 0)
    w.add(report(opened=1, outputs=10), 5)  # totals went down: a new process with the same id
    v = w.versions(5, {})["v1"]
    assert v.opened == 6 and v.metrics is None  # one report since the restart: nothing to compare


def test_a_silent_replica_is_not_live_but_what_it_opened_counts():
    w = StatsWindow(stale_s=10)
    w.add(report("gone", sessions=3, opened=3), 0)
    w.add(report("here", sessions=1, opened=1), 15)
    v = w.versions(15, {})["v1"]
    assert v.sessions == 1 and v.opened == 4


def test_versions_are_kept_apart_and_a_ready_version_without_reports_is_listed():
    w = StatsWindow()
    w.add(report("a", version="v1", sessions=2), 0)
    w.add(report("b", version="v2", sessions=1), 0)
    got = w.versions(0, {"v1": True, "v2": True, "v3": False})
    assert {k: v.sessions for k, v in got.items()} == {"v1": 2, "v2": 1, "v3": 0}
    assert got["v3"].metrics is None and not got["v3"].ready
