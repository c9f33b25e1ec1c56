"""The rollout state machine's actions on Kubernetes (the kopf operator in ``operator.py`` calls it).

- Versions side by side: one RayService per version. The stable one is the chart's
  (``<release>-interaction``); a candidate's is a copy of it named ``<base>-<version>``, with the
  candidate's checkpoint and settings in its Serve config, ``upgradeStrategy: None``, and the label
  ``microturn.io/model-version`` on its pods, plus a gRPC Service selecting exactly those pods.
- The routing table: the ConfigMap the edges mount (``routing.json``), with each version's Serve
  application and gRPC endpoint.
- Readiness: the RayService's ``Ready`` condition (KubeRay >= 1.3) or ``serviceStatus: Running``.

All calls are synchronous (the official client); the operator runs them in a thread.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from microturn.rollout import store
from microturn.rollout.analysis import AnalysisSpec, Threshold, default_thresholds
from microturn.rollout.machine import (
    Command,
    DeleteDeployment,
    EndSessions,
    EnsureDeployment,
    Observations,
    RecordEvent,
    RolloutSpec,
    SetRouting,
    SpecError,
    Step,
    decide,
    initial,
    retire_reason,
)
from microturn.rollout.observe import StatsWindow
from microturn.rollout.routing import RoutingTable

GROUP, VERSION, PLURAL, KIND = "microturn.dev", "v1alpha1", "interactionrollouts", "InteractionRollout"
RAY = ("ray.io", "v1", "rayservices")
VERSION_LABEL = "microturn.io/model-version"
ROUTING_KEY = "routing.json"


def slug(version: str) -> str:
    """A version as a DNS-1123 label part (RayService and Service names, label values)."""
    s = re.sub(r"[^a-z0-9-]", "-", version.lower()).strip("-")
    if not s:
        raise SpecError(f"version {version!r} has no letters or digits")
    return s[:40]


_SPEC_FIELDS = {  # CR spec (camelCase) -> RolloutSpec field
    "candidate": "candidate", "checkpoint": "checkpoint", "analysisIntervalSeconds": "analysis_interval_s",
    "failureLimit": "failure_limit", "provisionTimeoutSeconds": "provision_timeout_s",
    "smokeTimeoutSeconds": "smoke_timeout_s", "drainDeadlineSeconds": "drain_deadline_s",
    "replayCompatible": "replay_compatible", "candidateSettings": "candidate_settings",
}  # fmt: skip
COMMAND_FIELDS = {"paused", "abort", "stable"}  # not part of the spec's identity


def spec_from_cr(spec: dict[str, Any]) -> RolloutSpec:
    """An ``InteractionRollout`` spec as a RolloutSpec; every problem a SpecError naming the field."""
    if unknown := sorted(set(spec) - set(_SPEC_FIELDS) - {"steps", "analysis"} - COMMAND_FIELDS):
        raise SpecError(f"spec: unknown fields {unknown}")
    kw: dict[str, Any] = {_SPEC_FIELDS[k]: v for k, v in spec.items() if k in _SPEC_FIELDS}
    try:
        kw["steps"] = tuple(
            Step(int(s["weight"]), float(s.get("holdSeconds", 60)), int(s.get("minSessions", 0)))
            for s in spec.get("steps", [])
        )
        a = spec.get("analysis", {})
        thresholds = default_thresholds()
        for name, t in a.get("thresholds", {}).items():
            if name not in thresholds:
                raise SpecError(
                    f"spec.analysis.thresholds: unknown metric {name!r}; known: {sorted(thresholds)}"
                )
            thresholds[name] = Threshold(float(t["limit"]), float(t.get("margin", 0.0)))
        kw["analysis"] = AnalysisSpec(thresholds=thresholds, min_sessions=int(a.get("minSessions", 5)),
                                      miss_z=float(a.get("missZ", AnalysisSpec.miss_z)))  # fmt: skip
        return RolloutSpec(**kw)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, SpecError):
            raise
        raise SpecError(f"spec: {exc!r}") from None


@dataclass
class KubeDriver:
    custom: client.CustomObjectsApi
    core: client.CoreV1Api
    namespace: str
    base: str  # the chart's RayService (the first stable version's)
    routing_configmap: str
    grpc_port: int = 9000

    def candidate_name(self, version: str) -> str:
        """A new version's RayService: never the chart's name, so once a rollout retired the chart's
        RayService the chart does not render it again (templates/interaction.yaml)."""
        return f"{self.base}-{slug(version)}"

    def stable_name(self, version: str) -> str:
        """The RayService serving the stable ``version`` when a rollout starts: the chart's while it
        exists and serves it (its version label, if it has one), else the one an earlier rollout made."""
        base = self._get(self.base)
        label = (base["metadata"].get("labels") or {}).get(VERSION_LABEL) if base is not None else None
        return (
            self.base if base is not None and label in (None, slug(version)) else self.candidate_name(version)
        )

    def _get(self, name: str) -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object(*RAY[:2], self.namespace, RAY[2], name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def ready(self, name: str) -> bool:
        obj = self._get(name)
        if obj is None:
            return False
        st = obj.get("status") or {}
        conds = {c.get("type"): c.get("status") for c in st.get("conditions") or []}
        return conds.get("Ready") == "True" or st.get("serviceStatus") == "Running"

    def ensure(self, name: str, version: str, spec: RolloutSpec, template: str) -> None:
        """Create the candidate's RayService (a copy of ``template``, the stable version's) and its
        gRPC Service."""
        if self._get(name) is None:
            stable = self._get(template)
            if stable is None:
                raise RuntimeError(
                    f"RayService {template} (the stable version's) not found in {self.namespace}"
                )
            body = candidate_rayservice(stable, name, version, spec)
            self.custom.create_namespaced_custom_object(*RAY[:2], self.namespace, RAY[2], body)
        service = grpc_service(name, version, self.grpc_port)
        try:
            self.core.create_namespaced_service(self.namespace, service)
        except ApiException as exc:
            if exc.status != 409:  # already there
                raise

    def delete(self, name: str) -> None:
        for call in (
            lambda: self.custom.delete_namespaced_custom_object(*RAY[:2], self.namespace, RAY[2], name),
            lambda: self.core.delete_namespaced_service(f"{name}-grpc", self.namespace),
        ):
            try:
                call()
            except ApiException as exc:
                if exc.status != 404:
                    raise

    def target(self, name: str) -> str:
        return f"{name}-grpc.{self.namespace}.svc:{self.grpc_port}"

    def routing(self) -> RoutingTable | None:
        try:
            cm = self.core.read_namespaced_config_map(self.routing_configmap, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        text = (cm.data or {}).get(ROUTING_KEY)
        return RoutingTable.from_json(text) if text else None

    def retire(self, a: EndSessions, epoch: int, weights: dict[str, int]) -> None:
        table = self.routing() or RoutingTable(epoch, dict(weights))
        self.set_routing(table.retire(a.version, retire_reason(a), a.move_to))

    def set_routing(self, table: RoutingTable) -> None:
        body = {"data": {ROUTING_KEY: table.to_json()}}
        try:
            self.core.patch_namespaced_config_map(self.routing_configmap, self.namespace, body)
        except ApiException as exc:
            if exc.status != 404:
                raise
            meta = {"name": self.routing_configmap, "namespace": self.namespace}
            self.core.create_namespaced_config_map(self.namespace, {"metadata": meta, **body})


def candidate_rayservice(base: dict[str, Any], name: str, version: str, spec: RolloutSpec) -> dict[str, Any]:
    """The base RayService with the candidate's name, checkpoint, settings and version label."""
    body = {"apiVersion": "ray.io/v1", "kind": "RayService",
            "metadata": {"name": name, "namespace": base["metadata"].get("namespace"),
                         "labels": {**(base["metadata"].get("labels") or {}), VERSION_LABEL: slug(version)}},
            "spec": copy.deepcopy(base["spec"])}  # fmt: skip
    s = body["spec"]
    s["upgradeStrategy"] = {"type": "None"}
    serve = yaml.safe_load(s["serveConfigV2"])
    for app in serve["applications"]:
        settings = app.setdefault("args", {}).setdefault("settings", {})
        interaction = settings.setdefault("interaction", {})
        interaction.update(spec.candidate_settings)
        if spec.checkpoint:
            interaction["checkpoint"] = spec.checkpoint
    s["serveConfigV2"] = yaml.safe_dump(serve, sort_keys=False)
    cluster = s["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
    for g in groups:
        labels = g["template"].setdefault("metadata", {}).setdefault("labels", {})
        labels[VERSION_LABEL] = slug(version)
    return body


def grpc_service(name: str, version: str, port: int) -> dict[str, Any]:
    """The candidate's gRPC Service: its serving pods only (KubeRay marks them ray.io/serve=true)."""
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": f"{name}-grpc", "labels": {VERSION_LABEL: slug(version)}},
        "spec": {"selector": {VERSION_LABEL: slug(version), "ray.io/serve": "true"},
                 "ports": [{"name": "grpc", "port": port, "targetPort": port, "protocol": "TCP"}]},
    }  # fmt: skip


