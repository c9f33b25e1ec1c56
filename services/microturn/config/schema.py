"""The settings as JSON Schema (2020-12), for the Helm chart's values.schema.json.

The chart's ``config`` value is a microturn config file; its schema comes from the same pydantic
models the services load, so ``helm install`` rejects a setting the services would reject (unknown
key, wrong type, out of range) before anything starts. Secrets are left out of it: in a cluster they
come from Kubernetes Secrets as environment variables, never from the ConfigMap.

``make chart-generate`` (:mod:`microturn.deploy.chartfiles`) rewrites the generated ``$defs`` in
place; ``python -m microturn.config.schema FILE [--check]`` does it for one file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from microturn.config.settings import Settings

PREFIX = "Microturn"
ROOT = f"{PREFIX}Settings"
# Settings a chart sets from Secrets (not SecretStr-typed, so named here).
SECRET_FIELDS = {"token_secret", "debug_token"}


def _is_secret(prop: dict[str, Any]) -> bool:
    variants = prop.get("anyOf", [prop])
    return any(v.get("writeOnly") for v in variants)


def settings_defs() -> dict[str, Any]:
    """``$defs`` entries: ``MicroturnSettings`` and one ``Microturn<Section>`` per section model."""
    schema = Settings.model_json_schema(ref_template=f"#/$defs/{PREFIX}{{model}}")
    defs = {f"{PREFIX}{name}": d for name, d in schema.pop("$defs").items()}
    defs[ROOT] = schema
    for d in defs.values():
        props = d.get("properties", {})
        for name in [n for n, p in props.items() if _is_secret(p) or n in SECRET_FIELDS]:
            del props[name]
    return dict(sorted(defs.items()))


def update(values_schema: dict[str, Any]) -> dict[str, Any]:
    out = dict(values_schema)
    defs = {k: v for k, v in out.get("$defs", {}).items() if not k.startswith(PREFIX)}
    out["$defs"] = {**defs, **settings_defs()}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("values_schema", type=Path, help="the chart's values.schema.json")
    p.add_argument("--check", action="store_true", help="fail if the file is not up to date")
    ns = p.parse_args(argv)
    current = json.loads(ns.values_schema.read_text())
    text = json.dumps(update(current), indent=2) + "\n"
    if ns.check:
        if ns.values_schema.read_text() != text:
            print(f"{ns.values_schema} is stale: run python -m microturn.config.schema {ns.values_schema}")
            return 1
        return 0
    ns.values_schema.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
