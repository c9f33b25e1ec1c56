"""Autoscaling of the interaction deployment on its replicas' own load, and the replica's view of
being removed. Everything here that touches Ray Serve's alpha or private APIs is in this module,
tested with the Ray version pinned in pyproject.toml (``TESTED_RAY``):

- the custom autoscaling policy (``SessionLoadPolicy``, alpha in Serve): each replica reports its
  live sessions and the share of the micro-turn its tick takes (``record_autoscaling_stats``);
  a replica's load is ``sessions / target_sessions`` or ``utilisation / target_utilisation``,
  whichever is higher, and the deployment wants as many replicas as the loads add up to. Serve
  applies min/max, the up/down delays and the look-back mean around it.
- ``metrics_interval_s`` of the autoscaling config (deprecated in Serve, still how often a replica
  pushes its report).
- ``StopWatch``: Serve calls a replica's destructor only after its ongoing requests end, and a
  session's stream never ends by itself; so a replica asks the controller (private API) whether it
  is STOPPING and starts its drain then, while the streams are still open.

Serve's request-router API (also experimental) is wrapped in ``affinity.py``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

TESTED_RAY = "2.60.0"
POLICY_CLASS = f"{__name__}:SessionLoadPolicy"
SESSIONS_METRIC = "sessions"
UTILISATION_METRIC = "tick_utilisation"


@dataclass(frozen=True)
class ReplicaLoad:
    """What one replica reports: live sessions and its tick time over the micro-turn (0..1+)."""

    sessions: float
    tick_utilisation: float


def desired_replicas(
    loads: list[ReplicaLoad],
    *,
    target_sessions: int,
    target_tick_utilisation: float,
    headroom_sessions: int = 0,
) -> float:
    """The replicas the loads add up to (fractional; Serve rounds up). A replica's load is its
    sessions or its tick time against their targets, whichever is higher: sessions size the
    deployment, tick time catches hardware that is full before its slots are. Headroom is sessions
    of spare capacity on top. No loads (no replica reported yet): 0, so Serve keeps its target."""
    if not loads:
        return 0.0
    total = sum(
        max(load.sessions / target_sessions, load.tick_utilisation / target_tick_utilisation)
        for load in loads
    )
    return total + headroom_sessions / target_sessions


class SessionLoadPolicy:
    """Serve's custom autoscaling policy for the interaction deployment (named in the Serve config
    with ``policy_kwargs``; Serve builds it once and calls it every control-loop period)."""

    def __init__(
        self, target_sessions: int, target_tick_utilisation: float, headroom_sessions: int = 0
    ) -> None:
        self.target_sessions = target_sessions
        self.target_tick_utilisation = target_tick_utilisation
        self.headroom_sessions = headroom_sessions

    def __call__(self, ctx: Any) -> tuple[float, dict[str, Any]]:
        """``ctx`` is a ``ray.serve.config.AutoscalingContext``; its aggregated metrics are the
        look-back means of each running replica's report."""
        metrics: Mapping[str, Mapping[Any, float]] = ctx.aggregated_metrics or {}
        sessions, utilisation = metrics.get(SESSIONS_METRIC, {}), metrics.get(UTILISATION_METRIC, {})
        loads = [
            ReplicaLoad(sessions.get(r, 0.0), utilisation.get(r, 0.0))
            for r in ctx.running_replicas
            if r in sessions or r in utilisation
        ]
        if not loads:  # nothing reported yet: keep the target
            return ctx.target_num_replicas, ctx.policy_state
        # A replica that has not reported yet (it just started) counts at the mean of the others,
        # not as empty, which would read as a reason to scale down.
        missing = len(ctx.running_replicas) - len(loads)
        if missing > 0:
            mean = ReplicaLoad(
                sum(x.sessions for x in loads) / len(loads),
                sum(x.tick_utilisation for x in loads) / len(loads),
            )
            loads += [mean] * missing
        desired = desired_replicas(
            loads,
            target_sessions=self.target_sessions,
            target_tick_utilisation=self.target_tick_utilisation,
            headroom_sessions=self.headroom_sessions,
        )
        return desired, ctx.policy_state


def autoscaling_config(cfg: Any) -> dict[str, Any]:
    """The ``autoscaling_config`` of the deployment in the Serve config, from
    ``interaction.autoscaling`` settings (a ``ServeAutoscalingSettings``)."""
    return {
        "min_replicas": cfg.min_replicas,
        "initial_replicas": max(cfg.min_replicas, 1),
        "max_replicas": cfg.max_replicas,
        "upscale_delay_s": cfg.upscale_delay_s,
        "downscale_delay_s": cfg.downscale_delay_s,
        "look_back_period_s": cfg.look_back_period_s,
        "metrics_interval_s": cfg.metrics_interval_s,
        "policy": {
            "policy_function": POLICY_CLASS,
            "policy_kwargs": {
                "target_sessions": cfg.target_sessions,
                "target_tick_utilisation": cfg.target_tick_utilisation,
                "headroom_sessions": cfg.headroom_sessions,
            },
        },
    }


@dataclass(frozen=True)
class DeploymentView:
    """What the controller says about this replica's deployment."""

    stopping: bool  # this replica is being removed
    target_replicas: int
    running_replicas: int


async def deployment_view(app_name: str, deployment: str, replica_id: str) -> DeploymentView:
    """Ask the Serve controller (private API) for the deployment's replicas and their states."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    details = await controller.get_deployment_details.remote(app_name, deployment)
    states = {r.replica_id: str(getattr(r.state, "value", r.state)) for r in details.replicas}
    return DeploymentView(
        stopping=states.get(replica_id) == "STOPPING",
        target_replicas=int(details.target_num_replicas),
        running_replicas=sum(1 for s in states.values() if s == "RUNNING"),
    )


class StopWatch:
    """Polls the controller every ``poll_s`` while the replica holds sessions (every
    ``IDLE_FACTOR * poll_s`` otherwise, to spare the controller) and calls ``on_stop`` once when this
    replica is STOPPING. A failed poll is logged (rate-limited by its period) and retried: the replica keeps
    serving; if it is removed unseen, its sessions recover elsewhere as after a loss."""

    IDLE_FACTOR = 10  # a replica without sessions has nothing to drain: it asks 10x less often

    def __init__(
        self,
        view: Callable[[], Awaitable[DeploymentView]],
        on_stop: Callable[[], Awaitable[None]],
        poll_s: float,
        busy: Callable[[], bool] = lambda: True,
    ) -> None:
        self._view, self._on_stop, self.poll_s, self._busy = view, on_stop, poll_s, busy
        self.last: DeploymentView | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="serve-stop-watch")

    async def stop(self) -> None:
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        failures, idle = 0, 0
        while True:
            if not self._busy() and self.last is not None and idle < self.IDLE_FACTOR - 1:
                idle += 1
                await asyncio.sleep(self.poll_s)
                continue
            idle = 0
            try:
                self.last = await self._view()
                failures = 0
            except Exception as exc:  # the controller restarting, a network blip: retry
                failures += 1
                if failures == 1 or failures % 60 == 0:
                    log.warning("cannot read the deployment's state from the Serve controller: %r", exc)
            else:
                if self.last.stopping:
                    log.info("Serve is removing this replica: draining its sessions")
                    await self._on_stop()
                    return
            await asyncio.sleep(self.poll_s)
