"""Serve autoscaling on a real local Ray cluster (CPU replicas): replicas follow live sessions up and
down; a call made while every replica is full is told to retry and lands on the new replica; the
replicas a scale-down removes hand their sessions over (make before break), and every call keeps its
output, chunk by chunk, for tens of seconds after. The steps are loadtest/scaling.py's (also
``make bench-scale``, which prints the same timeline with the scaling numbers)."""

from __future__ import annotations

import asyncio

import pytest

from loadtest.scaling import SCALING_ENV, print_result, scenario

from .conftest import LocalRun

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def autoscaled(tmp_path_factory):
    run = LocalRun(tmp_path_factory.mktemp("autoscaling") / "state", **SCALING_ENV)
    try:
        yield run.wait_ready()
    finally:
        run.stop()


def test_replicas_follow_the_sessions_up_and_down_without_dropping_a_call(autoscaled):
    grpc_target = f"127.0.0.1:{autoscaled.port('MICROTURN_INTERACTION__GRPC_PORT')}"
    dashboard = f"http://127.0.0.1:{autoscaled.port('MICROTURN_RAY__DASHBOARD_PORT')}"
    res = asyncio.run(scenario(grpc_target, dashboard, after_s=20.0))
    print_result(res)
    assert not res.failures, res.failures
    running = [s.running for s in res.timeline]
    # up to three replicas, then back to one: the count followed the load both ways
    peak = running.index(3)
    assert running[0] == 1 and running[-1] == 1 and 2 in running[:peak]
    # the over-capacity call was told to retry, and succeeded after the scale-up
    s5 = next(s for s in res.sessions if s.name == "s5")
    assert s5.rejected >= 1 and s5.outputs > 0
    # the sessions the scale-down moved kept every output, without a recovery
    moved = [s for s in res.sessions if s.migrations]
    assert moved and all(s.lost == 0 and s.repeated == 0 and s.recoveries == 0 for s in moved)
    # and every session still open streamed to the end, 20 s past the scale-down (a stop shows here)
    assert all(s.stalled_s <= 2.0 for s in res.sessions if s.name in ("s6", "s7")), res.sessions