def routing_table(
    epoch: int, weights: dict[str, int], names: dict[str, str], driver: KubeDriver
) -> RoutingTable:
    return RoutingTable(epoch, weights, targets={v: driver.target(names[v]) for v in weights if v in names})


def ready_condition(phase: str, message: str) -> dict[str, str]:
    """Ready: no rollout in progress (the stable version serves every new call)."""
    done = phase in ("Idle", "Succeeded", "Aborted")
    return {"type": "Ready", "status": "True" if done else "False", "reason": phase, "message": message}


def commands(spec: dict[str, Any], phase: str) -> Command | None:
    """The CR's ``paused`` and ``abort`` fields as the machine's commands (they are levels, not events)."""
    if spec.get("abort"):
        return Command.ABORT
    if spec.get("paused") and phase == "Shifting":
        return Command.PAUSE
    if not spec.get("paused") and phase == "Paused":
        return Command.RESUME
    return None


def reconcile(
    body: dict[str, Any], driver: KubeDriver, window: StatsWindow, now: float, smoke: bool | None = None
) -> tuple[dict[str, Any], list[RecordEvent]]:
    """One pass for one InteractionRollout: observe, decide, act. Returns the status to write and the
    events to record (the caller posts them as Kubernetes Events)."""
    spec_doc = body.get("spec") or {}
    old = (body.get("status") or {}).get("machine")
    stable_at_start = (body.get("status") or {}).get("stableAtStart") or spec_doc.get("stable")
    if not stable_at_start:
        raise SpecError("spec.stable: the version the base RayService serves is required")
    status = store.status_from_doc(old) if old else initial(stable_at_start)
    names: dict[str, str] = dict(
        (body.get("status") or {}).get("rayServices")
        or {stable_at_start: driver.stable_name(stable_at_start)}
    )
    spec = spec_from_cr(spec_doc)
    ready = {v: driver.ready(n) for v, n in names.items()}
    obs = Observations(spec, window.versions(now, ready), smoke, commands(spec_doc, status.phase.value))
    status, actions = decide(status, obs, now)
    events: list[RecordEvent] = []
    for a in actions:
        if isinstance(a, EnsureDeployment):
            names[a.version] = driver.candidate_name(a.version)
            template = names.get(status.stable) or driver.stable_name(status.stable)
            driver.ensure(names[a.version], a.version, spec, template)
        elif isinstance(a, DeleteDeployment):
            if a.version in names:
                driver.delete(names.pop(a.version))
        elif isinstance(a, SetRouting):
            driver.set_routing(routing_table(a.epoch, a.weights, names, driver))
        elif isinstance(a, EndSessions):  # the edges move its calls, or end them with a clear error
            driver.retire(a, status.epoch, status.weights)
        elif isinstance(a, RecordEvent):
            events.append(a)
    versions = obs.versions
    out = {
        "machine": store.status_to_doc(status),
        "stableAtStart": stable_at_start,
        "rayServices": names,
        "phase": status.phase.value,
        "step": status.step + 1,
        "weights": status.weights,
        "epoch": status.epoch,
        "stable": status.stable,
        "message": status.message,
        "sessions": {v: versions[v].sessions for v in names if v in versions},
        "conditions": [ready_condition(status.phase.value, status.message)],
    }
    return out, events
