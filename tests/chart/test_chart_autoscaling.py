"""Autoscaling in the chart (issue 15): what scales on what, rendered by the real helm and validated.

- interaction replicas: Serve's autoscaling_config with microturn's session-load policy, exactly as
  serve_config.render() makes it for the pods' settings (args.settings nested like
  model_dump(exclude_defaults=True)); the drain sets graceful_shutdown_timeout_s;
- interaction pods: the KubeRay in-tree autoscaler between worker.minReplicas and maxReplicas;
- edge pods: sessions per pod (KEDA prometheus trigger, or an HPA on the custom metrics API), the
  Deployment without replicas, and pod-deletion-cost (downward API env, a least-privilege Role, the
  token, API server egress);
- the values the pods' settings would reject fail at `helm template`, naming the values.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from microturn.config import EdgeSettings, load_settings
from microturn.config.settings import ServeAutoscalingSettings
from microturn.interaction import autoscaling, serve_config

from .chart_helpers import CHART, NAMESPACE, RELEASE, helm, objects, one, render, template_args
from .test_chart_render import (
    chart_values,
    component,
    container_named,
    effective_overrides,
    env_of,
    name_of,
    pod_templates,
    rendered,
    validate_object,
)

EDGE = f"{RELEASE}-microturn-edge"
EDGE_METRIC = "microturn_edge_sessions"


def render_with(tmp_path: Path, values: dict[str, Any], ci: str | None = None) -> list[dict]:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return render([*([CHART / "ci" / f"{ci}.yaml"] if ci else []), path])


def template_fails(tmp_path: Path, values: dict[str, Any]) -> str:
    """helm template's stderr for values it must refuse."""
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(values))
    proc = helm("template", *template_args([path]), check=False)
    assert proc.returncode != 0, f"helm template accepted {values}"
    return proc.stderr


def deployment_of(manifests: list[dict]) -> dict:
    rs = one(manifests, "RayService", "interaction")
    (dep,) = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]["deployments"]
    return dep


def replica_settings_of(manifests: list[dict]) -> dict:
    rs = one(manifests, "RayService", "interaction")
    return yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]["args"]["settings"]


def settings_for(ci: str | None, extra: dict[str, Any] | None, monkeypatch):
    for name in list(os.environ):
        if name.startswith("MICROTURN_"):
            monkeypatch.delenv(name)
    return load_settings(overrides=effective_overrides(ci, extra))


# -- every autoscaling object renders and validates ------------------------------------------------
# ci file -> what scales the edge (None: fixed replicas)
EDGE_SCALER = {
    None: "ScaledObject",
    "gpu": "ScaledObject",
    "cpu-only": "ScaledObject",
    "keda-off": "HorizontalPodAutoscaler",
    "fixed-replicas": None,
}


@pytest.mark.parametrize("ci", list(EDGE_SCALER), ids=[c or "defaults" for c in EDGE_SCALER])
def test_autoscaling_objects_render_and_validate(ci):
    manifests = rendered(ci)
    v = chart_values(ci)
    kind = EDGE_SCALER[ci]
    edge_scalers = [
        m
        for m in [*objects(manifests, "ScaledObject"), *objects(manifests, "HorizontalPodAutoscaler")]
        if m["spec"]["scaleTargetRef"]["name"] == EDGE
    ]
    assert [m["kind"] for m in edge_scalers] == ([kind] if kind else [])
    rbac = [*edge_rbac(manifests, "Role"), *edge_rbac(manifests, "RoleBinding")]
    assert len(rbac) == (2 if v["edge"]["podDeletionCost"]["enabled"] else 0)
    checked = [*edge_scalers, *rbac, one(manifests, "RayService", "interaction")]
    checked.append(one(manifests, "Deployment", "edge"))
    for obj in checked:
        validate_object(obj)  # kubernetes-validate strict, or the vendored CRD with unknown fields refused


# -- interaction: Serve autoscaling ----------------------------------------------------------------
def test_serve_autoscaling_config_follows_the_values():
    dep = deployment_of(rendered("gpu"))
    a = chart_values("gpu")["interaction"]["serve"]["autoscaling"]
    assert "num_replicas" not in dep
    assert dep["autoscaling_config"] == {
        "min_replicas": a["minReplicas"],
        "initial_replicas": a["minReplicas"],
        "max_replicas": a["maxReplicas"],
        "upscale_delay_s": a["upscaleDelaySeconds"],
        "downscale_delay_s": a["downscaleDelaySeconds"],
        "look_back_period_s": a["lookBackPeriodSeconds"],
        "metrics_interval_s": a["metricsIntervalSeconds"],
        "policy": {
            "policy_function": autoscaling.POLICY_CLASS,
            "policy_kwargs": {
                "target_sessions": a["targetSessions"],
                "target_tick_utilisation": a["targetTickUtilisation"],
                "headroom_sessions": a["headroomSessions"],
            },
        },
    }
    assert dep["graceful_shutdown_timeout_s"] == 1 + 8 + 5  # stop poll + migrate's drain + margin


