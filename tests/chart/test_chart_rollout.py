"""Session-aware model rollouts in the chart (issue 16): the CRDs, the operator and what it touches.

- charts/microturn/crds: InteractionRollout (microturn.dev/v1alpha1) and kopf's KopfPeering are valid
  CRDs; a sample rollout validates against the schema the way the API server would check it, bad ones
  are refused, and the schema's fields are exactly those microturn.rollout.kube reads;
- the operator Deployment (`microturn rollout operator`): its settings, NATS user, probes on kopf's
  liveness endpoint, its least-privilege Role, its KopfPeering, its NetworkPolicy;
- the routing ConfigMap (the initial table, as RoutingTable reads it) and the edges' mount of it;
- the stable version's label on the chart's RayService pods and its gRPC Service's selector, checked
  against a candidate made by microturn.rollout.kube from the rendered RayService;
- rollout.operator.enabled=false renders none of it.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from microturn.config import load_settings
from microturn.rollout import kube
from microturn.rollout.analysis import default_thresholds
from microturn.rollout.routing import RoutingTable

from .chart_contract import containers as contract_containers
from .chart_contract import write_config_files
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
from .test_chart_render import (
    K8S_VERSIONS,
    chart_values,
    component,
    container_named,
    crd_validator,
    env_of,
    env_value,
    name_of,
    pod_templates,
    rendered,
    validate_object,
)

CRD_DIR = CHART / "crds"
ROLLOUT_CRD = CRD_DIR / "interactionrollouts.microturn.dev.yaml"
PEERING_CRD = CRD_DIR / "kopfpeerings.kopf.dev.yaml"
CI_IDS = [p.stem for p in CI_VALUES]
OPERATOR = f"{RELEASE}-microturn-rollout"
ROUTING = f"{RELEASE}-microturn-routing"
RAYSERVICE = f"{RELEASE}-microturn-interaction"
GRPC_SERVICE = f"{RELEASE}-microturn-interaction-grpc"
OFF = (("rollout.operator.enabled", "false"),)


def render_with(tmp_path: Path, values: dict[str, Any], ci: str | None = None) -> list[dict]:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return render([*([CHART / "ci" / f"{ci}.yaml"] if ci else []), path])


def load_crd(path: Path) -> dict:
    (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return doc


def rollout_schema() -> dict:
    (version,) = load_crd(ROLLOUT_CRD)["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


def sample_rollout(**spec: Any) -> dict:
    """An InteractionRollout using every spec field."""
    body = {
        "stable": "microturn-tiny-v2",
        "candidate": "microturn-tiny-v1",
        "checkpoint": "",
        "steps": [
            {"weight": 10, "holdSeconds": 60, "minSessions": 5},
            {"weight": 50, "holdSeconds": 120.5, "minSessions": 20},
            {"weight": 100},
        ],
        "analysisIntervalSeconds": 10,
        "failureLimit": 2,
        "provisionTimeoutSeconds": 600,
        "smokeTimeoutSeconds": 120,
        "drainDeadlineSeconds": 1800,
        "replayCompatible": False,
        "candidateSettings": {"session_slots": 16, "autoscaling": {"target_sessions": 12}},
        "analysis": {
            "minSessions": 5,
            "missZ": 3.0,
            "thresholds": {
                "deadline_miss_ratio": {"limit": 0.02, "margin": 0.5},
                "tick_p99_ms": {"limit": 120},
            },
        },
        "paused": False,
        "abort": False,
    }
    body.update(spec)
    return {
        "apiVersion": f"{kube.GROUP}/{kube.VERSION}",
        "kind": kube.KIND,
        "metadata": {"name": "tiny-v1", "namespace": NAMESPACE},
        "spec": body,
    }


def crd_errors(obj: dict) -> list[str]:
    validator = crd_validator(obj["apiVersion"], obj["kind"])
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
    ]


def structural_problems(schema: dict, path: str = "") -> list[str]:
    """Where an openAPIV3Schema is not structural: every node typed (unless it preserves unknown
    fields), no additionalProperties next to properties."""
    problems = []
    if "type" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        problems.append(f"{path or '/'}: no type")
    if "properties" in schema and "additionalProperties" in schema:
        problems.append(f"{path}: properties and additionalProperties")
    for name, sub in schema.get("properties", {}).items():
        if not (path == "" and name == "metadata"):
            problems += structural_problems(sub, f"{path}/{name}")
    if "items" in schema:
        problems += structural_problems(schema["items"], f"{path}/items")
    return problems


# -- the CRDs ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", [ROLLOUT_CRD, PEERING_CRD], ids=lambda p: p.name)
def test_crds_are_valid_crds(path):
    crd = load_crd(path)
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(crd, version, strict=True)
    spec = crd["spec"]
    assert crd["metadata"]["name"] == f"{spec['names']['plural']}.{spec['group']}" == path.stem
    assert spec["scope"] == "Namespaced"
    (v,) = spec["versions"]
    assert v["served"] and v["storage"]
    assert not structural_problems(v["schema"]["openAPIV3Schema"])


def test_the_crd_files_are_all_the_chart_ships():
    assert sorted(p.name for p in CRD_DIR.iterdir()) == sorted([ROLLOUT_CRD.name, PEERING_CRD.name])


def test_rollout_crd_is_the_resource_the_operator_reconciles():
    crd = load_crd(ROLLOUT_CRD)
    spec = crd["spec"]
    assert (spec["group"], spec["names"]["plural"], spec["names"]["kind"]) == (
        kube.GROUP,
        kube.PLURAL,
        kube.KIND,
    )
    (v,) = spec["versions"]
    assert v["name"] == kube.VERSION and v["subresources"] == {"status": {}}
    columns = {c["name"]: (c["type"], c["jsonPath"]) for c in v["additionalPrinterColumns"]}
    assert columns == {
        "Phase": ("string", ".status.phase"),
        "Step": ("integer", ".status.step"),
        "Stable": ("string", ".status.stable"),
        "Candidate": ("string", ".spec.candidate"),
        "Epoch": ("integer", ".status.epoch"),
        "Age": ("date", ".metadata.creationTimestamp"),
    }
    schema = rollout_schema()
    assert schema["properties"]["status"] == {
        "type": "object",
        "description": schema["properties"]["status"]["description"],
        "x-kubernetes-preserve-unknown-fields": True,
    }
    body = schema["properties"]["spec"]
    assert set(body["required"]) == {"stable", "candidate", "steps"}
    # Exactly the fields spec_from_cr reads (and the commands it takes as levels).
    assert set(body["properties"]) == set(kube._SPEC_FIELDS) | {"steps", "analysis"} | kube.COMMAND_FIELDS
    assert set(body["properties"]["analysis"]["properties"]["thresholds"]["properties"]) == set(
        default_thresholds()
    )
    assert body["properties"]["candidateSettings"]["x-kubernetes-preserve-unknown-fields"] is True


def test_peering_crd_is_kopfs():
    references = pytest.importorskip("kopf._cogs.structs.references")
    selector = references.NAMESPACED_PEERINGS_K
    crd = load_crd(PEERING_CRD)
    (v,) = crd["spec"]["versions"]
    assert (crd["spec"]["group"], v["name"], crd["spec"]["names"]["plural"]) == (
        selector.group,
        selector.version,
        selector.any_name,
    )
    assert crd["spec"]["names"]["kind"] == "KopfPeering" and crd["spec"]["scope"] == "Namespaced"
    status = v["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert status == {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


def test_a_sample_rollout_validates_and_the_operator_reads_it():
    cr = sample_rollout()
    assert not crd_errors(cr)
    validate_object(cr)
    spec = kube.spec_from_cr(cr["spec"])
    assert [s.weight for s in spec.steps] == [10, 50, 100]
    assert spec.analysis.thresholds["tick_p99_ms"].limit == 120 and spec.analysis.miss_z == 3.0
    # The minimal one: the required fields.
    minimal = sample_rollout()
    minimal["spec"] = {k: minimal["spec"][k] for k in ("stable", "candidate", "steps")}
    assert not crd_errors(minimal)
    kube.spec_from_cr(minimal["spec"])


def _without(field: str) -> dict:
    cr = sample_rollout()
    del cr["spec"][field]
    return cr


@pytest.mark.parametrize(
    ("cr", "where"),
    [
        pytest.param(_without("candidate"), "spec: 'candidate' is a required property", id="no-candidate"),
        pytest.param(_without("stable"), "spec: 'stable' is a required property", id="no-stable"),
        pytest.param(_without("steps"), "spec: 'steps' is a required property", id="no-steps"),
        pytest.param(
            sample_rollout(steps=[{"weight": 50}, {"weight": 101}]), "spec/steps/1/weight", id="weight-101"
        ),
        pytest.param(
            sample_rollout(steps=[{"weight": 0}, {"weight": 100}]), "spec/steps/0/weight", id="weight-0"
        ),
        pytest.param(sample_rollout(steps=[]), "spec/steps", id="no-step"),
        pytest.param(sample_rollout(failureLimit=0), "spec/failureLimit", id="failure-limit-0"),
        pytest.param(sample_rollout(failureLimit=1.5), "spec/failureLimit", id="failure-limit-float"),
        pytest.param(
            sample_rollout(analysisIntervalSeconds=0), "spec/analysisIntervalSeconds", id="interval-0"
        ),
        pytest.param(sample_rollout(drainDeadlineSeconds=-1), "spec/drainDeadlineSeconds", id="deadline-neg"),
        pytest.param(sample_rollout(paused="yes"), "spec/paused", id="paused-string"),
        pytest.param(sample_rollout(candidate=""), "spec/candidate", id="empty-candidate"),
        pytest.param(sample_rollout(canary="v3"), "spec: Additional properties", id="unknown-field"),
        pytest.param(
            sample_rollout(analysis={"thresholds": {"tick_p99_ms": {"margin": 0.1}}}),
            "spec/analysis/thresholds/tick_p99_ms: 'limit' is a required property",
            id="threshold-without-limit",
        ),
        pytest.param(
            sample_rollout(analysis={"thresholds": {"latency": {"limit": 1}}}),
            "spec/analysis/thresholds: Additional properties",
            id="unknown-metric",
        ),
    ],
)
def test_invalid_rollouts_are_refused(cr, where):
    errors = crd_errors(cr)
    assert any(e.startswith(where) for e in errors), errors


def test_the_crd_says_what_the_state_machine_checks():
    """The bounds the schema cannot say structurally are CEL rules; both say what RolloutSpec checks."""
    steps = rollout_schema()["properties"]["spec"]["properties"]["steps"]
    rules = [r["rule"] for r in steps["x-kubernetes-validations"]]
    assert any("isSorted()" in r and "exists_one" in r for r in rules)  # strictly rising
    assert "self[size(self) - 1].weight == 100" in rules
    assert steps["maxItems"] <= 20  # bounds the rules' cost
    for spec in ({"steps": [{"weight": 50}, {"weight": 10}, {"weight": 100}]}, {"steps": [{"weight": 50}]}):
        with pytest.raises(kube.SpecError, match="steps"):
            kube.spec_from_cr({**sample_rollout()["spec"], **spec})


# -- the operator ------------------------------------------------------------------------------------
@pytest.mark.parametrize("ci", [None, *CI_IDS], ids=["defaults", *CI_IDS])
def test_operator_deployment(ci):
    manifests = rendered(ci)
    v = chart_values(ci)
    dep = one(manifests, "Deployment", "rollout")
    assert dep["metadata"]["name"] == OPERATOR and dep["spec"]["replicas"] == 2
    pod = dep["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is True
    (c,) = pod["containers"]
    port = v["rollout"]["operator"]["healthPort"]
    assert c["command"] == [
        "microturn",
        "rollout",
        "operator",
        "--liveness",
        f"http://0.0.0.0:{port}/healthz",
    ]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"health": port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    env = env_of(c)
    assert env["MICROTURN_ROLLOUT__NAMESPACE"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.namespace"}
    }
    assert env["POD_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}  # kopf's identity
    names = {name_of(m) for m in manifests}
    assert f"RayService/{env_value(c, 'MICROTURN_ROLLOUT__RAYSERVICE')}" in names
    assert f"ConfigMap/{env_value(c, 'MICROTURN_ROLLOUT__ROUTING_CONFIGMAP')}" in names
    assert f"KopfPeering/{env_value(c, 'MICROTURN_ROLLOUT__PEERING')}" in names
    assert int(env_value(c, "MICROTURN_ROLLOUT__GRPC_PORT")) == v["interaction"]["grpcPort"]
    assert "MICROTURN_ROLLOUT__PRIORITY" not in env  # null: each pod its own
    if v["nats"]["auth"]["enabled"]:
        assert env_value(c, "MICROTURN_NATS__USER") == "rollout"
        assert env["MICROTURN_NATS__PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "rollout"
    assert env_value(c, "MICROTURN_NATS__URL") == env_value(
        container_named(manifests, "/tools"), "MICROTURN_NATS__URL"
    )
    if v["nats"]["tls"]["enabled"]:
        assert env_value(c, "MICROTURN_NATS__TLS_CA") == "/etc/microturn-tls/nats/ca.crt"
        assert "/etc/microturn-tls/nats" in {m["mountPath"] for m in c["volumeMounts"]}
    sa = pod["serviceAccountName"]
    assert f"ServiceAccount/{sa}" in names
    (binding,) = [b for b in objects(manifests, "RoleBinding") if component(b) == "rollout"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]


def test_operator_settings_load_as_the_operator_reads_them(tmp_path, monkeypatch):
    manifests = rendered()
    (c,) = [c for c in contract_containers(manifests) if c.component == "rollout"]
    env = write_config_files(c, manifests, tmp_path)
    for name in list(os.environ):
        if name.startswith("MICROTURN_"):
            monkeypatch.delenv(name)
    for k, val in env.items():
        if k.startswith("MICROTURN_"):
            monkeypatch.setenv(k, val)
    s = load_settings()
    assert (s.rollout.rayservice, s.rollout.routing_configmap, s.rollout.grpc_port) == (
        RAYSERVICE,
        ROUTING,
        9000,
    )
    assert s.rollout.peering == OPERATOR and s.nats.user == "rollout"
    assert s.rollout.namespace  # the downward API's metadata.namespace
    # The candidate's gRPC target the operator writes for the stable version is the chart's Service.
    driver = kube.KubeDriver(None, None, NAMESPACE, s.rollout.rayservice, s.rollout.routing_configmap,
                             s.rollout.grpc_port)  # fmt: skip
    table = RoutingTable.from_json(one(manifests, "ConfigMap", "rollout")["data"]["routing.json"])
    assert set(table.targets.values()) == {driver.target(s.rollout.rayservice)}


def test_operator_priority_when_set(tmp_path):
    manifests = render_with(tmp_path, {"rollout": {"operator": {"priority": 100, "replicas": 1}}})
    c = container_named(manifests, "/rollout")
    assert env_value(c, "MICROTURN_ROLLOUT__PRIORITY") == "100"
    assert one(manifests, "Deployment", "rollout")["spec"]["replicas"] == 1
    from microturn.config import setting_paths

    if "MICROTURN_ROLLOUT__PRIORITY" not in setting_paths():
        pytest.skip(
            "RolloutSettings has no priority setting yet: the operator cannot take rollout.operator.priority"
        )


def test_operator_role_is_exactly_what_it_calls():
    manifests = rendered()
    assert not objects(manifests, "ClusterRole") and not objects(manifests, "ClusterRoleBinding")
    (role,) = [r for r in objects(manifests, "Role") if component(r) == "rollout"]
    assert role["metadata"]["namespace"] == NAMESPACE
    rules = [{k: sorted(v) if isinstance(v, list) else v for k, v in r.items()} for r in role["rules"]]
    assert rules == [
        {"apiGroups": ["microturn.dev"], "resources": ["interactionrollouts"], "verbs": ["get", "list", "patch", "watch"]},
        {"apiGroups": ["microturn.dev"], "resources": ["interactionrollouts/status"], "verbs": ["get", "patch", "update"]},
        {
            "apiGroups": ["ray.io"],
            "resources": ["rayservices"],
            "verbs": ["create", "delete", "get", "list", "patch", "watch"],
        },
        {"apiGroups": [""], "resources": ["services"], "verbs": ["create", "delete", "get"]},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [ROUTING], "verbs": ["get", "patch"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
        {"apiGroups": ["kopf.dev"], "resources": ["kopfpeerings"], "verbs": ["get", "list", "patch", "watch"]},
    ]  # fmt: skip
    (binding,) = [b for b in objects(manifests, "RoleBinding") if component(b) == "rollout"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": OPERATOR}


def test_operator_role_binds_a_named_existing_service_account(tmp_path):
    values = {"serviceAccount": {"create": False, "name": "voice"}}
    manifests = render_with(tmp_path, values)
    (binding,) = [b for b in objects(manifests, "RoleBinding") if component(b) == "rollout"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "voice", "namespace": NAMESPACE}]
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump({"serviceAccount": {"create": False}, "edge": {"podDeletionCost": {"enabled": False}}})
    )
    proc = helm("template", *template_args([path]), check=False)
    assert proc.returncode != 0 and "rollout.operator grants its Role" in proc.stderr


def test_kopf_peering_object():
    (peering,) = objects(rendered(), "KopfPeering")
    assert peering["apiVersion"] == "kopf.dev/v1" and peering["metadata"]["name"] == OPERATOR
    assert peering["metadata"]["namespace"] == NAMESPACE and "spec" not in peering
    validate_object(peering)


def test_operator_network_policy():
    manifests = rendered("network-policies")
    policies = {p["metadata"]["name"]: p for p in objects(manifests, "NetworkPolicy")}
    p = policies[OPERATOR]
    assert p["spec"]["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in p["spec"]
    egress = p["spec"]["egress"]
    by_port = {pt.get("port"): r for r in egress for pt in r.get("ports", [])}
    assert {53, 4222, 9000, 443, 6443} <= set(by_port)
    assert by_port[4222]["to"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "messaging"
    }
    grpc_peer = by_port[9000]["to"][0]["podSelector"]["matchLabels"]
    assert grpc_peer["app.kubernetes.io/component"] == "interaction"
    assert "to" not in by_port[443]  # no networkPolicy.apiServer.cidrs: any address on its ports
    # The interaction pods (a candidate's too: they carry the same labels) take its smoke call.
    interaction = policies[f"{RELEASE}-microturn-interaction"]
    (rule,) = [
        r for r in interaction["spec"]["ingress"] if {"protocol": "TCP", "port": 9000} in r.get("ports", [])
    ]
    assert {"podSelector": {"matchLabels": one(manifests, "Deployment", "rollout")["spec"]["selector"]["matchLabels"]}} in rule["from"]  # fmt: skip
    assert set(grpc_peer.items()) <= set(
        pod_templates([one(manifests, "RayService", "interaction")])[1][1]["labels"].items()
    )


# -- the routing table -------------------------------------------------------------------------------
@pytest.mark.parametrize("ci", [None, *CI_IDS], ids=["defaults", *CI_IDS])
def test_routing_configmap_starts_on_the_stable_version(ci):
    manifests = rendered(ci)
    v = chart_values(ci)
    cm = one(manifests, "ConfigMap", "rollout")
    assert cm["metadata"]["name"] == ROUTING
    assert cm["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    table = RoutingTable.from_json(cm["data"]["routing.json"])
    version = v["interaction"]["modelVersion"]
    assert (table.epoch, table.weights, table.apps) == (0, {version: 100}, {})
    grpc = next(s for s in objects(manifests, "Service") if s["metadata"]["name"] == GRPC_SERVICE)
    (port,) = [p["port"] for p in grpc["spec"]["ports"] if p["name"] == "grpc"]
    assert table.targets == {version: f"{GRPC_SERVICE}.{NAMESPACE}.svc:{port}"}


def test_routing_configmap_follows_the_values(tmp_path):
    values = {
        "interaction": {"modelVersion": "Org/Model_V3.1", "grpcPort": 9901},
        "rollout": {"routingConfigMap": "voice-routes"},
    }
    manifests = render_with(tmp_path, values)
    table = RoutingTable.from_json(one(manifests, "ConfigMap", "rollout")["data"]["routing.json"])
    assert table.weights == {"Org/Model_V3.1": 100}
    assert table.targets == {"Org/Model_V3.1": f"{GRPC_SERVICE}.{NAMESPACE}.svc:9901"}
    assert one(manifests, "ConfigMap", "rollout")["metadata"]["name"] == "voice-routes"
    assert (
        env_value(container_named(manifests, "/rollout"), "MICROTURN_ROLLOUT__ROUTING_CONFIGMAP")
        == "voice-routes"
    )
    (role,) = [r for r in objects(manifests, "Role") if component(r) == "rollout"]
    assert {"resourceNames": ["voice-routes"]}.items() <= role["rules"][5].items()
    edge = one(manifests, "Deployment", "edge")["spec"]["template"]["spec"]
    (vol,) = [vol for vol in edge["volumes"] if vol["name"] == "routing"]
    assert vol["configMap"] == {"name": "voice-routes", "optional": True}


def test_routing_configmap_keeps_what_the_operator_wrote():
    """On upgrade the table comes from the live ConfigMap (`lookup`, as the kept Secrets do)."""
    text = (CHART / "templates" / "rollout.yaml").read_text()
    assert re.search(r'lookup "v1" "ConfigMap" \.Release\.Namespace \$routing', text)
    assert 'index $live.data "routing.json"' in text


@pytest.mark.parametrize("ci", [None, *CI_IDS], ids=["defaults", *CI_IDS])
def test_edge_reads_the_routing_configmap(ci, tmp_path, monkeypatch):
    manifests = rendered(ci)
    dep = one(manifests, "Deployment", "edge")
    pod = dep["spec"]["template"]["spec"]
    (vol,) = [vol for vol in pod["volumes"] if vol["name"] == "routing"]
    assert vol["configMap"] == {"name": ROUTING, "optional": True}  # whole, no subPath: updated in place
    edge = container_named(manifests, "/edge")
    (mount,) = [m for m in edge["volumeMounts"] if m["name"] == "routing"]
    assert mount == {"name": "routing", "mountPath": "/etc/microturn/routing", "readOnly": True}
    path = env_value(edge, "MICROTURN_EDGE__ROUTING_FILE")
    assert path == "/etc/microturn/routing/routing.json"
    # The file the edge reads is the ConfigMap's table, and its settings take the path.
    (c,) = [c for c in contract_containers(manifests) if c.owner == dep["metadata"]["name"]]
    files = c.mounted_files({m["metadata"]["name"]: m["data"] for m in objects(manifests, "ConfigMap")})
    RoutingTable.from_json(files[path])
    env = write_config_files(c, manifests, tmp_path)
    for name in list(os.environ):
        if name.startswith("MICROTURN_"):
            monkeypatch.delenv(name)
    for k, val in env.items():
        if k.startswith("MICROTURN_"):
            monkeypatch.setenv(k, val)
    assert str(load_settings().edge.routing_file) == path


# -- the stable version's label ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "version",
    ["microturn-tiny-v2", "Org/Model_V3.1", "--v4--", "m" * 39 + "x" * 10, "über-model"],
)
def test_stable_pods_and_grpc_service_carry_the_version_slug(version, tmp_path):
    manifests = render_with(tmp_path, {"interaction": {"modelVersion": version}})
    label = kube.slug(version)
    rs = one(manifests, "RayService", "interaction")
    assert rs["metadata"]["labels"][kube.VERSION_LABEL] == label
    for where, meta, _ in pod_templates([rs]):
        assert meta["labels"][kube.VERSION_LABEL] == label, where
    grpc = next(s for s in objects(manifests, "Service") if s["metadata"]["name"] == GRPC_SERVICE)
    assert grpc["spec"]["selector"][kube.VERSION_LABEL] == label
    validate_object(rs)
    validate_object(grpc)


@pytest.mark.parametrize("version", ["---", "a" * 39 + "-b"])
def test_a_version_without_a_valid_slug_fails(version, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"interaction": {"modelVersion": version}}))
    proc = helm("template", *template_args([path]), check=False)
    assert proc.returncode != 0 and "interaction.modelVersion" in proc.stderr, proc.stderr


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def test_the_stable_service_never_selects_a_candidates_pods():
    """A candidate made by the operator from the rendered RayService: its serving pods are behind its
    own Service and not the chart's."""
    manifests = rendered()
    base = one(manifests, "RayService", "interaction")
    grpc = next(s for s in objects(manifests, "Service") if s["metadata"]["name"] == GRPC_SERVICE)
    spec = kube.spec_from_cr(sample_rollout()["spec"])
    name = f"{RAYSERVICE}-{kube.slug(spec.candidate)}"
    candidate = kube.candidate_rayservice(copy.deepcopy(base), name, spec.candidate, spec)
    validate_object(candidate)  # still a valid RayService (the vendored CRD)
    own = kube.grpc_service(name, spec.candidate, 9000)
    serving = {"ray.io/serve": "true"}  # what KubeRay adds to the pods that serve
    (_, stable_head, _), (_, stable_worker, _) = pod_templates([base])
    (_, cand_head, _), (_, cand_worker, _) = pod_templates([candidate])
    assert _selects(grpc["spec"]["selector"], {**stable_worker["labels"], **serving})
    assert not _selects(grpc["spec"]["selector"], {**cand_worker["labels"], **serving})
    assert not _selects(grpc["spec"]["selector"], {**cand_head["labels"], **serving})
    assert _selects(own["spec"]["selector"], {**cand_worker["labels"], **serving})
    assert not _selects(own["spec"]["selector"], {**stable_worker["labels"], **serving})
    assert not _selects(own["spec"]["selector"], {**stable_head["labels"], **serving})


