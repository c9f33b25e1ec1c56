"""The edge keeps its pod's pod-deletion-cost equal to its live sessions, against a Kubernetes API
emulator (kmock: no API server runs here; the code uses the real kubernetes client over HTTP)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from kubernetes import client

from microturn.config import load_settings
from microturn.edge.deletion_cost import ANNOTATION, DeletionCost

NS, POD = "calls", "edge-7d9f-abcde"


def core_api(kmock) -> client.CoreV1Api:
    cfg = client.Configuration()
    cfg.host = str(kmock.url).rstrip("/")
    return client.CoreV1Api(client.ApiClient(cfg))


def annotations(kmock) -> dict:
    return dict(kmock.objects["v1/pods", NS, POD].get("metadata", {}).get("annotations", {}))


async def test_the_cost_follows_the_sessions_and_is_written_only_on_change(kmock):
    api = core_api(kmock)
    await asyncio.to_thread(
        api.create_namespaced_pod, NS,
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": POD, "namespace": NS,
                                                       "annotations": {"keep": "me"}}},
    )  # fmt: skip
    live = [0]
    cost = DeletionCost(api, POD, NS, lambda: live[0], interval_s=0.05)
    seen = []
    for n in (0, 3, 3, 3, 1, 0):
        live[0] = n
        await cost.update()
        seen.append(annotations(kmock)[ANNOTATION])
    assert seen == ["0", "3", "3", "3", "1", "0"]
    assert annotations(kmock)["keep"] == "me"  # a merge patch: other annotations stay
    versions = kmock.objects["v1/pods", NS, POD, :]
    assert len(versions) == 1 + 4  # created, then 0, 3, 1, 0: an unchanged count is not written again


async def test_the_loop_keeps_it_current_while_the_edge_runs(kmock):
    api = core_api(kmock)
    await asyncio.to_thread(api.create_namespaced_pod, NS, {"metadata": {"name": POD, "namespace": NS}})
    live = [2]
    cost = DeletionCost(api, POD, NS, lambda: live[0], interval_s=0.05)
    cost.start()
    try:
        for n in (2, 5, 0):
            live[0] = n
            for _ in range(100):
                if annotations(kmock).get(ANNOTATION) == str(n):
                    break
                await asyncio.sleep(0.05)
            assert annotations(kmock).get(ANNOTATION) == str(n)
    finally:
        await cost.stop()


async def test_a_failing_api_is_logged_once_and_retried_without_raising(kmock, caplog):
    api = core_api(kmock)  # the pod does not exist yet: 404 Not Found
    cost = DeletionCost(api, POD, NS, lambda: 4, interval_s=0.05)
    with caplog.at_level(logging.WARNING, "microturn.edge.deletion_cost"):
        for _ in range(3):
            await cost.update()
    assert cost.failures == 3 and cost.published is None
    warnings = [r for r in caplog.records if ANNOTATION in r.getMessage()]
    assert len(warnings) == 1 and "404" in warnings[0].getMessage()
    await asyncio.to_thread(api.create_namespaced_pod, NS, {"metadata": {"name": POD, "namespace": NS}})
    await cost.update()
    assert annotations(kmock)[ANNOTATION] == "4" and cost.published == 4


def test_without_a_pod_name_there_is_nothing_to_do():
    assert DeletionCost.from_settings(load_settings().edge, lambda: 0) is None


def test_a_pod_name_without_a_namespace_outside_a_pod_says_what_to_set():
    cfg = load_settings(overrides={"edge": {"pod_name": POD}}).edge
    with pytest.raises(RuntimeError, match="MICROTURN_EDGE__POD_NAMESPACE"):
        DeletionCost.from_settings(cfg, lambda: 0)