def test_serve_autoscaling_off_runs_fixed_replicas_that_wait():
    dep = deployment_of(rendered("fixed-replicas"))
    assert dep["num_replicas"] == 3 and "autoscaling_config" not in dep
    # stop_poll_s 2 (config) + drain wait 900 + drain timeout 12 + 5
    assert dep["graceful_shutdown_timeout_s"] == 919


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"interaction": {"serve": {"autoscaling": {"minReplicas": 0}}}},  # a zero overrides a default
        {"interaction": {"serve": {"autoscaling": {"enabled": False, "downscaleDelaySeconds": 120}}}},
        {"interaction": {"serve": {"autoscaling": {"headroomSessions": 3, "targetTickUtilisation": 0.6}}}},
        {
            "interaction": {
                "serve": {"drain": {"policy": "wait", "waitSeconds": 30}},
                "worker": {"terminationGracePeriodSeconds": 60},
            }
        },
        {"config": {"interaction": {"stop_poll_s": 0.5, "autoscaling": {"target_sessions": 9}}}},
    ],
    ids=["defaults", "scale-to-zero", "off-all-defaults", "partial", "drain-wait", "config-beaten"],
)
def test_serve_config_with_autoscaling_is_what_render_makes(extra, tmp_path, monkeypatch):
    manifests = render_with(tmp_path, extra)
    settings = settings_for(None, extra, monkeypatch)
    chart = yaml.safe_load(one(manifests, "RayService", "interaction")["spec"]["serveConfigV2"])
    assert chart == serve_config.render(settings)
    # args.settings exactly as model_dump(exclude_defaults=True): nested fields too.
    assert replica_settings_of(manifests) == serve_config.replica_settings(settings)


def test_replica_settings_keep_only_the_nested_fields_that_differ(tmp_path):
    interaction = replica_settings_of(rendered())["interaction"]
    # The chart's downscale delay (300 s) differs from the settings' (120 s); the rest are defaults.
    assert interaction["autoscaling"] == {"enabled": True, "downscale_delay_s": 300}
    assert "drain_policy" not in interaction and "drain_timeout_s" not in interaction
    off = {"interaction": {"serve": {"autoscaling": {"enabled": False, "downscaleDelaySeconds": 120}}}}
    assert "autoscaling" not in replica_settings_of(render_with(tmp_path, off))["interaction"]
    wait = {
        "interaction": {
            "serve": {"drain": {"policy": "wait"}},
            "worker": {"terminationGracePeriodSeconds": 700},
        }
    }
    assert replica_settings_of(render_with(tmp_path, wait))["interaction"]["drain_policy"] == "wait"


def test_ray_pods_carry_the_serve_autoscaling_and_drain_settings():
    """The Ray pods' settings render the Serve config the RayService carries (`microturn interaction
    --print` in a pod); the contract test loads them; here: the names and values."""
    v = chart_values("gpu")["interaction"]["serve"]
    for suffix in ("/ray-head", "/ray-worker"):
        env = {k: e.get("value") for k, e in env_of(container_named(rendered("gpu"), suffix)).items()}
        assert env["MICROTURN_INTERACTION__AUTOSCALING__ENABLED"] == "true"
        assert env["MICROTURN_INTERACTION__AUTOSCALING__MAX_REPLICAS"] == str(v["autoscaling"]["maxReplicas"])
        assert env["MICROTURN_INTERACTION__AUTOSCALING__TARGET_SESSIONS"] == str(
            v["autoscaling"]["targetSessions"]
        )
        assert env["MICROTURN_INTERACTION__DRAIN_POLICY"] == v["drain"]["policy"]
        assert env["MICROTURN_INTERACTION__DRAIN_TIMEOUT_S"] == str(v["drain"]["timeoutSeconds"])
    off = env_of(container_named(rendered("fixed-replicas"), "/ray-worker"))
    assert off["MICROTURN_INTERACTION__AUTOSCALING__ENABLED"]["value"] == "false"
    assert off["MICROTURN_INTERACTION__DRAIN_POLICY"]["value"] == "wait"


