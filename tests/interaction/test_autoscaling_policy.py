"""The autoscaling policy on the replicas' load (microturn.interaction.autoscaling), driven through
Serve's own AutoscalingContext and its delay/bounds wrapper, and the Serve config it renders into."""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import time

import pytest
from ray.serve import autoscaling_policy as ray_policy
from ray.serve._private.common import DeploymentID, ReplicaID
from ray.serve.autoscaling_policy import _apply_autoscaling_config
from ray.serve.config import AutoscalingConfig, AutoscalingContext

from microturn.config import ConfigError, load_settings
from microturn.interaction import autoscaling
from microturn.interaction.autoscaling import (
    DeploymentView,
    ReplicaLoad,
    SessionLoadPolicy,
    StopWatch,
    desired_replicas,
)
from microturn.interaction.serve_config import render

DEP = DeploymentID(name="Interaction", app_name="interaction")


def replicas(n: int) -> list[ReplicaID]:
    return [ReplicaID(unique_id=f"r{i}", deployment_id=DEP) for i in range(n)]


def context(
    running: list[ReplicaID],
    sessions: dict[ReplicaID, float],
    utilisation: dict[ReplicaID, float] | None = None,
    *,
    target: int | None = None,
    config: AutoscalingConfig | None = None,
    state: dict | None = None,
    now: float | None = None,
) -> AutoscalingContext:
    metrics = {autoscaling.SESSIONS_METRIC: sessions, autoscaling.UTILISATION_METRIC: utilisation or {}}
    return AutoscalingContext(
        deployment_id=DEP, deployment_name=DEP.name, app_name=DEP.app_name,
        current_num_replicas=len(running), target_num_replicas=len(running) if target is None else target,
        running_replicas=running, total_num_requests=sum(sessions.values()), total_queued_requests=0,
        aggregated_metrics=metrics, raw_metrics={},
        capacity_adjusted_min_replicas=config.min_replicas if config else 1,
        capacity_adjusted_max_replicas=config.max_replicas if config else 8,
        policy_state=state if state is not None else {}, last_scale_up_time=None, last_scale_down_time=None,
        current_time=now or time.time(), config=config or AutoscalingConfig(min_replicas=1, max_replicas=8),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("loads", "want"),
    [
        ([], 0.0),
        ([ReplicaLoad(0, 0)], 0.0),
        ([ReplicaLoad(8, 0.1)], 1.0),  # at the session target
        ([ReplicaLoad(12, 0.1)], 1.5),
        ([ReplicaLoad(12, 0.1), ReplicaLoad(4, 0.05)], 2.0),
        ([ReplicaLoad(2, 0.9)], 1.5),  # tick time is the binding signal: 0.9 / 0.6
        ([ReplicaLoad(8, 0.6), ReplicaLoad(0, 0.0)], 1.0),
    ],
)
def test_desired_replicas_takes_the_higher_of_sessions_and_tick_time(loads, want):
    assert desired_replicas(loads, target_sessions=8, target_tick_utilisation=0.6) == pytest.approx(want)


def test_headroom_is_sessions_of_spare_capacity():
    loads = [ReplicaLoad(8, 0.0)]
    assert desired_replicas(loads, target_sessions=8, target_tick_utilisation=0.6, headroom_sessions=4) == 1.5


def test_the_policy_reads_the_replicas_reports_from_serves_context():
    r = replicas(2)
    policy = SessionLoadPolicy(target_sessions=4, target_tick_utilisation=0.5)
    desired, _ = policy(context(r, {r[0]: 6, r[1]: 4}, {r[0]: 0.1, r[1]: 0.1}))
    assert desired == pytest.approx(2.5)
    desired, _ = policy(context(r, {r[0]: 1, r[1]: 0}, {r[0]: 0.4, r[1]: 0.0}))  # r0's tick binds
    assert desired == pytest.approx(0.8)


def test_a_replica_that_has_not_reported_counts_at_the_mean_not_as_empty():
    r = replicas(3)
    policy = SessionLoadPolicy(target_sessions=4, target_tick_utilisation=0.5)
    desired, _ = policy(context(r, {r[0]: 4, r[1]: 4}))  # r2 just started
    assert desired == pytest.approx(3.0)


def test_no_report_at_all_keeps_the_target():
    r = replicas(2)
    desired, _ = SessionLoadPolicy(4, 0.5)(context(r, {}, target=2))
    assert desired == 2


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def time(self) -> float:
        return self.now


def test_serves_wrapper_applies_the_delays_and_bounds_around_the_policy(monkeypatch):
    """The policy as Serve runs it: a scale-up only after upscale_delay_s of wanting it, never above
    max_replicas; a scale-down only after downscale_delay_s."""
    config = AutoscalingConfig(
        min_replicas=1, max_replicas=3, upscale_delay_s=2.0, downscale_delay_s=5.0, look_back_period_s=3.0,
        metrics_interval_s=1.0,
        policy={"policy_function": autoscaling.POLICY_CLASS, "policy_kwargs": {"target_sessions": 2,
                "target_tick_utilisation": 0.6}},
    )  # fmt: skip
    wrapped = _apply_autoscaling_config(SessionLoadPolicy(target_sessions=2, target_tick_utilisation=0.6))
    clock = FakeClock()
    monkeypatch.setattr(ray_policy, "time", clock)  # Serve's delays read wall time, not ctx.current_time
    r = replicas(1)
    t0 = clock.now
    state: dict = {}
    decided = []
    for dt in (0.0, 1.0, 2.1):  # 5 sessions on one replica: wants 3
        clock.now = t0 + dt
        n, state = wrapped(context(r, {r[0]: 5}, config=config, state=state, now=t0 + dt))
        decided.append(n)
    assert decided[:2] == [1, 1] and decided[2] == 3
    r = replicas(3)
    state, decided = {}, []
    for dt in (10.0, 14.0, 15.1):  # one session left on three replicas: wants 1
        clock.now = t0 + dt
        n, state = wrapped(context(r, {r[0]: 1, r[1]: 0, r[2]: 0}, config=config, state=state, now=t0 + dt))
        decided.append(n)
    assert decided == [3, 3, 1]


