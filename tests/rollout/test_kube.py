"""The rollout on Kubernetes (microturn.rollout.kube.reconcile) against kmock, a Kubernetes API
emulator speaking HTTP (no API server runs here; the code uses the official client): an
InteractionRollout's passes create the candidate's RayService and gRPC Service, write the routing
ConfigMap the edges read, advance with the RayService's readiness and the versions' reports, and
roll a failing candidate back, deleting it only once its calls are gone."""

from __future__ import annotations

import asyncio

import pytest
import yaml
from kubernetes import client

from microturn.interaction.stats import ReplicaStats
from microturn.rollout.kube import (
    RAY,
    ROUTING_KEY,
    VERSION_LABEL,
    KubeDriver,
    reconcile,
    spec_from_cr,
)
from microturn.rollout.machine import SpecError
from microturn.rollout.observe import StatsWindow
from microturn.rollout.routing import RoutingTable

NS, BASE, CM = "voice", "microturn-interaction", "microturn-routing"
V1, V2 = "microturn-tiny-v2", "microturn-tiny-v1"  # stable, candidate


def apis(kmock) -> tuple[client.CustomObjectsApi, client.CoreV1Api]:
    cfg = client.Configuration()
    cfg.host = str(kmock.url).rstrip("/")
    api = client.ApiClient(cfg)
    return client.CustomObjectsApi(api), client.CoreV1Api(api)


