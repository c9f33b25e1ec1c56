"""The rollout operator on Kubernetes (kopf): ``microturn rollout operator``.

Every ``interval_s`` it runs one reconcile pass (``kube.reconcile``) per ``InteractionRollout`` in
its namespace: observe (RayService readiness, the versions' reports from the bus, the candidate's
smoke call), decide, act; it writes the result to the resource's status and posts the rollout's
events as Kubernetes Events. Several replicas may run: kopf's peering (``rollout.peering``) lets only
the one with the highest priority act, the others stand by.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from typing import Any

import kopf

from microturn.bus import Bus, subjects
from microturn.config import Settings
from microturn.edge.deletion_cost import SERVICEACCOUNT_NAMESPACE
from microturn.interaction.stats import ReplicaStats, StatsError
from microturn.rollout.kube import GROUP, PLURAL, VERSION, KubeDriver, reconcile
from microturn.rollout.local import smoke_call
from microturn.rollout.machine import SpecError
from microturn.rollout.observe import StatsWindow
from microturn.telemetry import RateLimitedLog

log = logging.getLogger(__name__)


class Operator:
    """The operator's state across passes: the reports window, the API driver, smoke calls."""

    def __init__(self, settings: Settings, driver: KubeDriver, window: StatsWindow | None = None) -> None:
        self.settings, self.driver = settings, driver
        self.window = window or StatsWindow()
        self._smokes: dict[str, asyncio.Task[bool]] = {}
        self._errors = RateLimitedLog(log)

    async def watch_reports(self) -> Bus:
        bus = await Bus.connect(self.settings.nats, self.settings.bus, name="rollout")

        async def on_report(msg) -> None:
            try:
                self.window.add(ReplicaStats.from_json(msg.data), time.time())
            except StatsError as exc:
                self._errors.log("report", f"refused a replica report on {msg.subject}: {exc}")

        await bus.nc.subscribe(subjects.REPLICA_STATS, cb=on_report)
        return bus

    def smoke(self, name: str, body: dict[str, Any]) -> bool | None:
        """The candidate's smoke call while the rollout is in Smoke (one per resource)."""
        status = body.get("status") or {}
        if status.get("phase") != "Smoke":
            self._smokes.pop(name, None)
            return None
        task = self._smokes.get(name)
        if task is None:
            version = body["spec"]["candidate"]
            target = self.driver.target(status["rayServices"][version])
            task = asyncio.create_task(smoke_call(target, "interaction", version, self.settings.limits))
            self._smokes[name] = task
        return task.result() if task.done() else None

    async def tick(self, name: str, body: dict[str, Any], patch: kopf.Patch) -> None:
        try:
            status, events = await asyncio.to_thread(
                reconcile, body, self.driver, self.window, time.time(), self.smoke(name, body)
            )
        except SpecError as exc:
            patch.status["message"] = f"invalid spec: {exc}"
            kopf.warn(body, reason="InvalidSpec", message=str(exc))
            return
        patch.status.update(plain(status))  # JSON types only (tuples would not compare equal to lists)
        for e in events:
            (kopf.warn if e.warning else kopf.info)(body, reason=e.reason, message=e.message)


def plain(body: Any) -> dict[str, Any]:
    """A kopf body as plain JSON-like data (the reconcile pass edits its copy)."""
    return json.loads(json.dumps(body, default=dict))


def register(operator: Operator, registry: kopf.OperatorRegistry, interval_s: float) -> None:
    @kopf.timer(GROUP, VERSION, PLURAL, interval=interval_s, registry=registry)
    async def reconcile_rollout(name: str, body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        await operator.tick(name, plain(body), patch)


def run(settings: Settings, liveness: str | None = None) -> None:
    """The operator's main: in-cluster credentials, its namespace, peering, the bus reports."""
    from kubernetes import client, config

    cfg = settings.rollout
    config.load_incluster_config()
    namespace = cfg.namespace or SERVICEACCOUNT_NAMESPACE.read_text().strip()
    driver = KubeDriver(client.CustomObjectsApi(), client.CoreV1Api(), namespace, cfg.rayservice,
                        cfg.routing_configmap, cfg.grpc_port)  # fmt: skip
    operator = Operator(settings, driver)
    registry = kopf.OperatorRegistry()
    register(operator, registry, cfg.interval_s)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        settings.peering.mandatory = True  # without the peering object, refuse to run (two could act at once)
        settings.posting.level = logging.INFO
        # The CRDs are installed with the chart; a namespaced Role cannot list them (nor namespaces):
        # use the discovery at start instead of retrying forbidden scans for a minute.
        settings.scanning.disabled = True
        memo.bus = await operator.watch_reports()

    @kopf.on.cleanup(registry=registry)
    async def cleanup(memo: kopf.Memo, **_: Any) -> None:
        await memo.bus.close()

    # Peers with the same priority pause each other: without a configured one, each pod draws its own.
    priority = cfg.priority if cfg.priority is not None else random.randint(1, 1_000_000)
    asyncio.run(
        kopf.operator(registry=registry, namespaces=[namespace], liveness_endpoint=liveness, clusterwide=False,
                      peering_name=cfg.peering, priority=priority)
    )  # fmt: skip
