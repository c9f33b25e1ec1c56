"""Render the Helm chart with the real helm binary (``make helm`` installs it under .tools/)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from ..need import need

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "microturn"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
RELEASE = "mt"
NAMESPACE = "voice"


def helm_binary() -> str:
    """The helm the Makefile installed (HELM_BINARY), else .tools/helm, else one on PATH."""
    for candidate in (os.environ.get("HELM_BINARY"), str(ROOT / ".tools" / "helm"), shutil.which("helm")):
        if candidate and Path(candidate).is_file():
            return candidate
    need(["helm"], "`make helm` installs it under .tools/")
    raise AssertionError("unreachable")


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([helm_binary(), *args], capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
    return proc


def template_args(values: list[Path] = (), sets: dict[str, str] | None = None) -> list[str]:
    args = [RELEASE, str(CHART), "--namespace", NAMESPACE]
    for v in values:
        args += ["-f", str(v)]
    for k, v in (sets or {}).items():
        args += ["--set", f"{k}={v}"]
    return args


def render(values: list[Path] = (), sets: dict[str, str] | None = None, *extra: str) -> list[dict[str, Any]]:
    """Every object ``helm template`` renders (test hooks included), parsed."""
    out = helm("template", *template_args(values, sets), *extra).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def objects(manifests: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m for m in manifests if m.get("kind") == kind]


def one(manifests: list[dict[str, Any]], kind: str, component: str) -> dict[str, Any]:
    """The single object of ``kind`` labelled ``app.kubernetes.io/component: component``."""
    found = [
        m
        for m in objects(manifests, kind)
        if m["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component
    ]
    assert len(found) == 1, f"expected one {kind} of component {component}, got {len(found)}"
    return found[0]
