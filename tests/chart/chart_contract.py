"""What a rendered chart tells a container: its command, its environment and its config file, read
back the way Kubernetes would hand them to the process (secret refs, downward API, ``$(VAR)``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .chart_helpers import objects

CONFIG_MOUNT = "/etc/microturn"
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "Pod")
_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


@dataclass
class Container:
    """One container of a rendered workload (RayService head/worker groups included)."""

    owner_kind: str
    owner: str
    component: str
    spec: dict[str, Any]
    pod: dict[str, Any]

    @property
    def name(self) -> str:
        return self.spec["name"]

    @property
    def command(self) -> list[str]:
        return [*self.spec.get("command", []), *self.spec.get("args", [])]

    def env(
        self, secrets: dict[str, dict[str, str]] | None = None, host_ip: str = "10.0.0.7"
    ) -> dict[str, str]:
        """The environment the process would see. Secret refs resolve from ``secrets`` (name -> data)
        or, unknown, to a placeholder; fieldRefs to ``host_ip``/a pod address; ``$(VAR)`` expands
        against the variables defined before it, as the kubelet does."""
        out: dict[str, str] = {}
        for item in self.spec.get("env", []):
            if "value" in item:
                value = _VAR_REF.sub(lambda m: out.get(m.group(1), m.group(0)), str(item["value"]))
            else:
                src = item.get("valueFrom", {})
                if "secretKeyRef" in src:
                    ref = src["secretKeyRef"]
                    value = (secrets or {}).get(ref["name"], {}).get(ref["key"], f"secret-{ref['key']}")
                elif "fieldRef" in src:
                    path = src["fieldRef"]["fieldPath"]
                    value = host_ip if path == "status.hostIP" else "10.1.2.3" if "IP" in path else "pod"
                else:
                    value = "resource"
            out[item["name"]] = value
        return out

    def mounted_files(self, configmaps: dict[str, dict[str, str]]) -> dict[str, str]:
        """Path -> content of each ConfigMap key this container mounts."""
        volumes = {v["name"]: v for v in self.pod.get("volumes", [])}
        files = {}
        for m in self.spec.get("volumeMounts", []):
            vol = volumes.get(m["name"], {})
            cm = vol.get("configMap")
            if not cm or cm["name"] not in configmaps:
                continue
            data = configmaps[cm["name"]]
            if m.get("subPath"):
                files[m["mountPath"]] = data[m["subPath"]]
            else:
                items = cm.get("items") or [{"key": k, "path": k} for k in data]
                for it in items:
                    files[f"{m['mountPath'].rstrip('/')}/{it['path']}"] = data[it["key"]]
        return files

    def ports(self) -> dict[str, int]:
        return {
            p.get("name", str(p["containerPort"])): p["containerPort"] for p in self.spec.get("ports", [])
        }


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj["spec"]
    if obj["kind"] == "Pod":
        return spec
    return spec["template"]["spec"]


def containers(manifests: list[dict[str, Any]]) -> list[Container]:
    """Every container (init containers too) of every workload and RayService pod template."""
    out = []

    def add(kind: str, name: str, component: str, pod: dict[str, Any]) -> None:
        for c in [*pod.get("initContainers", []), *pod.get("containers", [])]:
            out.append(Container(kind, name, component, c, pod))

    for obj in manifests:
        labels = obj["metadata"].get("labels", {})
        component = labels.get("app.kubernetes.io/component", "")
        if obj["kind"] in WORKLOAD_KINDS:
            add(obj["kind"], obj["metadata"]["name"], component, _pod_spec(obj))
        elif obj["kind"] == "RayService":
            cluster = obj["spec"]["rayClusterConfig"]
            add(
                "RayService/head",
                obj["metadata"]["name"],
                component,
                cluster["headGroupSpec"]["template"]["spec"],
            )
            for group in cluster.get("workerGroupSpecs", []):
                add(
                    f"RayService/{group['groupName']}",
                    obj["metadata"]["name"],
                    component,
                    group["template"]["spec"],
                )
    return out


def configmaps(manifests: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    return {m["metadata"]["name"]: m.get("data", {}) for m in objects(manifests, "ConfigMap")}


def secrets(manifests: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    import base64

    out = {}
    for m in objects(manifests, "Secret"):
        data = {k: base64.b64decode(v).decode() for k, v in m.get("data", {}).items()}
        data.update(m.get("stringData", {}))
        out[m["metadata"]["name"]] = data
    return out


def write_config_files(
    container: Container, manifests: list[dict[str, Any]], root: Path, host_ip: str = "10.0.0.7"
) -> dict[str, str]:
    """Write the ConfigMap files the container mounts under ``root`` (same layout); returns the
    env with MICROTURN_CONFIG pointed at the written copy."""
    env = container.env(secrets(manifests), host_ip=host_ip)
    for path, content in container.mounted_files(configmaps(manifests)).items():
        local = root / path.lstrip("/")
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(content)
    if "MICROTURN_CONFIG" in env:
        env["MICROTURN_CONFIG"] = str(root / env["MICROTURN_CONFIG"].lstrip("/"))
    return env


def serve_config(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    (rs,) = objects(manifests, "RayService")
    return yaml.safe_load(rs["spec"]["serveConfigV2"])
