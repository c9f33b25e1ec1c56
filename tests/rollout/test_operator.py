"""The kopf operator in-process against kmock (a Kubernetes API emulator over HTTP): an
InteractionRollout is picked up, its candidate RayService appears, readiness moves it on, the smoke
call goes to a real replica of the candidate, the routing ConfigMap follows the steps, and the
status and Events are written to the API."""

from __future__ import annotations

import asyncio
import threading

import kopf
import pytest

from microturn.config import load_settings
from microturn.interaction.core import InteractionCore
from microturn.interaction.grpc_server import start_server
from microturn.localrun.ports import free_port
from microturn.rollout.kube import GROUP, PLURAL, RAY, VERSION, KubeDriver
from microturn.rollout.observe import StatsWindow
from microturn.rollout.operator import Operator, register

from ..interaction.conftest import tiny_model
from .test_kube import BASE, CM, NS, apis, base_rayservice, routing, set_ready, stored

STABLE, CANDIDATE = "microturn-tiny-v2", "tiny-test"  # the candidate: what tiny_model() serves


class LocalTargets(KubeDriver):
    """Every version's gRPC endpoint is the test's replica (no cluster DNS here)."""

    local: str = ""

    def target(self, name: str) -> str:
        return self.local


async def eventually(check, timeout_s: float, what: str) -> None:
    for _ in range(int(timeout_s / 0.1)):
        if await asyncio.to_thread(check):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout_s} s")


@pytest.fixture
async def candidate_replica():
    settings = load_settings(
        overrides={"interaction": {"bus": False, "session_slots": 2, "tick_grace_ms": 20}}
    )
    core = InteractionCore(settings, "replica-candidate", model=tiny_model())
    port = free_port()
    server = await start_server(core, "127.0.0.1", port)
    yield f"127.0.0.1:{port}"
    await server.stop(grace=None)
    await core.drain()


async def test_the_operator_carries_a_rollout_out_through_the_api(kmock, candidate_replica):
    kmock.resources[f"{GROUP}/{VERSION}/{PLURAL}"] = kmock.ResourceInfo(
        kind="InteractionRollout", namespaced=True, verbs={"get", "list", "watch", "patch", "create"},
        subresources={"status"},
    )  # fmt: skip
    kmock.resources["ray.io/v1/rayservices"] = kmock.ResourceInfo(kind="RayService", namespaced=True,
                                                                  verbs={"get", "list", "watch", "create", "patch", "delete"})  # fmt: skip
    # kopf's backbone: it waits for the CRDs resource to exist even when it does not scan them
    kmock.resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = kmock.ResourceInfo(
        kind="CustomResourceDefinition", namespaced=False, verbs={"get", "list", "watch"}
    )
    kmock.resources["v1/namespaces"] = kmock.ResourceInfo(
        kind="Namespace", namespaced=False, verbs={"get", "list", "watch"}
    )
    kmock.resources["v1/events"] = kmock.ResourceInfo(
        kind="Event", namespaced=True, verbs={"create", "get", "list"}
    )
    custom, core = apis(kmock)
    await asyncio.to_thread(custom.create_namespaced_custom_object, *RAY[:2], NS, RAY[2], base_rayservice())
    rollout = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InteractionRollout", "metadata": {"name": "to-tiny", "namespace": NS, "resourceVersion": "1"},
               "spec": {"stable": STABLE, "candidate": CANDIDATE, "steps": [{"weight": 25, "holdSeconds": 600}, {"weight": 100}],
                        "analysisIntervalSeconds": 1}}  # fmt: skip
    await asyncio.to_thread(custom.create_namespaced_custom_object, GROUP, VERSION, NS, PLURAL, rollout)
    driver = LocalTargets(custom, core, NS, BASE, CM)
    driver.local = candidate_replica
    settings = load_settings()
    operator = Operator(settings, driver, StatsWindow())
    registry = kopf.OperatorRegistry()
    register(operator, registry, interval_s=0.3)

    @kopf.on.login(registry=registry)
    def login(**_):
        return kopf.ConnectionInfo(server=str(kmock.url).rstrip("/"), insecure=True)

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_):
        settings.scanning.disabled = True  # kmock serves no CRDs to scan: the discovery is all there is

    def cr() -> dict:
        return stored(kmock, f"{GROUP}/{VERSION}/{PLURAL}", "to-tiny") or {}

    def phase() -> str:
        return (cr().get("status") or {}).get("phase", "")

    # The operator runs in its own thread and event loop, as in its pod (kopf cancels its loop's tasks
    # when it stops; this test's loop also serves kmock and the candidate's replica).
    stop = threading.Event()
    thread = threading.Thread(target=lambda: asyncio.run(kopf.operator(
        registry=registry, namespaces=[NS], standalone=True, clusterwide=False, stop_flag=stop)))  # fmt: skip
    thread.start()
    try:
        await eventually(lambda: phase() == "Provisioning", 30, "the rollout to start")
        assert stored(kmock, "ray.io/v1/rayservices", f"{BASE}-{CANDIDATE}") is not None
        await set_ready(kmock, f"{BASE}-{CANDIDATE}")
        await eventually(lambda: phase() == "Shifting", 60, "the smoke call to pass and the first step")
        table = routing(kmock)
        assert table.weights == {STABLE: 75, CANDIDATE: 25} and table.epoch == 1
        assert cr()["status"]["weights"] == {STABLE: 75, CANDIDATE: 25}
        events = [e for e in kmock.objects if e[0].plural == "events"]
        assert events, "no Kubernetes Event was posted"
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 30)
        assert not thread.is_alive()
