"""The Helm chart (charts/microturn), rendered by the real helm and checked offline.

Every ci/*.yaml values file lints (--strict) and renders; every rendered Kubernetes object validates
(kubernetes-validate, strict, two Kubernetes versions); the custom resources validate against the
vendored CRDs' openAPIV3Schema (with unknown fields refused, as the API server's strict field
validation would); ServiceMonitor/PodMonitor have no vendored CRD, so only their apiVersion, kind
and required spec fields are checked. Then what the chart promises: hardened containers, env names
that are real settings, one port number per port, the serve config as serve_config.render() makes
it, one scaler per Deployment, hook ordering, media modes, Secrets, NOTES, helm tests, and the NATS
values file against microturn.bus.permissions.
"""

from __future__ import annotations

import copy
import functools
import importlib.metadata
import json
import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from microturn.bus import streams, subjects
from microturn.bus.permissions import USERS, password_env_var, permissions_data
from microturn.config import load_settings, setting_paths
from microturn.deploy import chartfiles
from microturn.deploy.chartfiles import NATS_SECRET
from microturn.interaction import serve_config

from ..need import need
from .chart_helpers import (
    CHART,
    CI_VALUES,
    NAMESPACE,
    RELEASE,
    ROOT,
    helm,
    objects,
    one,
    render,
    template_args,
)

K8S_VERSIONS = ("1.30.0", "1.35.0")
CRDS = ROOT.parent / "shared" / "crds"
CHART_CRDS = CHART / "crds"
CRD_FILES = {
    ("ray.io/v1", "RayService"): CRDS / "ray.io_rayservices.yaml",
    ("keda.sh/v1alpha1", "ScaledObject"): CRDS / "keda.sh_scaledobjects.yaml",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): CRDS / "keda.sh_triggerauthentications.yaml",
    # the chart's own (charts/microturn/crds, installed by helm before the templates)
    ("microturn.dev/v1alpha1", "InteractionRollout"): CHART_CRDS / "interactionrollouts.microturn.dev.yaml",
    ("kopf.dev/v1", "KopfPeering"): CHART_CRDS / "kopfpeerings.kopf.dev.yaml",
}
MONITORS = {"ServiceMonitor": "endpoints", "PodMonitor": "podMetricsEndpoints"}
CI_IDS = [p.stem for p in CI_VALUES]
WORKLOADS = ("Deployment", "Job", "StatefulSet", "DaemonSet")
STANDARD_LABELS = (
    "helm.sh/chart",
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/part-of",
)
COMPONENTS = {"edge", "interaction", "background", "tools", "bus-setup", "rollout", "turn", "test"}
CONSUMERS = {
    "background": streams.durable(subjects.BACKGROUND_CONSUMER),
    "tools": streams.durable(subjects.TOOLS_CONSUMER),
}


# -- rendering, once per values file ----------------------------------------------------------------
@functools.cache
def rendered(ci: str | None = None, sets: tuple[tuple[str, str], ...] = (), extra: tuple[str, ...] = ()):
    values = [CHART / "ci" / f"{ci}.yaml"] if ci else []
    return render(values, dict(sets), *extra)


def ci_values(ci: str) -> dict[str, Any]:
    return yaml.safe_load((CHART / "ci" / f"{ci}.yaml").read_text()) or {}


