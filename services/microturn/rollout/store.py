"""Rollout specs and statuses as JSON documents: the local controller's files, the CLI's
``--json``, and the Kubernetes CR. A spec document is operator input: every problem is a
``SpecError`` that names the field. Light on imports: ``microturn rollout status`` reads the files
through it without loading the model or Ray."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from microturn.config import Settings
from microturn.rollout.analysis import AnalysisSpec, Threshold, default_thresholds
from microturn.rollout.machine import Phase, RolloutSpec, RolloutStatus, SpecError, Step


def rollout_dir(settings: Settings) -> Path:
    return settings.state_dir / "rollout"


def routing_path(settings: Settings) -> Path:
    return rollout_dir(settings) / "routing.json"


def write_json(path: Path, doc: Any) -> None:
    """Replace ``path`` atomically (readers see the old document or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True, default=str) + "\n")
    tmp.replace(path)


def spec_to_doc(spec: RolloutSpec) -> dict[str, Any]:
    return asdict(spec)


def spec_from_doc(doc: Any) -> RolloutSpec:
    if not isinstance(doc, dict):
        raise SpecError("a rollout spec is a JSON object")
    known = {f.name for f in fields(RolloutSpec)}
    if unknown := sorted(set(doc) - known):
        raise SpecError(f"unknown fields {unknown}; known: {sorted(known)}")
    doc = dict(doc)
    try:
        doc["steps"] = tuple(_step(_obj(s, "steps[]")) for s in doc.get("steps", ()))
        if "analysis" in doc:
            a = _obj(doc["analysis"], "analysis")
            thresholds = default_thresholds()
            for name, t in _obj(a.get("thresholds", {}), "analysis.thresholds").items():
                if name not in thresholds:
                    raise SpecError(
                        f"analysis.thresholds: unknown metric {name!r}; known: {sorted(thresholds)}"
                    )
                thresholds[name] = Threshold(**_obj(t, f"analysis.thresholds.{name}"))
            doc["analysis"] = AnalysisSpec(thresholds=thresholds, min_sessions=a.get("min_sessions", 5))
        spec = RolloutSpec(**doc)
    except TypeError as exc:
        raise SpecError(f"bad field: {exc}") from None
    _check_types(spec)
    return spec


def _step(doc: dict[str, Any]) -> Step:
    step = Step(**doc)
    if not isinstance(step.weight, int) or isinstance(step.weight, bool):
        raise SpecError(f"steps: weight must be an integer percent, got {step.weight!r}")
    if not isinstance(step.hold_s, int | float) or not isinstance(step.min_sessions, int):
        raise SpecError("steps: hold_s is seconds, min_sessions an integer")
    return step


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SpecError(f"{where} must be an object")
    return value


def _check_types(spec: RolloutSpec) -> None:
    for name in ("analysis_interval_s", "provision_timeout_s", "smoke_timeout_s", "drain_deadline_s"):
        if not isinstance(getattr(spec, name), int | float):
            raise SpecError(f"{name} must be a number of seconds")
    if not isinstance(spec.replay_compatible, bool):
        raise SpecError("replay_compatible must be true or false")
    if not isinstance(spec.candidate_settings, dict):
        raise SpecError("candidate_settings must be an object of interaction settings")


def status_to_doc(status: RolloutStatus) -> dict[str, Any]:
    doc = asdict(status)
    doc["phase"] = status.phase.value
    doc["paused_from"] = status.paused_from.value if status.paused_from else None
    return doc


def status_from_doc(doc: dict[str, Any]) -> RolloutStatus:
    doc = dict(doc)
    doc["phase"] = Phase(doc["phase"])
    doc["paused_from"] = Phase(doc["paused_from"]) if doc.get("paused_from") else None
    doc["spec"] = spec_from_doc(doc["spec"]) if doc.get("spec") else None
    return RolloutStatus(**doc)