# -- interaction: the KubeRay in-tree autoscaler -------------------------------------------------------
def test_kuberay_autoscaler_scales_the_worker_group():
    rc = one(rendered(), "RayService", "interaction")["spec"]["rayClusterConfig"]
    w = chart_values()["interaction"]["worker"]
    assert rc["enableInTreeAutoscaling"] is True
    assert rc["autoscalerOptions"]["idleTimeoutSeconds"] == 60
    assert rc["autoscalerOptions"]["upscalingMode"] == "Default"
    (group,) = rc["workerGroupSpecs"]
    assert (group["minReplicas"], group["replicas"], group["maxReplicas"]) == (
        w["minReplicas"],
        w["replicas"],
        w["maxReplicas"],
    )
    rc = one(rendered("fixed-replicas"), "RayService", "interaction")["spec"]["rayClusterConfig"]
    assert rc["enableInTreeAutoscaling"] is False
    head = rc["headGroupSpec"]["template"]["spec"]
    assert head["automountServiceAccountToken"] is False  # no autoscaler: no API access


# -- edge: sessions per pod ----------------------------------------------------------------------------
def exported_edge_metric_names() -> set[str]:
    """The sample names the edge's /metrics exposes for its gauges (the real Prometheus exposition)."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from prometheus_client import REGISTRY, generate_latest

    from microturn.edge.server import EdgeServer

    provider = MeterProvider(metric_readers=[PrometheusMetricReader()], shutdown_on_exit=False)
    try:
        settings = load_settings(overrides={"edge": {"token_secret": "t" * 32}})
        EdgeServer(settings, meter_provider=provider)
        text = generate_latest(REGISTRY).decode()
    finally:
        provider.shutdown()  # takes its collector out of the global registry
    return {m.group(1) for m in re.finditer(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", text, re.M)}


def test_the_scalers_read_the_metric_the_edge_exports():
    names = exported_edge_metric_names()
    assert EDGE_METRIC in names
    (trigger,) = one(rendered(), "ScaledObject", "edge")["spec"]["triggers"]
    query_metric = re.match(r"avg\((\w+)\{", trigger["metadata"]["query"]).group(1)
    hpa = one(rendered("keda-off"), "HorizontalPodAutoscaler", "edge")
    assert query_metric == hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == EDGE_METRIC


def test_edge_scaled_object():
    manifests = rendered()
    a = chart_values()["edge"]["autoscaling"]
    so = one(manifests, "ScaledObject", "edge")
    spec = so["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": EDGE}
    assert (
        (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 10) == (a["minReplicas"], a["maxReplicas"])
    )
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior == {"scaleDown": {"stabilizationWindowSeconds": 1800}}
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus"
    # The query is a mean per pod, so the target is a Value (AverageValue would divide it by the pods).
    assert trigger["metricType"] == "Value"
    meta = trigger["metadata"]
    assert meta["threshold"] == "24" and int(meta["threshold"]) < EdgeSettings().max_sessions
    assert meta["serverAddress"] == "http://prometheus-operated.monitoring.svc.cluster.local:9090"
    assert meta["query"] == f'avg({EDGE_METRIC}{{namespace="{NAMESPACE}", service="{EDGE}"}})'
    # The edge Service is the one the chart's ServiceMonitor scrapes (its `service` label).
    assert EDGE in {s["metadata"]["name"] for s in objects(manifests, "Service")}
    assert "replicas" not in one(manifests, "Deployment", "edge")["spec"]


def test_edge_scaled_object_takes_a_custom_query(tmp_path):
    query = 'avg(microturn_edge_sessions{kubernetes_pod_name=~"mt-microturn-edge-.*"})'
    values = {"edge": {"autoscaling": {"targetSessionsPerPod": 30, "prometheus": {"query": query}}}}
    (trigger,) = one(render_with(tmp_path, values), "ScaledObject", "edge")["spec"]["triggers"]
    assert trigger["metadata"]["query"] == query and trigger["metadata"]["threshold"] == "30"


def test_edge_hpa_without_keda():
    manifests = rendered("keda-off")
    hpa = one(manifests, "HorizontalPodAutoscaler", "edge")
    assert hpa["apiVersion"] == "autoscaling/v2"
    spec = hpa["spec"]
    assert spec["scaleTargetRef"]["name"] == EDGE and (spec["minReplicas"], spec["maxReplicas"]) == (2, 10)
    assert spec["metrics"] == [
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": EDGE_METRIC},
                "target": {"type": "AverageValue", "averageValue": "24"},
            },
        }
    ]
    assert spec["behavior"] == {"scaleDown": {"stabilizationWindowSeconds": 1800}}
    assert "replicas" not in one(manifests, "Deployment", "edge")["spec"]
    assert not [s for s in objects(manifests, "ScaledObject") if s["spec"]["scaleTargetRef"]["name"] == EDGE]


def test_edge_fixed_replicas():
    manifests = rendered("fixed-replicas")
    edge = one(manifests, "Deployment", "edge")
    assert edge["spec"]["replicas"] == 4
    targets = [m["spec"]["scaleTargetRef"]["name"] for m in objects(manifests, "HorizontalPodAutoscaler")]
    targets += [m["spec"]["scaleTargetRef"]["name"] for m in objects(manifests, "ScaledObject")]
    assert EDGE not in targets


# -- edge: pod-deletion-cost -------------------------------------------------------------------------
def test_pod_deletion_cost_wiring():
    manifests = rendered()
    pod = one(manifests, "Deployment", "edge")["spec"]["template"]["spec"]
    env = env_of(container_named(manifests, "/edge"))
    assert env["MICROTURN_EDGE__POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["MICROTURN_EDGE__POD_NAMESPACE"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.namespace"}
    }
    assert pod["automountServiceAccountToken"] is True
    # Only the pods that call the API server mount a token: the edge, the Ray head (its autoscaler)
    # and the rollout operator (test_chart_rollout.py).
    mounting = {where for where, _, spec in pod_templates(manifests) if spec["automountServiceAccountToken"]}
    assert mounting == {
        f"Deployment/{EDGE}",
        f"RayService/{RELEASE}-microturn-interaction/head",
        f"Deployment/{RELEASE}-microturn-rollout",
    }
    for sa in objects(manifests, "ServiceAccount"):
        assert sa["automountServiceAccountToken"] is False, name_of(sa)

    off = rendered("fixed-replicas")
    env = env_of(container_named(off, "/edge"))
    assert "MICROTURN_EDGE__POD_NAME" not in env and "MICROTURN_EDGE__POD_NAMESPACE" not in env
    assert one(off, "Deployment", "edge")["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    assert not edge_rbac(off, "Role") and not edge_rbac(off, "RoleBinding")


def edge_rbac(manifests: list[dict], kind: str) -> list[dict]:
    return [m for m in objects(manifests, kind) if component(m) == "edge"]


def test_edge_role_is_get_and_patch_on_pods_only():
    manifests = rendered()
    assert not objects(manifests, "ClusterRole") and not objects(manifests, "ClusterRoleBinding")
    (role,) = edge_rbac(manifests, "Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert [{k: sorted(v) for k, v in rule.items()} for rule in role["rules"]] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]}
    ]
    (binding,) = edge_rbac(manifests, "RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    sa = one(manifests, "Deployment", "edge")["spec"]["template"]["spec"]["serviceAccountName"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]
    assert sa in {s["metadata"]["name"] for s in objects(manifests, "ServiceAccount")}


def test_edge_role_binds_a_named_existing_service_account(tmp_path):
    values = {"serviceAccount": {"create": False, "name": "voice-edge"}}
    (binding,) = edge_rbac(render_with(tmp_path, values), "RoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "voice-edge", "namespace": NAMESPACE}]


# -- network policies: the API server ----------------------------------------------------------------
def api_rules(policy: dict) -> list[dict]:
    return [
        r
        for r in policy["spec"].get("egress", [])
        if {p.get("port") for p in r.get("ports", [])} == {443, 6443}
    ]


def test_network_policies_let_the_edge_and_the_ray_autoscaler_reach_the_api_server(tmp_path):
    manifests = rendered("network-policies")
    by_name = {p["metadata"]["name"]: p for p in objects(manifests, "NetworkPolicy")}
    (rule,) = api_rules(by_name[EDGE])
    assert "to" not in rule  # no apiServer.cidrs: any address on the API server's ports
    head = by_name[f"{RELEASE}-microturn-interaction-autoscaler"]
    assert head["spec"]["podSelector"]["matchLabels"]["microturn.io/ray-node"] == "head"
    assert head["spec"]["policyTypes"] == ["Egress"] and api_rules(head) == head["spec"]["egress"]
    # The workers' policy has no API server egress.
    assert not api_rules(by_name[f"{RELEASE}-microturn-interaction"])

    narrowed = {"networkPolicy": {"apiServer": {"cidrs": ["192.0.2.10/32"], "ports": [6443]}}}
    manifests = render_with(tmp_path, narrowed, ci="network-policies")
    edge = next(p for p in objects(manifests, "NetworkPolicy") if p["metadata"]["name"] == EDGE)
    assert {"ports": [{"protocol": "TCP", "port": 6443}], "to": [{"ipBlock": {"cidr": "192.0.2.10/32"}}]} in (
        edge["spec"]["egress"]
    )
    for obj in objects(manifests, "NetworkPolicy"):
        validate_object(obj)

    off = {
        "edge": {"podDeletionCost": {"enabled": False}},
        "interaction": {"autoscaling": {"enabled": False}},
    }
    manifests = render_with(tmp_path, off, ci="network-policies")
    by_name = {p["metadata"]["name"]: p for p in objects(manifests, "NetworkPolicy")}
    assert not api_rules(by_name[EDGE]) and f"{RELEASE}-microturn-interaction-autoscaler" not in by_name


# -- values the pods would reject fail at helm template ---------------------------------------------
@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"interaction": {"serve": {"autoscaling": {"targetSessions": 32}}}},
            "interaction.serve.autoscaling.targetSessions (32) must be below the replicas' session slots "
            "(config.interaction.session_slots: 32)",
        ),
        (
            {"config": {"interaction": {"session_slots": 16}}},
            "targetSessions (24) must be below the replicas' session slots (config.interaction.session_slots: 16)",
        ),
        (
            {"interaction": {"serve": {"autoscaling": {"minReplicas": 5, "maxReplicas": 4}}}},
            "interaction.serve.autoscaling.minReplicas (5) is above interaction.serve.autoscaling.maxReplicas (4)",
        ),
        (
            {"interaction": {"serve": {"autoscaling": {"lookBackPeriodSeconds": 2}}}},
            "lookBackPeriodSeconds must be longer than metricsIntervalSeconds",
        ),
        (
            {"interaction": {"serve": {"drain": {"policy": "wait"}}}},
            "interaction.worker.terminationGracePeriodSeconds (30) must exceed interaction.worker.preStopSleepSeconds "
            "(10) + Serve's graceful shutdown timeout (614 s: drain policy wait)",
        ),
        (  # 10 + (1 + 14 + 5) == 30: equal is not enough
            {"interaction": {"serve": {"drain": {"timeoutSeconds": 14}}}},
            "interaction.worker.terminationGracePeriodSeconds (30) must exceed",
        ),
        (
            {"edge": {"autoscaling": {"minReplicas": 5, "maxReplicas": 3}}},
            "edge.autoscaling.minReplicas (5) is above edge.autoscaling.maxReplicas (3)",
        ),
        (
            {"config": {"edge": {"max_sessions": 20}}},
            "edge.autoscaling.targetSessionsPerPod (24) must be below the edge's config.edge.max_sessions (20)",
        ),
        (
            {"edge": {"autoscaling": {"targetSessionsPerPod": EdgeSettings().max_sessions}}},
            f"must be below the edge's config.edge.max_sessions ({EdgeSettings().max_sessions})",
        ),
        (
            {"serviceAccount": {"create": False}},
            "edge.podDeletionCost grants get/patch on pods to the edge's ServiceAccount",
        ),
        ({"interaction": {"serve": {"drain": {"policy": "drop"}}}}, "/interaction/serve/drain/policy"),
        ({"interaction": {"serve": {"autoscaling": {"targetSession": 3}}}}, "'targetSession' not allowed"),
        (
            {"interaction": {"serve": {"autoscaling": {"targetTickUtilisation": 1.5}}}},
            "targetTickUtilisation",
        ),
        ({"edge": {"autoscaling": {"scaleDownStabilizationSeconds": 7200}}}, "scaleDownStabilizationSeconds"),
        ({"edge": {"podDeletionCost": {"enabled": "yes"}}}, "/edge/podDeletionCost/enabled"),
        ({"networkPolicy": {"apiServer": {"ports": []}}}, "/networkPolicy/apiServer/ports"),
    ],
    ids=[
        "target-at-slots",
        "slots-below-target",
        "serve-min-above-max",
        "look-back",
        "grace-drain-wait",
        "grace-equal",
        "edge-min-above-max",
        "edge-target-above-max-sessions",
        "edge-target-at-default-max-sessions",
        "role-for-default-sa",
        "drain-policy-enum",
        "serve-autoscaling-closed",
        "tick-utilisation-range",
        "stabilization-range",
        "pod-deletion-cost-type",
        "api-server-ports",
    ],
)
def test_bad_autoscaling_values_fail_naming_them(values, message, tmp_path):
    stderr = template_fails(tmp_path, values)
    assert message in stderr, stderr


@pytest.mark.parametrize(
    "values",
    [
        {"interaction": {"serve": {"autoscaling": {"targetSessions": 31}}}},
        # Serve autoscaling off: its target is not checked (the settings do not check it either).
        {"interaction": {"serve": {"autoscaling": {"enabled": False, "targetSessions": 64}}}},
        {"interaction": {"serve": {"autoscaling": {"minReplicas": 4, "maxReplicas": 4}}}},
        {"interaction": {"serve": {"drain": {"timeoutSeconds": 13}}}},  # 10 + 19 < 30
        {
            "interaction": {
                "serve": {"drain": {"policy": "wait"}},
                "worker": {"terminationGracePeriodSeconds": 625},
            }
        },
        {"edge": {"autoscaling": {"targetSessionsPerPod": EdgeSettings().max_sessions - 1}}},
        {"edge": {"autoscaling": {"enabled": False, "targetSessionsPerPod": 500}}},
        {
            "serviceAccount": {"create": False},
            "edge": {"podDeletionCost": {"enabled": False}},
            "rollout": {"operator": {"enabled": False}},
        },
    ],
    ids=[
        "target-below-slots",
        "off-unchecked",
        "min-equals-max",
        "grace-just-enough",
        "grace-for-wait",
        "edge-target-below-default-max-sessions",
        "edge-off-unchecked",
        "no-role-no-sa-needed",
    ],
)
def test_the_limits_of_those_checks_pass(values, tmp_path, monkeypatch):
    manifests = render_with(tmp_path, values)
    # ...and the pods' settings accept them too.
    settings_for(None, values, monkeypatch)
    assert one(manifests, "Deployment", "edge")


# -- NOTES ---------------------------------------------------------------------------------------------
def notes(sets: dict[str, str] | None = None, values: list[Path] = ()) -> str:
    out = helm("install", *template_args(list(values), sets), "--dry-run=client").stdout
    return out[out.index("NOTES:") :]


def test_notes_say_what_scales_on_what():
    text = notes()
    assert "interaction replicas:  Serve autoscaling 1-4 (24 sessions" in text
    assert "interaction pods:      Ray autoscaler 1-4 worker pods" in text
    assert "edge pods:             2-10 on 24 sessions per pod (KEDA" in text and "pod-deletion-cost" in text
    assert "background, tools:     KEDA on their JetStream consumers' lag" in text
    fixed = notes(values=[CHART / "ci" / "fixed-replicas.yaml"])
    assert "interaction replicas:  3 fixed; removed ones wait their sessions" in fixed
    assert "edge pods:             4 fixed\n" in fixed
    assert "custom metrics API" in notes(values=[CHART / "ci" / "keda-off.yaml"])


def test_notes_warn_when_serve_max_replicas_cannot_fit():
    assert "Serve's extra replicas stay pending" not in notes()
    assert "Serve's extra replicas stay pending" not in notes(
        values=[CHART / "ci" / "gpu.yaml"]
    )  # 8 x 2 / 0.5
    text = notes({"interaction.serve.autoscaling.maxReplicas": "5"})  # 4 pods of 1 GPU, 1 GPU each
    assert "maxReplicas is 5 but 4 worker pod(s) of 1 GPU(s)\n  hold 4 replicas" in text


# -- the nested settings section through the generated chart files ----------------------------------
def test_nested_settings_section_reaches_the_chart_files(tmp_path):
    defaults = yaml.safe_load((CHART / "files" / "settings-defaults.yaml").read_text())
    assert defaults["interaction"]["autoscaling"] == ServeAutoscalingSettings().model_dump(mode="json")
    # values.schema.json validates config.interaction.autoscaling with the nested model's schema.
    stderr = template_fails(tmp_path, {"config": {"interaction": {"autoscaling": {"target_sesions": 9}}}})
    assert "target_sesions" in stderr, stderr
    stderr = template_fails(tmp_path, {"config": {"interaction": {"autoscaling": {"max_replicas": 0}}}})
    assert "max_replicas" in stderr, stderr