def chart_values(ci: str | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """values.yaml merged with a ci file, then with ``extra`` (what the templates see)."""

    def merge(base: dict, over: dict) -> dict:
        out = dict(base)
        for k, v in over.items():
            out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        return out

    base = yaml.safe_load((CHART / "values.yaml").read_text())
    return merge(merge(base, ci_values(ci)) if ci else base, extra or {})


def name_of(obj: dict) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def component(obj: dict) -> str | None:
    return obj["metadata"].get("labels", {}).get("app.kubernetes.io/component")


def pod_templates(manifests: list[dict]) -> list[tuple[str, dict, dict]]:
    """(where, pod metadata, pod spec) of every pod this chart makes, RayService groups included."""
    out = []
    for m in manifests:
        kind, spec = m["kind"], m.get("spec", {})
        if kind in WORKLOADS:
            t = spec["template"]
            out.append((name_of(m), t.get("metadata", {}), t["spec"]))
        elif kind == "Pod":
            out.append((name_of(m), m["metadata"], spec))
        elif kind == "RayService":
            rc = spec["rayClusterConfig"]
            head = rc["headGroupSpec"]["template"]
            out.append((f"{name_of(m)}/head", head.get("metadata", {}), head["spec"]))
            for g in rc["workerGroupSpecs"]:
                out.append(
                    (
                        f"{name_of(m)}/{g['groupName']}",
                        g["template"].get("metadata", {}),
                        g["template"]["spec"],
                    )
                )
    return out


def containers(manifests: list[dict]) -> list[tuple[str, dict, dict]]:
    """(where, pod spec, container) for every container and init container."""
    return [
        (f"{where}/{c['name']}", spec, c)
        for where, _, spec in pod_templates(manifests)
        for c in [*spec.get("initContainers", []), *spec["containers"]]
    ]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def env_value(container: dict, name: str) -> str:
    return env_of(container)[name]["value"]


def container_named(manifests: list[dict], suffix: str) -> dict:
    found = [c for where, _, c in containers(manifests) if where.endswith(suffix)]
    assert len(found) == 1, f"expected one container ending {suffix}, got {len(found)}"
    return found[0]


def is_hook(obj: dict) -> bool:
    return "helm.sh/hook" in obj["metadata"].get("annotations", {})


# -- validation --------------------------------------------------------------------------------------
def _strict(schema: Any) -> Any:
    """An openAPIV3Schema that refuses unknown fields where the CRD lists the fields (the API
    server's strict field validation; the default would prune them silently), as JSON Schema 2020-12
    (OpenAPI v3.0's boolean exclusiveMinimum/exclusiveMaximum become the bound itself)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
            if isinstance(out.get(exclusive), bool) and out.pop(exclusive):
                out[exclusive] = out.pop(bound)
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@functools.cache
def crd_validator(api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    path = CRD_FILES[(api_version, kind)]
    if not path.is_file():
        need([str(path)], "the vendored CRDs live in ../shared/crds next to the repository")
    crd = yaml.safe_load(path.read_text())
    version = api_version.split("/")[1]
    (v,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = copy.deepcopy(v["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}
    for field in ("apiVersion", "kind"):  # the API server takes them on every object
        schema["properties"].setdefault(field, {"type": "string"})
    return jsonschema.Draft202012Validator(_strict(schema))


_validated: set[tuple[str, str]] = set()


def validate_object(obj: dict) -> None:
    """Validate one object once (per Kubernetes version); raise naming it."""
    key = json.dumps(obj, sort_keys=True)
    api, kind = obj["apiVersion"], obj["kind"]
    if (api, kind) in CRD_FILES:
        if ("crd", key) in _validated:
            return
        errors = sorted(crd_validator(api, kind).iter_errors(obj), key=lambda e: list(e.absolute_path))
        assert not errors, f"{name_of(obj)}: " + "; ".join(
            f"{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}" for e in errors[:5]
        )
        _validated.add(("crd", key))
        if kind == "RayService":  # the pod templates inside, as the PodTemplates they are
            for where, meta, spec in pod_templates([obj]):
                template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}}
                template["template"] = {"metadata": meta, "spec": spec}
                for version in K8S_VERSIONS:
                    _k8s_validate(template, version, where)
        return
    if kind in MONITORS:
        assert api == "monitoring.coreos.com/v1", name_of(obj)
        endpoints = obj["spec"][MONITORS[kind]]
        assert obj["spec"]["selector"]["matchLabels"] and endpoints, name_of(obj)
        assert all(e.get("port") for e in endpoints), name_of(obj)
        return
    for version in K8S_VERSIONS:
        if (version, key) not in _validated:
            _k8s_validate(obj, version, name_of(obj))
            _validated.add((version, key))


def _k8s_validate(obj: dict, version: str, where: str) -> None:
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        raise AssertionError(f"{where} is not a valid Kubernetes {version} object: {exc}") from None


# -- lint and schema validation of every ci values file ---------------------------------------------
@pytest.mark.parametrize("ci", [None, *CI_IDS], ids=["defaults", *CI_IDS])
def test_lint_strict(ci):
    args = ["lint", "--strict", str(CHART), "--namespace", NAMESPACE]
    if ci:
        args += ["-f", str(CHART / "ci" / f"{ci}.yaml")]
    out = helm(*args).stdout
    assert "0 chart(s) failed" in out, out


@pytest.mark.parametrize("ci", [None, *CI_IDS], ids=["defaults", *CI_IDS])
def test_every_object_validates(ci):
    manifests = rendered(ci)
    assert manifests
    for obj in manifests:
        validate_object(obj)


def test_ci_matrix_is_complete():
    assert set(CI_IDS) >= {
        "cpu-only",
        "gpu",
        "fixed-replicas",
        "keda-off",
        "external-nats",
        "turn",
        "network-policies",
        "hostport",
    }


def test_crd_validation_refuses_a_typo():
    rs = copy.deepcopy(one(rendered(), "RayService", "interaction"))
    rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplica"] = 3
    with pytest.raises(AssertionError, match="maxReplica"):
        validate_object(rs)


# -- what every pod and container gets --------------------------------------------------------------
@pytest.mark.parametrize("ci", [None, *CI_IDS], ids=["defaults", *CI_IDS])
def test_containers_are_hardened_and_sized(ci):
    manifests = rendered(ci)
    for where, pod, c in containers(manifests):
        res = c.get("resources", {})
        for part in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(res.get(part, {})), (
                f"{where}: resources.{part} needs cpu and memory"
            )
        sc, psc = c.get("securityContext", {}), pod.get("securityContext", {})
        assert sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, f"{where}: runAsNonRoot"
        assert "ALL" in sc.get("capabilities", {}).get("drop", []), f"{where}: capabilities drop ALL"
        assert sc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation"
        assert sc.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem"
        assert (sc.get("seccompProfile") or psc.get("seccompProfile", {})).get("type") == "RuntimeDefault", (
            where
        )
        assert any(m["mountPath"] == "/tmp" for m in c.get("volumeMounts", [])), f"{where}: no writable /tmp"
    for where, meta, spec in pod_templates(manifests):
        assert "checksum/config" in meta.get("annotations", {}), f"{where}: no checksum/config"
        assert "checksum/secret" in meta.get("annotations", {}), f"{where}: no checksum/secret"
        assert spec.get("automountServiceAccountToken") in (False, True), where


@pytest.mark.parametrize("ci", [None, *CI_IDS], ids=["defaults", *CI_IDS])
def test_microturn_containers_get_the_config_file(ci):
    manifests = rendered(ci)
    (cm,) = [
        m for m in objects(manifests, "ConfigMap") if m["metadata"]["name"] == f"{RELEASE}-microturn-config"
    ]
    assert yaml.safe_load(cm["data"]["config.yaml"]) == ((ci_values(ci).get("config") if ci else None) or {})
    for where, spec, c in containers(manifests):
        if not c["image"].startswith("microturn:"):
            continue  # coturn
        assert env_value(c, "MICROTURN_CONFIG") == "/etc/microturn/config.yaml", where
        (mount,) = [m for m in c["volumeMounts"] if m["name"] == "config"]
        assert mount["mountPath"] == "/etc/microturn" and mount["readOnly"], where
        (vol,) = [v for v in spec["volumes"] if v["name"] == "config"]
        assert vol["configMap"]["name"].endswith("-config") or vol["configMap"]["name"].endswith(
            "-bus-setup"
        ), where


@pytest.mark.parametrize("ci", [None, *CI_IDS], ids=["defaults", *CI_IDS])
def test_env_names_are_real_settings(ci):
    known = set(setting_paths())
    for where, _, c in containers(rendered(ci)):
        for name in env_of(c):
            if name.startswith("MICROTURN_") and name != "MICROTURN_CONFIG":
                assert name in known, f"{where}: {name} names no microturn setting"


@pytest.mark.parametrize("ci", [None, *CI_IDS], ids=["defaults", *CI_IDS])
def test_env_references_are_defined_first(ci):
    """$(VAR) in an env value expands only from a variable defined earlier in the same container."""
    for where, _, c in containers(rendered(ci)):
        seen: set[str] = set()
        for e in c.get("env", []):
            for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", e.get("value", "")):
                assert ref in seen, f"{where}: {e['name']} uses $({ref}) before it is defined"
            seen.add(e["name"])
        for arg in c.get("args", []):
            for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", arg):
                assert ref in seen, f"{where}: argument uses $({ref}), not in its env"


@pytest.mark.parametrize("ci", [None, *CI_IDS], ids=["defaults", *CI_IDS])
def test_labels(ci):
    for obj in rendered(ci):
        labels = obj["metadata"].get("labels", {})
        assert set(STANDARD_LABELS) <= set(labels), (
            f"{name_of(obj)}: missing {set(STANDARD_LABELS) - set(labels)}"
        )
        assert labels["app.kubernetes.io/part-of"] == "microturn"
        assert component(obj) in COMPONENTS | {None}, name_of(obj)
        assert len(obj["metadata"]["name"]) <= 63, name_of(obj)
    for where, meta, _ in pod_templates(rendered(ci)):
        assert meta["labels"]["app.kubernetes.io/component"] in COMPONENTS, where


def test_names_follow_the_overrides():
    names = {name_of(m) for m in rendered(None, (("fullnameOverride", "voice"),))}
    assert {
        "Deployment/voice-edge",
        "RayService/voice-interaction",
        "Service/voice-interaction-grpc",
    } <= names
    long = "x" * 60
    names = {m["metadata"]["name"] for m in rendered(None, (("nameOverride", long),))}
    assert all(len(n) <= 63 for n in names)
    # The release name contains the chart name: no repetition.
    out = helm("template", "microturn", str(CHART), "-n", NAMESPACE, "-s", "templates/edge.yaml").stdout
    assert "name: microturn-edge" in out


# -- one number per port -----------------------------------------------------------------------------
PORT_SETS = (
    ("edge.port", "8181"),
    ("interaction.grpcPort", "9901"),
    ("interaction.httpPort", "8801"),
    ("tools.grpcPort", "9191"),
    ("background.metricsPort", "9491"),
    ("tools.metricsPort", "9492"),
)


@pytest.mark.parametrize("sets", [(), PORT_SETS], ids=["defaults", "custom-ports"])
def test_each_port_is_one_number(sets):
    manifests = rendered(None, sets)
    v = chart_values()
    for k, val in sets:
        section, key = k.split(".")
        v[section][key] = int(val)

    def port_of(c: dict, name: str) -> int:
        (p,) = [p["containerPort"] for p in c["ports"] if p.get("name") == name]
        return p

    def service(name_suffix: str) -> dict:
        (svc,) = [s for s in objects(manifests, "Service") if s["metadata"]["name"].endswith(name_suffix)]
        return svc

    def svc_port(svc: dict, name: str) -> int:
        (p,) = [p for p in svc["spec"]["ports"] if p["name"] == name]
        assert p["port"] == p["targetPort"], f"{svc['metadata']['name']}: port != targetPort"
        return p["port"]

    edge = container_named(manifests, "/edge")
    e = v["edge"]["port"]
    assert (
        port_of(edge, "http")
        == svc_port(service("-edge"), "http")
        == int(env_value(edge, "MICROTURN_EDGE__PORT"))
        == e
    )
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert edge[probe]["httpGet"] == {"path": "/healthz", "port": "http"}

    g, h = v["interaction"]["grpcPort"], v["interaction"]["httpPort"]
    grpc_svc = service("-interaction-grpc")
    target = env_value(edge, "MICROTURN_EDGE__INTERACTION_TARGET")
    assert target == f"{grpc_svc['metadata']['name']}.{NAMESPACE}.svc.cluster.local:{g}"
    assert svc_port(grpc_svc, "grpc") == g
    serve = yaml.safe_load(one(manifests, "RayService", "interaction")["spec"]["serveConfigV2"])
    assert serve["grpc_options"]["port"] == g and serve["http_options"]["port"] == h
    for suffix in ("/ray-head", "/ray-worker"):
        c = container_named(manifests, suffix)
        assert port_of(c, "grpc") == int(env_value(c, "MICROTURN_INTERACTION__GRPC_PORT")) == g
        assert port_of(c, "serve") == int(env_value(c, "MICROTURN_INTERACTION__HTTP_PORT")) == h

    for svc, service_suffix in (("background", "-background-metrics"), ("tools", "-tools")):
        c = container_named(manifests, f"/{svc}")
        m = v[svc]["metricsPort"]
        assert port_of(c, "metrics") == svc_port(service(service_suffix), "metrics") == m
        assert int(env_value(c, "MICROTURN_TELEMETRY__METRICS_PORT")) == m
        assert env_value(c, "MICROTURN_TELEMETRY__METRICS_HOST") == "0.0.0.0"
        assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    tools = container_named(manifests, "/tools")
    t = v["tools"]["grpcPort"]
    assert (
        port_of(tools, "grpc")
        == svc_port(service("-tools"), "grpc")
        == int(env_value(tools, "MICROTURN_TOOLS__GRPC_PORT"))
        == t
    )


def test_service_commands_and_wiring():
    manifests = rendered()
    edge = container_named(manifests, "/edge")
    assert edge["command"] == ["microturn", "edge"]
    assert env_value(edge, "MICROTURN_EDGE__HOST") == "0.0.0.0"
    token = env_of(edge)["MICROTURN_EDGE__TOKEN_SECRET"]["valueFrom"]["secretKeyRef"]
    assert token == {"name": f"{RELEASE}-microturn-session-token", "key": "token"}
    for svc in ("background", "tools"):
        c = container_named(manifests, f"/{svc}")
        assert c["command"] == ["microturn", svc]
        env = env_of(c)
        assert env["MICROTURN_BUS__MANAGE_TOPOLOGY"]["value"] == "false"
        assert env["MICROTURN_NATS__URL"]["value"] == f"nats://nats.{NAMESPACE}.svc.cluster.local:4222"
        assert env["MICROTURN_NATS__USER"]["value"] == svc
        ref = env["MICROTURN_NATS__PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": f"{RELEASE}-microturn-nats-credentials", "key": svc}
    assert env_value(container_named(manifests, "/tools"), "MICROTURN_TOOLS__GRPC_HOST") == "0.0.0.0"
    worker = env_of(container_named(manifests, "/ray-worker"))
    assert worker["MICROTURN_NATS__USER"]["value"] == "interaction"
    assert "MICROTURN_NATS__PASSWORD" not in env_of(container_named(manifests, "/ray-head"))
    # no NATS credentials without auth
    manifests = rendered(None, (("nats.auth.enabled", "false"),))
    for where, _, c in containers(manifests):
        assert "MICROTURN_NATS__PASSWORD" not in env_of(c), where
    assert not [s for s in objects(manifests, "Secret") if "nats" in s["metadata"]["name"]]


# -- the interaction service -------------------------------------------------------------------------
def test_serve_yaml_is_the_package_copy():
    assert (CHART / "files" / "serve.yaml").read_bytes() == serve_config.TEMPLATE.read_bytes()


def test_generated_chart_files_are_current():
    """values.schema.json's settings $defs, files/settings-defaults.yaml and charts/nats-values.yaml
    follow the code (microturn.deploy.chartfiles)."""
    stale = [p for p, text in chartfiles.generated(CHART.parent).items() if p.read_text() != text]
    assert not stale, f"stale: {stale}; run `make chart-generate`"


def effective_overrides(ci: str | None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The settings a replica ends up with: the values' config plus the chart's wiring."""
    v = chart_values(ci, extra)
    cfg = copy.deepcopy(v.get("config") or {})
    i = v["interaction"]
    nats = v["nats"]
    nats_ns = nats["namespace"] or NAMESPACE
    url = nats["url"] or f"nats://{nats['host']}.{nats_ns}.svc.cluster.local:{nats['port']}"
    cfg.setdefault("nats", {})["url"] = url
    if nats["auth"]["enabled"]:  # the worker's env: its user (kept by render) and password (dropped)
        cfg["nats"].update(user="interaction", password="from-the-secret")
    cfg.setdefault("bus", {})["manage_topology"] = False
    a, drain = i["serve"]["autoscaling"], i["serve"]["drain"]
    cfg.setdefault("interaction", {}).update(
        host="0.0.0.0",
        grpc_port=i["grpcPort"],
        http_port=i["httpPort"],
        replicas=i["serve"]["replicas"],
        num_cpus=i["serve"]["numCpus"],
        num_gpus=i["gpu"]["perReplica"] if i["gpu"]["enabled"] else 0,
        drain_policy=drain["policy"],
        drain_wait_s=drain["waitSeconds"],
        drain_timeout_s=drain["timeoutSeconds"],
    )
    cfg["interaction"]["autoscaling"] = {
        **cfg["interaction"].get("autoscaling", {}),
        **{setting: a[value] for setting, value in SERVE_AUTOSCALING_VALUES.items()},
    }
    return cfg


# interaction.autoscaling.<setting> <- interaction.serve.autoscaling.<value>
SERVE_AUTOSCALING_VALUES = {
    "enabled": "enabled",
    "min_replicas": "minReplicas",
    "max_replicas": "maxReplicas",
    "target_sessions": "targetSessions",
    "target_tick_utilisation": "targetTickUtilisation",
    "headroom_sessions": "headroomSessions",
    "upscale_delay_s": "upscaleDelaySeconds",
    "downscale_delay_s": "downscaleDelaySeconds",
    "look_back_period_s": "lookBackPeriodSeconds",
    "metrics_interval_s": "metricsIntervalSeconds",
}


@pytest.mark.parametrize("ci", [None, *CI_IDS], ids=["defaults", *CI_IDS])
def test_serve_config_is_what_render_makes(ci, monkeypatch):
    for name in list(os.environ):
        if name.startswith("MICROTURN_"):
            monkeypatch.delenv(name)
    settings = load_settings(overrides=effective_overrides(ci))
    chart = yaml.safe_load(one(rendered(ci), "RayService", "interaction")["spec"]["serveConfigV2"])
    assert chart == serve_config.render(settings)
    text = one(rendered(ci), "RayService", "interaction")["spec"]["serveConfigV2"].lower()
    assert "password" not in text and "token" not in text


def test_serve_config_sizes_admission_by_session_slots():
    serve = yaml.safe_load(one(rendered("gpu"), "RayService", "interaction")["spec"]["serveConfigV2"])
    (dep,) = serve["applications"][0]["deployments"]
    assert dep["max_ongoing_requests"] == dep["max_queued_requests"] == 2 * 64
    assert dep["ray_actor_options"] == {"num_cpus": 1, "num_gpus": 0.5}
    serve = yaml.safe_load(
        one(rendered("fixed-replicas"), "RayService", "interaction")["spec"]["serveConfigV2"]
    )
    (dep,) = serve["applications"][0]["deployments"]
    assert dep["num_replicas"] == 3 and "autoscaling_config" not in dep


@pytest.mark.parametrize("ci", ["gpu", "cpu-only", "fixed-replicas"])
def test_rayservice(ci):
    rs = one(rendered(ci), "RayService", "interaction")
    spec = rs["spec"]
    v = chart_values(ci)["interaction"]
    assert rs["apiVersion"] == "ray.io/v1"
    assert spec["upgradeStrategy"] == {"type": "None"}
    assert spec["excludeHeadPodFromServeSvc"] is True
    rc = spec["rayClusterConfig"]
    assert rc["rayVersion"] == "2.60.0" == importlib.metadata.version("ray")
    head = rc["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0" and head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    head_ports = {p["name"]: p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
    assert head_ports["serve"] == v["httpPort"]  # the port KubeRay's serve Service and health checks use
    (group,) = rc["workerGroupSpecs"]
    worker = group["template"]["spec"]["containers"][0]
    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    gpu = worker["resources"]["limits"].get("nvidia.com/gpu")
    # The Ray autoscaler sidecar on the head (and its token) exactly when interaction.autoscaling is on.
    assert rc["enableInTreeAutoscaling"] is v["autoscaling"]["enabled"]
    assert head["template"]["spec"]["automountServiceAccountToken"] is v["autoscaling"]["enabled"]
    assert rc["autoscalerOptions"]["idleTimeoutSeconds"] == v["autoscaling"]["options"]["idleTimeoutSeconds"]
    assert (group["minReplicas"], group["maxReplicas"]) == (
        v["worker"]["minReplicas"],
        v["worker"]["maxReplicas"],
    )
    if ci == "gpu":
        assert rc["enableInTreeAutoscaling"] is True
        assert rc["authOptions"] == {"mode": "token"}
        assert gpu == v["gpu"]["perWorker"] == int(group["rayStartParams"]["num-gpus"])
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in group["template"][
            "spec"
        ]["tolerations"]
        assert group["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H200"}
    elif ci == "cpu-only":
        assert (
            gpu is None
            and group["groupName"] == "cpu-workers"
            and "tolerations" not in group["template"]["spec"]
        )
        assert rc["enableInTreeAutoscaling"] is False
    # Ray's writable paths on a read-only root filesystem
    mounts = {m["mountPath"] for m in worker["volumeMounts"]}
    assert {"/tmp", "/dev/shm", "/etc/microturn"} <= mounts
    assert worker["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    # Kubernetes leaves a deleted worker pod its preStop sleep plus Serve's drain of its replicas.
    (dep,) = yaml.safe_load(spec["serveConfigV2"])["applications"][0]["deployments"]
    assert (
        group["template"]["spec"]["terminationGracePeriodSeconds"]
        > int(worker["lifecycle"]["preStop"]["exec"]["command"][1]) + dep["graceful_shutdown_timeout_s"]
    )


def test_grpc_service_selects_serving_workers():
    manifests = rendered()
    svc = next(
        s for s in objects(manifests, "Service") if s["metadata"]["name"].endswith("-interaction-grpc")
    )
    sel = svc["spec"]["selector"]
    assert sel["ray.io/serve"] == "true" and sel["microturn.io/ray-node"] == "worker"
    worker_labels = pod_templates([one(manifests, "RayService", "interaction")])[1][1]["labels"]
    assert {k: v for k, v in sel.items() if k != "ray.io/serve"}.items() <= worker_labels.items()


# -- scaling of background and tools -----------------------------------------------------------------
@pytest.mark.parametrize("ci", [None, *CI_IDS], ids=["defaults", *CI_IDS])
def test_one_scaler_per_deployment(ci):
    manifests = rendered(ci)
    v = chart_values(ci)
    scaled = [s["spec"]["scaleTargetRef"]["name"] for s in objects(manifests, "ScaledObject")]
    hpas = [h["spec"]["scaleTargetRef"]["name"] for h in objects(manifests, "HorizontalPodAutoscaler")]
    assert not set(scaled) & set(hpas) and len(set(scaled)) == len(scaled) and len(set(hpas)) == len(hpas)
    deployments = {d["metadata"]["name"] for d in objects(manifests, "Deployment")}
    assert set(scaled + hpas) <= deployments, "a scaler targets no Deployment of this chart"
    edge = one(manifests, "Deployment", "edge")
    if v["edge"]["autoscaling"]["enabled"]:
        assert edge["metadata"]["name"] in (scaled if v["keda"]["enabled"] else hpas)
        assert "replicas" not in edge["spec"]
    else:
        assert edge["metadata"]["name"] not in scaled + hpas
        assert edge["spec"]["replicas"] == v["edge"]["replicas"]
    for svc in ("background", "tools"):
        dep = one(manifests, "Deployment", svc)
        name = dep["metadata"]["name"]
        if v["keda"]["enabled"]:
            assert name in scaled and "replicas" not in dep["spec"]
            so = one(manifests, "ScaledObject", svc)
            (trigger,) = so["spec"]["triggers"]
            meta = trigger["metadata"]
            assert trigger["type"] == "nats-jetstream"
            assert (meta["stream"], meta["consumer"]) == (CONSUMERS[svc].stream, CONSUMERS[svc].name)
            assert meta["account"] == "$G"
            assert so["spec"]["minReplicaCount"] == v[svc]["keda"]["minReplicas"]
            assert so["spec"]["maxReplicaCount"] == v[svc]["keda"]["maxReplicas"]
            assert meta["lagThreshold"] == str(v[svc]["keda"]["lagThreshold"])
        elif v[svc]["autoscaling"]["enabled"]:
            assert name in hpas and "replicas" not in dep["spec"]
        else:
            assert name not in scaled + hpas and dep["spec"]["replicas"] == v[svc]["replicas"]


def test_keda_monitoring_endpoint():
    meta = one(rendered(), "ScaledObject", "background")["spec"]["triggers"][0]["metadata"]
    assert meta["natsServerMonitoringEndpoint"] == f"nats-headless.{NAMESPACE}.svc.cluster.local:8222"
    manifests = rendered("external-nats")
    (auth,) = objects(manifests, "TriggerAuthentication")
    assert auth["spec"]["secretTargetRef"][0]["parameter"] == "natsServerMonitoringEndpoint"
    trigger = one(manifests, "ScaledObject", "tools")["spec"]["triggers"][0]
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    assert "natsServerMonitoringEndpoint" not in trigger["metadata"]


def test_keda_off_renders_an_hpa_and_fixed_replicas():
    manifests = rendered("keda-off")
    assert not objects(manifests, "ScaledObject")
    hpa = one(manifests, "HorizontalPodAutoscaler", "background")
    assert hpa["spec"]["minReplicas"] == 2 and hpa["spec"]["maxReplicas"] == 6
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert one(manifests, "Deployment", "tools")["spec"]["replicas"] == 2


# -- hooks: bus setup, secrets, tests -----------------------------------------------------------------
def hook_weight(obj: dict) -> int:
    return int(obj["metadata"]["annotations"].get("helm.sh/hook-weight", "0"))


@pytest.mark.parametrize("ci", [None, "external-nats"], ids=["generated-secret", "existing-secret"])
def test_bus_setup_hook_has_everything_it_needs_first(ci):
    manifests = rendered(ci)
    job = one(manifests, "Job", "bus-setup")
    ann = job["metadata"]["annotations"]
    assert ann["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert set(ann["helm.sh/hook-delete-policy"].split(",")) == {"before-hook-creation", "hook-succeeded"}
    spec = job["spec"]
    assert spec["backoffLimit"] >= 1 and spec["activeDeadlineSeconds"] > 0
    pod = spec["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"][:3] == ["microturn", "bus", "setup"]
    env = env_of(c)
    assert env["MICROTURN_NATS__USER"]["value"] == "setup"
    secret_ref = env["MICROTURN_NATS__PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert secret_ref["key"] == "setup"
    by_name = {name_of(m): m for m in manifests}
    needs = [f"ServiceAccount/{pod['serviceAccountName']}"]
    needs += [f"ConfigMap/{v['configMap']['name']}" for v in pod["volumes"] if "configMap" in v]
    for dep in needs:
        obj = by_name[dep]
        assert is_hook(obj) and "pre-install" in obj["metadata"]["annotations"]["helm.sh/hook"], dep
        assert hook_weight(obj) < hook_weight(job), dep
    secret = by_name.get(f"Secret/{secret_ref['name']}")
    if ci == "external-nats":
        assert secret is None and secret_ref["name"] == "microturn-nats"
    else:
        assert is_hook(secret) and hook_weight(secret) < hook_weight(job)
        assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert set(secret["data"]) == set(USERS)


def test_session_token_secret():
    manifests = rendered()
    (secret,) = [s for s in objects(manifests, "Secret") if s["metadata"]["name"].endswith("-session-token")]
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep" and not is_hook(secret)
    assert len(secret["data"]["token"]) > 40
    manifests = rendered("external-nats")
    assert not [s for s in objects(manifests, "Secret") if s["metadata"]["name"].endswith("-session-token")]
    ref = env_of(container_named(manifests, "/edge"))["MICROTURN_EDGE__TOKEN_SECRET"]["valueFrom"][
        "secretKeyRef"
    ]
    assert ref == {"name": "microturn-session-token", "key": "hmac"}


def test_test_hooks_render_unless_skipped():
    pods = [
        p for p in objects(rendered(), "Pod") if p["metadata"]["annotations"].get("helm.sh/hook") == "test"
    ]
    assert {p["metadata"]["name"] for p in pods} == {
        f"{RELEASE}-microturn-test-healthz",
        f"{RELEASE}-microturn-test-call",
        f"{RELEASE}-microturn-test-webrtc",
    }
    webrtc = next(p for p in pods if p["metadata"]["name"].endswith("-webrtc"))
    assert webrtc["spec"]["containers"][0]["command"][:3] == ["python", "-m", "loadtest.smoke"]
    call = next(p for p in pods if p["metadata"]["name"].endswith("-call"))
    cmd = call["spec"]["containers"][0]["command"]
    assert cmd[:2] == ["python", "/etc/microturn-tests/synthetic_call.py"]
    assert cmd[2] == f"http://{RELEASE}-microturn-edge.{NAMESPACE}.svc.cluster.local:8080"
    assert not objects(rendered(None, (), ("--skip-tests",)), "Pod")
    scripts = next(
        m for m in objects(rendered(), "ConfigMap") if m["metadata"]["name"].endswith("-test-scripts")
    )
    for script in ("healthz.py", "synthetic_call.py"):
        assert scripts["data"][script] == (CHART / "files" / "tests" / script).read_text()
        compile(scripts["data"][script], script, "exec")


def test_install_dry_run_prints_notes():
    out = helm("install", *template_args(), "--dry-run=client").stdout
    notes = out[out.index("NOTES:") :]
    assert f"service/{RELEASE}-microturn-edge" in notes
    assert f"helm test {RELEASE}" in notes
    assert "kind: Pod" in out  # the test hooks are in the dry run's hooks


@pytest.mark.parametrize(
    ("sets", "warning"),
    [
        ((("edge.media.mode", "hostPort"),), "advertisedAddress is empty"),
        ((("metrics.serviceMonitor.enabled", "true"),), "does not serve monitoring.coreos.com/v1"),
        ((("config.edge.max_sessions", "500"),), "calls beyond 100 on one edge fail"),
    ],
)
def test_notes_warn(sets, warning):
    args = template_args([], dict(sets))
    out = helm("install", *args, "--dry-run=client").stdout
    assert warning in out[out.index("NOTES:") :]


# -- media -------------------------------------------------------------------------------------------
def test_media_host_network():
    manifests = rendered()
    pod = one(manifests, "Deployment", "edge")["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    edge = container_named(manifests, "/edge")
    assert (
        env_value(edge, "MICROTURN_EDGE__ICE_PORT_MIN"),
        env_value(edge, "MICROTURN_EDGE__ICE_PORT_MAX"),
    ) == ("40000", "40099")
    assert json.loads(env_value(edge, "MICROTURN_EDGE__ICE_HOST_ADDRESSES")) == ["$(NODE_IP)"]
    assert env_of(edge)["NODE_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    assert edge["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "40"]
    assert pod["terminationGracePeriodSeconds"] == 60


def test_media_host_port():
    manifests = rendered("hostport")
    pod = one(manifests, "Deployment", "edge")["spec"]["template"]["spec"]
    assert "hostNetwork" not in pod
    edge = container_named(manifests, "/edge")
    udp = [p for p in edge["ports"] if p["protocol"] == "UDP"]
    assert [p["hostPort"] for p in udp] == [p["containerPort"] for p in udp] == list(range(40000, 40020))
    assert env_value(edge, "MICROTURN_EDGE__ICE_ADVERTISED_ADDRESS") == "203.0.113.10"
    servers = json.loads(env_value(edge, "MICROTURN_EDGE__ICE_SERVERS"))
    assert servers[0] == {"urls": ["stun:stun.example.com:3478"]}
    assert servers[1]["credential"] == "$(MT_ICE_CREDENTIAL_1)" and servers[1]["username"] == "microturn"
    assert env_of(edge)["MT_ICE_CREDENTIAL_1"]["valueFrom"]["secretKeyRef"] == {
        "name": "turn-credentials",
        "key": "password",
    }
    pdb = one(manifests, "PodDisruptionBudget", "edge")
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": pdb["spec"]["selector"]}


def test_media_turn():
    manifests = rendered("turn")
    pod = one(manifests, "Deployment", "edge")["spec"]["template"]["spec"]
    edge = container_named(manifests, "/edge")
    assert "hostNetwork" not in pod and not [p for p in edge["ports"] if p.get("hostPort")]
    servers = json.loads(env_value(edge, "MICROTURN_EDGE__ICE_SERVERS"))
    # No username: the edge derives per-session credentials from coturn's shared secret.
    assert servers == [
        {"urls": ["turn:turn.example.com:3478?transport=udp", "turn:turn.example.com:3478?transport=tcp"]}
    ]
    turn_secret = f"{RELEASE}-microturn-turn"
    ref = env_of(edge)["MICROTURN_EDGE__TURN_SHARED_SECRET"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": turn_secret, "key": "shared-secret"}
    coturn = one(manifests, "Deployment", "turn")
    (c,) = coturn["spec"]["template"]["spec"]["containers"]
    assert c["image"].startswith("coturn/coturn:") and "--external-ip=203.0.113.20" in c["args"]
    assert {"--use-auth-secret", "--static-auth-secret=$(TURN_SECRET)"} <= set(c["args"])
    assert not [a for a in c["args"] if a.startswith(("--user=", "--lt-cred-mech"))]
    assert {p["protocol"] for p in one(manifests, "Service", "turn")["spec"]["ports"]} == {"UDP", "TCP"}
    assert [s for s in objects(manifests, "Secret") if s["metadata"]["name"] == turn_secret]


# -- TLS inside the cluster ------------------------------------------------------------------------
def _mounted(manifests, suffix: str) -> dict[str, str]:
    """mountPath -> Secret name of every Secret volume the container mounts."""
    (spec, c) = next((spec, c) for where, spec, c in containers(manifests) if where.endswith(suffix))
    secrets_ = {v["name"]: v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}
    return {m["mountPath"]: secrets_[m["name"]] for m in c.get("volumeMounts", []) if m["name"] in secrets_}


def test_tls_for_nats_and_the_tools_grpc_api():
    manifests = rendered("tls")
    nats_clients = ["/background", "/tools", "/bus-setup", "/ray-worker"]
    for suffix in nats_clients:
        env = {k: v.get("value") for k, v in env_of(container_named(manifests, suffix)).items()}
        assert env["MICROTURN_NATS__TLS_CA"] == "/etc/microturn-tls/nats/ca.crt", suffix
        assert env["MICROTURN_NATS__TLS_CERT"].startswith("/etc/microturn-tls/nats/"), suffix
        assert env["MICROTURN_NATS__TLS_HANDSHAKE_FIRST"] == "true", suffix
        assert _mounted(manifests, suffix)["/etc/microturn-tls/nats"] == "microturn-nats-client-tls", suffix
    tools = {k: v.get("value") for k, v in env_of(container_named(manifests, "/tools")).items()}
    assert tools["MICROTURN_TOOLS__GRPC_TLS_CLIENT_CA"] == "/etc/microturn-tls/tools-grpc/ca.crt"
    assert _mounted(manifests, "/tools")["/etc/microturn-tls/tools-grpc"] == "microturn-tools-grpc-tls"
    assert "/etc/microturn-tls/tools-grpc" not in _mounted(manifests, "/background")
    # Off by default: no TLS variables, no secret volumes.
    plain = rendered()
    for suffix in nats_clients:
        assert not [k for k in env_of(container_named(plain, suffix)) if "TLS" in k], suffix
    # On without a Secret: a clear error.
    out = helm("template", *template_args([], {"nats.tls.enabled": "true"}), check=False)
    assert out.returncode != 0 and "nats.tls.secretName is required" in out.stderr


# -- network policies and monitors --------------------------------------------------------------------
def test_network_policies():
    manifests = rendered("network-policies")
    policies = {
        component(p): p
        for p in objects(manifests, "NetworkPolicy")
        if not p["metadata"]["name"].endswith("-interaction-autoscaler")  # test_chart_autoscaling.py
    }
    assert set(policies) == {"edge", "interaction", "background", "tools", "bus-setup", "rollout", "turn"}
    assert is_hook(policies["bus-setup"])
    for comp, p in policies.items():
        egress = p["spec"]["egress"]
        assert any(any(port["port"] == 53 for port in r.get("ports", [])) for r in egress), (
            f"{comp}: no DNS egress"
        )
    for comp in ("interaction", "background", "tools", "bus-setup", "rollout"):
        nats = [
            r
            for r in policies[comp]["spec"]["egress"]
            if any(pt.get("port") == 4222 for pt in r.get("ports", []))
        ]
        assert nats and nats[0]["to"][0]["namespaceSelector"]["matchLabels"] == {
            "kubernetes.io/metadata.name": "messaging"
        }
    grpc_in = [
        r
        for r in policies["interaction"]["spec"]["ingress"]
        if {"protocol": "TCP", "port": 9000} in r.get("ports", [])
    ]
    (rule,) = grpc_in
    peers = [
        p.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component")
        for p in rule["from"]
    ]
    assert {"edge", "test", "rollout"} <= set(peers) and {"ipBlock": {"cidr": "10.0.0.0/16"}} in rule["from"]
    # no hop from background to tools except NATS: tools' gRPC port only from helm tests
    tools_in = policies["tools"]["spec"]["ingress"]
    grpc_rule = next(r for r in tools_in if {"protocol": "TCP", "port": 9100} in r["ports"])
    assert [p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in grpc_rule["from"]] == [
        "test"
    ]
    assert not objects(rendered(), "NetworkPolicy")


def test_network_policies_need_node_cidrs_with_host_network():
    proc = helm("template", *template_args([], {"networkPolicy.enabled": "true"}), check=False)
    assert proc.returncode != 0 and "networkPolicy.nodeCIDRs" in proc.stderr


def test_monitors_are_gated_on_the_api():
    on = (("metrics.serviceMonitor.enabled", "true"),)
    assert not objects(rendered(None, on), "ServiceMonitor")
    with_api = rendered(None, on, ("--api-versions", "monitoring.coreos.com/v1"))
    assert {component(m) for m in objects(with_api, "ServiceMonitor")} == {"edge", "background", "tools"}
    assert len(objects(with_api, "PodMonitor")) == 1
    forced = rendered("gpu")
    assert all(m["metadata"]["labels"]["release"] == "prometheus" for m in objects(forced, "ServiceMonitor"))


# -- bad values fail with a message naming them ------------------------------------------------------
SETTINGS_SCHEMA_FILLED = bool(
    json.loads((CHART / "values.schema.json").read_text())["$defs"]["MicroturnSettings"].get("properties")
)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"bogus": 1}, "additional properties 'bogus' not allowed"),
        ({"edge": {"prot": 8080}}, "additional properties 'prot' not allowed"),
        ({"edge": {"port": "8080"}}, "/edge/port"),
        ({"edge": {"port": 70000}}, "/edge/port"),
        ({"edge": {"media": {"mode": "udp"}}}, "/edge/media/mode"),
        ({"interaction": {"upgradeStrategy": "Rolling"}}, "/interaction/upgradeStrategy"),
        ({"edge": {"resources": {"requests": {"memory": None}}}}, "missing property 'memory'"),
        (
            {"edge": {"media": {"mode": "hostPort", "udpPortMin": 40000, "udpPortMax": 40500}}},
            "at most 200 ports",
        ),
        ({"edge": {"media": {"udpPortMin": 41000, "udpPortMax": 40000}}}, "edge.media.udpPortMax"),
        ({"edge": {"media": {"mode": "turn"}}}, "needs edge.media.iceServers"),
        ({"interaction": {"grpcPort": 8265}}, "collides with a Ray head port"),
        ({"background": {"keda": {"minReplicas": 5, "maxReplicas": 2}}}, "background.keda.minReplicas"),
        pytest.param(
            {"config": {"edge": {"max_sesions": 5}}},
            "max_sesions",
            marks=pytest.mark.skipif(
                not SETTINGS_SCHEMA_FILLED,
                reason="needs values.schema.json $defs.MicroturnSettings generated from the pydantic settings",
            ),
            id="bad-microturn-setting",
        ),
    ],
    ids=lambda v: None if isinstance(v, str) else json.dumps(v)[:60],
)
def test_bad_values_fail_naming_them(values, message, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(values))
    proc = helm("template", *template_args([path]), check=False)
    assert proc.returncode != 0, f"helm template accepted {values}"
    assert message in proc.stderr, proc.stderr


# -- the chart's own files ----------------------------------------------------------------------------
def test_chart_metadata():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert (chart["apiVersion"], chart["name"], chart["version"], chart["appVersion"]) == (
        "v2",
        "microturn",
        "0.1.0",
        "0.1.0",
    )
    assert chart["kubeVersion"] == ">=1.29.0-0" and chart["description"] and "dependencies" not in chart
    assert (CHART / ".helmignore").is_file()


def _closed(schema: Any, path: str = "") -> list[str]:
    open_objects = []
    if isinstance(schema, dict):
        if "properties" in schema and schema.get("additionalProperties") is not False:
            open_objects.append(path or "/")
        for k, v in schema.items():
            if k != "$defs":
                open_objects += _closed(v, f"{path}/{k}")
    elif isinstance(schema, list):
        for n, v in enumerate(schema):
            open_objects += _closed(v, f"{path}/{n}")
    return open_objects


def test_values_schema():
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["properties"]["config"] == {"$ref": "#/$defs/MicroturnSettings"}
    assert "MicroturnSettings" in schema["$defs"]
    assert not _closed(schema), "objects with properties but no additionalProperties: false"
    jsonschema.Draft202012Validator.check_schema(schema)
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(node: Any, sch: dict, path: str) -> None:  # every value in values.yaml is in the schema
        if isinstance(node, dict) and "properties" in sch:
            for k, v in node.items():
                assert k in sch["properties"], f"{path}.{k} is not in values.schema.json"
                walk(v, sch["properties"][k], f"{path}.{k}")

    walk(values, schema, "")


def undocumented_values(text: str) -> list[str]:
    """Keys of a values file with no comment right above them, unless they are a mapping whose
    keys all have one; what lies under a documented key is part of its documented value."""
    lines = text.splitlines()
    key = re.compile(r"^(\s*)([A-Za-z0-9_.$/-]+):(\s|$)")
    entries = []  # (line number, indent, name, documented)
    for n, line in enumerate(lines):
        m = key.match(line)
        if m:
            prev = next((lines[j] for j in range(n - 1, -1, -1) if lines[j].strip()), "")
            entries.append((n, len(m.group(1)), m.group(2), prev.strip().startswith("#")))
    missing = []
    for idx, (n, indent, name, documented) in enumerate(entries):
        if documented:
            continue
        ancestors, level = [], indent
        for e in reversed(entries[:idx]):
            if e[1] < level:
                ancestors.append(e)
                level = e[1]
        if any(a[3] for a in ancestors):
            continue  # inside a documented value
        after = entries[idx + 1 :]
        has_children = bool(after) and after[0][1] > indent
        if not has_children:
            missing.append(f"line {n + 1}: {name}")
    return missing


def test_undocumented_values_are_found():
    text = "# -- doc\na: 1\nb:\n  # -- doc\n  c: 2\n  d: 3\n# -- doc\ne:\n  f: 4\ng: 5\n"
    assert undocumented_values(text) == ["line 6: d", "line 10: g"]


def test_the_docs_reference_covers_every_value():
    """docs/KUBERNETES.md's table (generated) names every value, or the documented value it is part of."""
    text = (CHART / "values.yaml").read_text()
    documented = {path for path, _ in chartfiles.documented_values(text)}
    reference = (ROOT / "docs" / "KUBERNETES.md").read_text()
    assert all(f"| `{path}` |" in reference for path in documented)

    def leaves(node: Any, path: str) -> list[str]:
        if isinstance(node, dict) and node:
            return [leaf for k, v in node.items() for leaf in leaves(v, f"{path}.{k}" if path else k)]
        return [path]

    uncovered = [
        leaf
        for leaf in leaves(yaml.safe_load(text), "")
        if not any(leaf == d or leaf.startswith(d + ".") for d in documented)
    ]
    assert not uncovered, f"values missing from the reference: {uncovered}"


def test_documented_values_parser():
    text = "# -- top\na: 1\nb:\n  # -- two\n  # lines\n  c: 2\n  d: 3\n# -- map\ne:\n  f: 4\n"
    assert chartfiles.documented_values(text) == [("a", "top"), ("b.c", "two lines"), ("e", "map")]


def test_every_value_is_documented():
    missing = undocumented_values((CHART / "values.yaml").read_text())
    assert not missing, "values without a comment: " + ", ".join(missing)


NATS_VALUES = ROOT / "charts" / "nats-values.yaml"


# -- the NATS release's values --------------------------------------------------------------------------
def test_nats_values_declare_the_users_and_permissions():
    doc = yaml.safe_load(NATS_VALUES.read_text())
    assert doc["config"]["jetstream"]["enabled"] is True
    users = doc["config"]["merge"]["authorization"]["users"]
    assert [u["user"] for u in users] == list(USERS)
    expected = permissions_data(manage_topology=False)
    env = doc["container"]["env"]
    # the Secret the microturn chart generates for a release named "microturn"
    out = helm("template", "microturn", str(CHART), "-n", NAMESPACE, "-s", "templates/secrets.yaml").stdout
    secret_name = next(
        d["metadata"]["name"]
        for d in yaml.safe_load_all(out)
        if d and d["metadata"]["name"].endswith("nats-credentials")
    )
    assert secret_name == NATS_SECRET
    for u in users:
        name = u["user"]
        # nats-server reads an empty allow list as "anything": nothing allowed is rendered deny-all
        assert {k: sorted(v.get("allow", [])) for k, v in u["permissions"].items()} == expected[name], name
        assert all(v == {"deny": [">"]} for k, v in u["permissions"].items() if not expected[name][k]), name
        var = password_env_var(name)
        assert u["password"] == f"<< ${var} >>", name
        assert env[var] == {"valueFrom": {"secretKeyRef": {"name": secret_name, "key": name}}}, name


def test_no_stray_files():
    """Everything under charts/microturn is a chart file helm uses (no editor or test leftovers)."""
    allowed = re.compile(
        r"^(Chart\.yaml|values\.yaml|values\.schema\.json|\.helmignore|templates/.+|files/.+|ci/[^/]+\.yaml"
        r"|crds/[^/]+\.yaml)$"
    )
    stray = [
        str(p.relative_to(CHART))
        for p in CHART.rglob("*")
        if p.is_file() and not allowed.match(str(p.relative_to(CHART))) and "__pycache__" not in p.parts
    ]
    assert not stray, stray
    assert Path(CHART / "files" / "serve.yaml").is_file()
