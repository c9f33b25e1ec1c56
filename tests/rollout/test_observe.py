"""Per-version observations from the replicas' reports (microturn.rollout.observe)."""

from __future__ import annotations

import pytest

from microturn.interaction.stats import ReplicaStats
from microturn.rollout.observe import StatsWindow


def report(
    replica="r1", version="v1", sessions=2, opened=2, rebuilt=0, outputs=0, misses=0, errors=None, p99=20.0,
    turn_p50=None, turns=0,
):  # fmt: skip
    return ReplicaStats(replica, version, "interaction", 0, sessions, opened, rebuilt, outputs, misses,
                        errors or {}, p99, turn_p50, turns)  # fmt: skip


def test_metrics_are_differences_over_the_window_summed_per_version():
    w = StatsWindow(window_s=30, stale_s=10)
    w.add(report("a", outputs=100, misses=1), 0)
    w.add(report("b", outputs=50), 0)
    w.add(report("a", outputs=200, misses=3, errors={"ERROR_CODE_INTERNAL": 1, "ERROR_CODE_DRAINING": 5}), 10)
    w.add(report("b", outputs=150, sessions=4, opened=5, p99=45.0), 10)
    v = w.versions(10, {"v1": True})["v1"]
    assert v.ready and v.sessions == 6 and v.opened == 7
    m = v.metrics
    assert m.deadline_miss_ratio == pytest.approx(2 / 200)
    assert m.stream_error_ratio == pytest.approx(1 / 200)  # DRAINING is not the replica's fault
    assert m.tick_p99_ms == 45.0


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