def base_rayservice() -> dict:
    serve = {"applications": [{"name": "interaction", "import_path": "microturn.interaction.deployment:build_app",
                               "args": {"settings": {"interaction": {"session_slots": 32}}}}]}  # fmt: skip
    pod = {"metadata": {"labels": {"app.kubernetes.io/component": "interaction"}}, "spec": {"containers": []}}
    return {"apiVersion": "ray.io/v1", "kind": "RayService", "metadata": {"name": BASE, "namespace": NS},
            "spec": {"upgradeStrategy": {"type": "None"}, "serveConfigV2": yaml.safe_dump(serve),
                     "rayClusterConfig": {"headGroupSpec": {"template": pod},
                                          "workerGroupSpecs": [{"groupName": "gpu", "template": pod}]}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}  # fmt: skip


def stored(kmock, resource: str, name: str) -> dict | None:
    try:
        obj = kmock.objects[resource, NS, name]
    except KeyError:
        return None
    return None if getattr(obj, "deleted", False) else dict(obj)


def rayservice(kmock, name: str) -> dict | None:
    return stored(kmock, "ray.io/v1/rayservices", name)


async def set_ready(kmock, name: str) -> None:
    custom, _ = apis(kmock)
    await asyncio.to_thread(custom.patch_namespaced_custom_object, *RAY[:2], NS, RAY[2], name,
                                          {"status": {"conditions": [{"type": "Ready", "status": "True"}]}})  # fmt: skip


def cr(steps=((50, 5, 1), (100, 5, 0)), **extra) -> dict:
    return {"spec": {"stable": V1, "candidate": V2, "checkpoint": "/models/v1.safetensors",
                     "steps": [{"weight": w, "holdSeconds": h, "minSessions": m} for w, h, m in steps],
                     "analysisIntervalSeconds": 3, "failureLimit": 2, "drainDeadlineSeconds": 600,
                     "candidateSettings": {"session_slots": 16}, "analysis": {"minSessions": 1}, **extra}}  # fmt: skip


class Fleet:
    """Replica reports of both versions, fed into the controller's window."""

    def __init__(self) -> None:
        self.window = StatsWindow(window_s=30, stale_s=30)
        self.totals = {V1: [0, 0, 0], V2: [0, 0, 0]}  # opened, outputs, misses

    def report(self, now: float, version: str, sessions: int, opened: int = 0, outputs: int = 100,
               miss_ratio: float = 0.0) -> None:  # fmt: skip
        t = self.totals[version]
        t[0] += opened
        t[1] += outputs
        t[2] += int(outputs * miss_ratio)
        self.window.add(ReplicaStats(f"r-{version}", version, "interaction", 0, sessions, t[0], 0, t[1], t[2],
                                     {}, 40.0), now)  # fmt: skip


async def run(body: dict, driver: KubeDriver, fleet: Fleet, now: float, smoke=None) -> list:
    # the client blocks; kmock serves on this event loop (as the operator runs it: in a thread)
    status, events = await asyncio.to_thread(reconcile, body, driver, fleet.window, now, smoke)
    body["status"] = status
    return events


@pytest.fixture
async def driver(kmock):
    custom, core = apis(kmock)
    await asyncio.to_thread(custom.create_namespaced_custom_object, *RAY[:2], NS, RAY[2], base_rayservice())
    return KubeDriver(custom, core, NS, BASE, CM, grpc_port=9000)


def routing(kmock) -> RoutingTable:
    return RoutingTable.from_json(kmock.objects["v1/configmaps", NS, CM]["data"][ROUTING_KEY])


async def test_a_rollout_materialises_the_candidate_routes_by_weight_and_retires_the_old_version(
    kmock, driver
):
    body, fleet = cr(), Fleet()
    fleet.report(0, V1, sessions=6, opened=6)
    events = await run(body, driver, fleet, 0)
    assert body["status"]["phase"] == "Provisioning" and [e.reason for e in events] == ["RolloutStarted"]
    cand = rayservice(kmock, f"{BASE}-{V2}")
    assert cand is not None and cand["spec"]["upgradeStrategy"] == {"type": "None"}
    assert cand["metadata"]["labels"][VERSION_LABEL] == V2
    serve = yaml.safe_load(cand["spec"]["serveConfigV2"])["applications"][0]["args"]["settings"][
        "interaction"
    ]
    assert serve == {"session_slots": 16, "checkpoint": "/models/v1.safetensors"}
    pods = [
        cand["spec"]["rayClusterConfig"]["headGroupSpec"],
        *cand["spec"]["rayClusterConfig"]["workerGroupSpecs"],
    ]
    assert all(g["template"]["metadata"]["labels"][VERSION_LABEL] == V2 for g in pods)
    svc = kmock.objects["v1/services", NS, f"{BASE}-{V2}-grpc"]
    assert svc["spec"]["selector"] == {VERSION_LABEL: V2, "ray.io/serve": "true"}
    await run(body, driver, fleet, 1)
    assert body["status"]["phase"] == "Provisioning"  # not Ready yet
    await set_ready(kmock, f"{BASE}-{V2}")
    await run(body, driver, fleet, 2)
    assert body["status"]["phase"] == "Smoke"
    await run(body, driver, fleet, 3, smoke=True)
    assert body["status"]["phase"] == "Shifting" and body["status"]["weights"] == {V1: 50, V2: 50}
    table = routing(kmock)
    assert table.weights == {V1: 50, V2: 50} and table.epoch == 1
    assert table.targets == {V1: f"{BASE}-grpc.{NS}.svc:9000", V2: f"{BASE}-{V2}-grpc.{NS}.svc:9000"}
    for now in (6, 9, 12, 15, 18, 21):
        fleet.report(now, V1, sessions=5)
        fleet.report(now, V2, sessions=3, opened=1)
        await run(body, driver, fleet, now)
    assert body["status"]["phase"] in ("Promoted", "Draining") and routing(kmock).weights == {V2: 100}
    fleet.report(22, V1, sessions=2)
    await run(body, driver, fleet, 22)
    assert body["status"]["phase"] == "Draining" and rayservice(kmock, BASE) is not None  # 2 calls left on v1
    fleet.report(30, V1, sessions=0)
    await run(body, driver, fleet, 30)
    events = await run(body, driver, fleet, 31)
    assert body["status"]["phase"] == "Succeeded" and body["status"]["stable"] == V2
    assert rayservice(kmock, BASE) is None and "RolloutSucceeded" in [e.reason for e in events]
    assert body["status"]["conditions"][0]["status"] == "True"


async def promote(
    kmock, driver: KubeDriver, body: dict, fleet: Fleet, stable: str, candidate: str, t: float
) -> float:
    """Carry a rollout through to Succeeded (the candidate ready, healthy, the old version's calls gone)."""
    await run(body, driver, fleet, t)
    await set_ready(kmock, body["status"]["rayServices"][candidate])
    await run(body, driver, fleet, t + 1)
    await run(body, driver, fleet, t + 2, smoke=True)
    for now in range(int(t) + 5, int(t) + 60, 3):
        fleet.report(now, stable, sessions=0)
        fleet.report(now, candidate, sessions=3, opened=1)
        await run(body, driver, fleet, now)
        if body["status"]["phase"] == "Succeeded":
            return now
    raise AssertionError(f"the rollout did not succeed: {body['status']['message']}")


async def test_later_rollouts_copy_the_stable_version_and_never_bring_back_the_charts_name(kmock, driver):
    """After the first rollout the chart's RayService is gone; the next rollout (a new CR) copies the
    promoted version's RayService, and no version, not even the chart's first one, is given its name."""
    v3 = "microturn-tiny-v3"
    fleet = Fleet()
    fleet.totals[v3] = [0, 0, 0]
    t = await promote(kmock, driver, cr(), fleet, V1, V2, 0)
    assert rayservice(kmock, BASE) is None and rayservice(kmock, f"{BASE}-{V2}") is not None
    second = {"spec": {**cr()["spec"], "stable": V2, "candidate": v3, "checkpoint": "/models/v3.safetensors",
                       "candidateSettings": {"tick_grace_ms": 30}}}  # fmt: skip
    t = await promote(kmock, driver, second, fleet, V2, v3, t + 10)
    assert (
        second["status"]["rayServices"] == {v3: f"{BASE}-{v3}"} and rayservice(kmock, f"{BASE}-{V2}") is None
    )
    settings = yaml.safe_load(rayservice(kmock, f"{BASE}-{v3}")["spec"]["serveConfigV2"])
    # the stable version's settings (v2's session_slots), then this rollout's own
    assert settings["applications"][0]["args"]["settings"]["interaction"] == {
        "session_slots": 16, "checkpoint": "/models/v3.safetensors", "tick_grace_ms": 30}  # fmt: skip
    assert routing(kmock).targets == {v3: f"{BASE}-{v3}-grpc.{NS}.svc:9000"}
    back = {"spec": {**cr()["spec"], "stable": v3, "candidate": V1}}  # back to the chart's first version
    fleet.totals[V1] = [0, 0, 0]
    await run(back, driver, fleet, t + 10)
    assert back["status"]["rayServices"] == {v3: f"{BASE}-{v3}", V1: f"{BASE}-{V1}"}
    assert rayservice(kmock, BASE) is None


async def test_a_failing_candidate_goes_to_weight_zero_and_is_deleted_only_when_its_calls_end(kmock, driver):
    body, fleet = cr(steps=((50, 60, 1), (100, 60, 0))), Fleet()
    fleet.report(0, V1, sessions=6, opened=6)
    await run(body, driver, fleet, 0)
    await set_ready(kmock, f"{BASE}-{V2}")
    await run(body, driver, fleet, 1)
    await run(body, driver, fleet, 2, smoke=True)
    for now in (5, 8, 11):  # every output late on the candidate
        fleet.report(now, V1, sessions=5)
        fleet.report(now, V2, sessions=3, opened=1, miss_ratio=0.9)
        events = await run(body, driver, fleet, now)
    assert body["status"]["phase"] == "Aborting" and routing(kmock).weights == {V1: 100}
    assert (
        any(e.reason == "AnalysisFailed" and e.warning for e in events)
        or body["status"]["machine"]["failures"] == 2
    )
    fleet.report(20, V2, sessions=3)
    await run(body, driver, fleet, 20)
    assert rayservice(kmock, f"{BASE}-{V2}") is not None  # its 3 calls go on
    fleet.report(40, V2, sessions=0)
    await run(body, driver, fleet, 40)
    assert body["status"]["phase"] == "Aborted" and rayservice(kmock, f"{BASE}-{V2}") is None
    assert stored(kmock, "v1/services", f"{BASE}-{V2}-grpc") is None
    assert rayservice(kmock, BASE) is not None and body["status"]["stable"] == V1


async def test_pause_and_abort_are_fields_of_the_resource(kmock, driver):
    body, fleet = cr(steps=((50, 60, 1), (100, 60, 0))), Fleet()
    await run(body, driver, fleet, 0)
    await set_ready(kmock, f"{BASE}-{V2}")
    await run(body, driver, fleet, 1)
    await run(body, driver, fleet, 2, smoke=True)
    body["spec"]["paused"] = True
    await run(body, driver, fleet, 3)
    assert body["status"]["phase"] == "Paused"
    body["spec"]["paused"] = False
    await run(body, driver, fleet, 4)
    assert body["status"]["phase"] == "Shifting"  # and not a restart: pausing is not a spec change
    body["spec"]["abort"] = True
    await run(body, driver, fleet, 5)
    assert body["status"]["phase"] in ("Aborting", "Aborted") and routing(kmock).weights == {V1: 100}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"candidate": "v2", "steps": [{"weight": 100}], "colour": "red"}, "unknown fields"),
        ({"candidate": "v2", "steps": [{"holdSeconds": 1}]}, "weight"),
        ({"candidate": "v2", "steps": [{"weight": 50}]}, "last step"),
        (
            {"candidate": "v2", "steps": [{"weight": 100}], "analysis": {"thresholds": {"x": {"limit": 1}}}},
            "unknown metric",
        ),
    ],
)
def test_a_bad_resource_spec_names_the_field(spec, message):
    with pytest.raises(SpecError, match=message):
        spec_from_cr(spec)