def test_model_version_is_what_the_replicas_serve(tmp_path, monkeypatch):
    """interaction.modelVersion (the routing table's version, which every call asks for) is the
    version of the checkpoint the worker pods load: a replica refuses any other."""
    from microturn.rollout.local import default_version

    for ci in [None, *CI_IDS]:
        manifests = rendered(ci)
        (worker, *_) = [
            c
            for c in contract_containers(manifests)
            if c.owner_kind.startswith("RayService/") and "head" not in c.owner_kind
        ]
        env = write_config_files(worker, manifests, tmp_path / (ci or "defaults"))
        for name in list(os.environ):
            if name.startswith("MICROTURN_"):
                monkeypatch.delenv(name)
        for k, val in env.items():
            if k.startswith("MICROTURN_"):
                monkeypatch.setenv(k, val)
        assert default_version(load_settings()) == chart_values(ci)["interaction"]["modelVersion"], ci


# -- off -----------------------------------------------------------------------------------------------
def test_operator_disabled_renders_none_of_it():
    manifests = rendered(None, OFF)
    assert not [name_of(m) for m in manifests if component(m) == "rollout"]
    assert not objects(manifests, "KopfPeering")
    edge = container_named(manifests, "/edge")
    assert "MICROTURN_EDGE__ROUTING_FILE" not in env_of(edge)
    assert not [m for m in edge["volumeMounts"] if m["name"] == "routing"]
    # The version label stays: it is the stable pods' (and the gRPC Service's) whatever runs rollouts.
    grpc = next(s for s in objects(manifests, "Service") if s["metadata"]["name"] == GRPC_SERVICE)
    assert grpc["spec"]["selector"][kube.VERSION_LABEL] == kube.slug("microturn-tiny-v2")
    off_np = render([CHART / "ci" / "network-policies.yaml"], dict(OFF))
    assert not [name_of(m) for m in off_np if component(m) == "rollout"]
    interaction = next(p for p in objects(off_np, "NetworkPolicy") if component(p) == "interaction")
    peers = [
        peer.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component")
        for rule in interaction["spec"]["ingress"]
        for peer in rule.get("from", [])
    ]
    assert "rollout" not in peers


# -- the docs ------------------------------------------------------------------------------------------
def test_the_docs_example_rollout_validates():
    text = (ROOT / "docs" / "KUBERNETES.md").read_text()
    section = text[text.index("\n## Rollouts") :]
    section = section[: section.index("\n## ", 1)]
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.S)
    examples = [d for b in blocks for d in yaml.safe_load_all(b) if d and d.get("kind") == kube.KIND]
    assert examples, "docs/KUBERNETES.md's Rollouts section has no InteractionRollout example"
    for cr in examples:
        cr.setdefault("metadata", {}).setdefault("namespace", NAMESPACE)
        assert not crd_errors(cr)
        assert cr["spec"]["stable"] == chart_values()["interaction"]["modelVersion"]
        kube.spec_from_cr(cr["spec"])
    assert '--type merge -p \'{"spec":{"paused":true}}\'' in section
    assert '--type merge -p \'{"spec":{"abort":true}}\'' in section
    assert "kubectl get interactionrollouts" in section