def test_render_puts_the_policy_and_its_settings_into_the_serve_config():
    settings = load_settings(
        overrides={"interaction": {"session_slots": 8, "autoscaling": {"enabled": True, "max_replicas": 5,
                   "target_sessions": 6, "downscale_delay_s": 30}}}
    )  # fmt: skip
    (dep,) = render(settings)["applications"][0]["deployments"]
    assert "num_replicas" not in dep
    cfg = AutoscalingConfig(**dep["autoscaling_config"])  # Serve accepts it as it is
    assert (cfg.min_replicas, cfg.max_replicas, cfg.downscale_delay_s) == (1, 5, 30)
    assert cfg.policy.policy_function == autoscaling.POLICY_CLASS
    assert cfg.policy.policy_kwargs["target_sessions"] == 6
    built = autoscaling_policy_from(cfg)
    assert isinstance(built, SessionLoadPolicy) and built.target_sessions == 6
    assert dep["graceful_shutdown_timeout_s"] == settings.interaction.graceful_shutdown_timeout_s


def autoscaling_policy_from(cfg: AutoscalingConfig):
    from ray.serve._private.autoscaling_state import _resolve_policy_callable

    return _resolve_policy_callable(cfg.policy)


def test_fixed_replicas_without_autoscaling():
    (dep,) = render(load_settings(overrides={"interaction": {"replicas": 3}}))["applications"][0][
        "deployments"
    ]
    assert dep["num_replicas"] == 3 and "autoscaling_config" not in dep


def test_the_drain_budget_covers_the_wait_policy():
    migrate = load_settings(overrides={"interaction": {"drain_timeout_s": 10}}).interaction
    wait = load_settings(overrides={"interaction": {"drain_timeout_s": 10, "drain_policy": "wait",
                                                     "drain_wait_s": 300}}).interaction  # fmt: skip
    assert migrate.graceful_shutdown_timeout_s > 10
    assert wait.graceful_shutdown_timeout_s > 310


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"session_slots": 8, "autoscaling": {"enabled": True, "target_sessions": 8}}, "below session_slots"),
        ({"autoscaling": {"min_replicas": 5, "max_replicas": 2}}, "above max_replicas"),
        (
            {"autoscaling": {"look_back_period_s": 1, "metrics_interval_s": 2}},
            "longer than metrics_interval_s",
        ),
        ({"drain_policy": "forever"}, "drain_policy"),
    ],
)
def test_bad_autoscaling_settings_are_refused_with_the_reason(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(overrides={"interaction": overrides})


def test_the_ray_this_module_was_tested_with_is_the_one_installed_and_pinned():
    assert importlib.metadata.version("ray") == autoscaling.TESTED_RAY


# -- the replica's stop watch -----------------------------------------------------------------------
class Controller:
    """What the Serve controller answers about this replica, poll by poll (an exception: unreachable)."""

    def __init__(self, answers: list) -> None:
        self.answers, self.polls = answers, 0

    async def view(self) -> DeploymentView:
        answer = self.answers[min(self.polls, len(self.answers) - 1)]
        self.polls += 1
        if isinstance(answer, Exception):
            raise answer
        return answer


RUNNING = DeploymentView(stopping=False, target_replicas=2, running_replicas=2)
STOPPING = DeploymentView(stopping=True, target_replicas=1, running_replicas=1)


async def test_the_stop_watch_starts_the_drain_once_when_serve_stops_the_replica(caplog):
    controller = Controller([RUNNING, RuntimeError("controller restarting"), RuntimeError("again"), RUNNING,
                             STOPPING, STOPPING])  # fmt: skip
    drains = []

    async def drain() -> None:
        drains.append(controller.polls)

    watch = StopWatch(controller.view, drain, poll_s=0.01)
    with caplog.at_level(logging.WARNING, "microturn.interaction.autoscaling"):
        watch.start()
        for _ in range(200):
            if drains:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
    await watch.stop()
    assert drains == [5]  # once, at the first STOPPING answer, after two failed polls
    assert watch.last == STOPPING
    assert len([r for r in caplog.records if "Serve controller" in r.getMessage()]) == 1  # logged once


async def test_an_idle_replica_asks_the_controller_less_often():
    busy = [True]
    controller = Controller([RUNNING])

    async def never() -> None:
        raise AssertionError("not stopping")

    watch = StopWatch(controller.view, never, poll_s=0.01, busy=lambda: busy[0])
    watch.start()
    await asyncio.sleep(0.3)
    busy_polls = controller.polls
    busy[0], controller.polls = False, 0
    await asyncio.sleep(0.3)
    await watch.stop()
    assert controller.polls * 4 < busy_polls, (controller.polls, busy_polls)