async def test_no_status_is_written_without_the_stable_version(driver):
    with pytest.raises(SpecError, match=r"spec\.stable"):
        await asyncio.to_thread(reconcile, {"spec": {"candidate": "v2", "steps": [{"weight": 100}]}}, driver,
                                StatsWindow(), 0)  # fmt: skip


@pytest.mark.parametrize("replay_compatible", [False, True])
async def test_past_the_drain_deadline_the_routing_configmap_retires_the_versions_calls(
    kmock, driver, replay_compatible
):
    """Its calls end, or move to the stable version where the versions are replay-compatible."""
    body = cr(steps=((50, 60, 1), (100, 60, 0)), drainDeadlineSeconds=30, replayCompatible=replay_compatible)
    fleet = Fleet()
    await run(body, driver, fleet, 0)
    await set_ready(kmock, f"{BASE}-{V2}")
    await run(body, driver, fleet, 1)
    await run(body, driver, fleet, 2, smoke=True)
    body["spec"]["abort"] = True
    fleet.report(3, V2, sessions=2)
    await run(body, driver, fleet, 3)
    assert body["status"]["phase"] == "Aborting" and not routing(kmock).retired
    fleet.report(40, V2, sessions=2)  # past the deadline, calls still on the candidate
    await run(body, driver, fleet, 40)
    assert V2 in routing(kmock).retired and routing(kmock).weights == {V1: 100}
    assert routing(kmock).moves == ({V2: V1} if replay_compatible else {})
    assert rayservice(kmock, f"{BASE}-{V2}") is not None  # the edges end them first
    fleet.report(45, V2, sessions=0)
    await run(body, driver, fleet, 45)
    assert body["status"]["phase"] == "Aborted" and rayservice(kmock, f"{BASE}-{V2}") is None
