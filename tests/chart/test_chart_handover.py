"""After a rollout, helm upgrade leaves the interaction service to the rollout operator.

A rollout that succeeds retires the chart's own RayService and leaves the promoted version in one the
operator made (``<release>-microturn-interaction-<version>``). The chart reads the cluster (``lookup``)
and does not render its RayService again, so a later ``helm upgrade`` does not bring back the version
that lost; while the chart's RayService exists (a rollout still draining it, or none ever ran) it is
rendered. Checked with the real helm binary rendering against kmock, a Kubernetes API emulator, as a
server-side dry run does against an API server (``helm template --dry-run=server``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import kmock as kmock_lib
import pytest
import yaml

from microturn.rollout.routing import RoutingTable

from .chart_helpers import NAMESPACE, helm_binary, objects, render, template_args

RAYSERVICE = "mt-microturn-interaction"
PROMOTED = f"{RAYSERVICE}-microturn-tiny-v1"
ROUTING = "mt-microturn-routing"
CLUSTER_SCOPED = {"CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "Namespace"}


def plural(kind: str) -> str:
    k = kind.lower()
    return k[:-1] + "ies" if k.endswith("y") else k + "es" if k.endswith("s") else k + "s"


@pytest.fixture
def present() -> dict[str, dict]:
    """The RayServices in the namespace (name -> object): what the cluster lists."""
    return {}


@pytest.fixture
def cluster(kmock, tmp_path, present) -> Path:
    """kmock serving discovery for every kind the chart renders and the RayServices in ``present``;
    the kubeconfig that points at it."""
    kmock["get /version"] << {"major": "1", "minor": "31", "gitVersion": "v1.31.0", "platform": "linux/amd64"}
    kinds = {(m["apiVersion"], m["kind"]) for m in render()}
    for api_version, kind in kinds | {("ray.io/v1", "RayService"), ("v1", "ConfigMap")}:
        kmock.resources[f"{api_version}/{plural(kind)}"] = kmock_lib.ResourceInfo(
            kind=kind, namespaced=kind not in CLUSTER_SCOPED, verbs={"get", "list", "create"}
        )
    # kmock names the core group "/v1" in its discovery, which client-go (helm) does not map: say "v1"
    core = sorted(k for v, k in kinds | {("v1", "ConfigMap")} if v == "v1")
    kmock["get /api/v1"] << {
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1",
        "resources": [{"name": plural(k), "kind": k, "namespaced": True, "singularName": k.lower(),
                       "verbs": ["get", "list", "create"]} for k in core],
    }  # fmt: skip
    # kmock's lists carry no "kind", which client-go (helm's lookup) requires
    kmock[f"get /apis/ray.io/v1/namespaces/{NAMESPACE}/rayservices"] << (
        lambda: {
            "apiVersion": "ray.io/v1",
            "kind": "RayServiceList",
            "metadata": {},
            "items": list(present.values()),
        }
    )
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": str(kmock.url).rstrip("/")}}],
        "users": [{"name": "kmock", "user": {"token": "test"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}],
    }  # fmt: skip
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


def released(name: str) -> dict:
    """Metadata of an object of release ``mt``, as helm leaves it (it checks ownership on upgrade)."""
    return {"name": name, "namespace": NAMESPACE, "labels": {"app.kubernetes.io/managed-by": "Helm"},
            "annotations": {"meta.helm.sh/release-name": "mt", "meta.helm.sh/release-namespace": NAMESPACE}}  # fmt: skip


def add_rayservice(kmock, present: dict[str, dict], name: str) -> None:
    obj = {"apiVersion": "ray.io/v1", "kind": "RayService", "metadata": released(name), "spec": {}}
    kmock.objects["ray.io/v1/rayservices", NAMESPACE, name] = present[name] = obj


async def render_against(kubeconfig: Path) -> list[dict]:
    """helm template with lookup answered by the cluster (run without blocking: kmock serves on this loop)."""
    proc = await asyncio.create_subprocess_exec(
        helm_binary(), "template", *template_args(), "--dry-run=server", "--disable-openapi-validation",
        "--kubeconfig", str(kubeconfig), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    return [d for d in yaml.safe_load_all(out) if d]


def rayservices(manifests: list[dict]) -> list[str]:
    return [m["metadata"]["name"] for m in objects(manifests, "RayService")]


async def test_a_first_install_renders_the_charts_rayservice(cluster):
    assert rayservices(await render_against(cluster)) == [RAYSERVICE]


async def test_while_the_charts_rayservice_exists_it_is_rendered_even_beside_a_candidate(
    kmock, present, cluster
):
    add_rayservice(kmock, present, RAYSERVICE)
    add_rayservice(kmock, present, PROMOTED)  # mid-rollout
    assert rayservices(await render_against(cluster)) == [RAYSERVICE]


async def test_after_a_rollout_retired_it_an_upgrade_does_not_bring_it_back(kmock, present, cluster):
    add_rayservice(kmock, present, PROMOTED)
    live = RoutingTable(
        7, {"microturn-tiny-v1": 100}, targets={"microturn-tiny-v1": f"{PROMOTED}-grpc.voice.svc:9000"}
    )
    kmock.objects["v1/configmaps", NAMESPACE, ROUTING] = {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": released(ROUTING),
        "data": {"routing.json": live.to_json()},
    }  # fmt: skip
    manifests = await render_against(cluster)
    assert rayservices(manifests) == []
    # the routing table the operator wrote is kept as it is
    (cm,) = [m for m in objects(manifests, "ConfigMap") if m["metadata"]["name"] == ROUTING]
    assert RoutingTable.from_json(cm["data"]["routing.json"]) == live


async def test_another_releases_rayservice_does_not_count(kmock, present, cluster):
    add_rayservice(kmock, present, "other-microturn-interaction-v9")
    assert rayservices(await render_against(cluster)) == [RAYSERVICE]
