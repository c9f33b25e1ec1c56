"""Render the Serve config for a run and deploy it through the Serve REST API (what
``serve deploy`` does), then wait for the application to be RUNNING.

``microturn interaction --deploy`` is the local run's deployer; the Kubernetes chart embeds the same
config in a RayService (charts/microturn/files/serve.yaml is a copy of serve.yaml, and a test checks
that the chart's serveConfigV2 equals :func:`render` for the same settings).
"""

from __future__ import annotations

import copy
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from pydantic import BaseModel, SecretStr

from microturn.config import Settings
from microturn.interaction.autoscaling import autoscaling_config

TEMPLATE = Path(__file__).with_name("serve.yaml")
APPLICATIONS_PATH = "/api/serve/applications/"


def render(settings: Settings) -> dict[str, Any]:
    cfg = settings.interaction
    doc = copy.deepcopy(yaml.safe_load(TEMPLATE.read_text()))
    doc["http_options"].update(host=cfg.host, port=cfg.http_port)
    doc["grpc_options"]["port"] = cfg.grpc_port
    (app,) = doc["applications"]
    app["name"] = cfg.app_name
    app["route_prefix"] = f"/{cfg.app_name}"
    # Replicas load their settings from these overrides (above their environment, which supplies
    # secrets such as NATS credentials: those never go into a Serve config); only what differs from
    # the defaults of a fresh process.
    app["args"] = {"settings": replica_settings(settings)}
    (dep,) = app["deployments"]
    if cfg.autoscaling.enabled:
        dep.pop("num_replicas")
        dep["autoscaling_config"] = autoscaling_config(cfg.autoscaling)
    else:
        dep["num_replicas"] = cfg.replicas
    # A replica being removed drains its sessions first (see InteractionCore.drain).
    dep["graceful_shutdown_timeout_s"] = cfg.graceful_shutdown_timeout_s
    dep["max_ongoing_requests"] = max(dep["max_ongoing_requests"], 2 * cfg.session_slots)
    # A burst of session opens (every caller of a restarted replica at once) may briefly queue.
    dep["max_queued_requests"] = max(dep["max_queued_requests"], 2 * cfg.session_slots)
    dep["ray_actor_options"].update(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus)
    return doc


REPLICA_SECTIONS = ("nats", "bus", "limits", "interaction", "telemetry")


# How a replica reaches NATS (its user and password from a Secret, TLS files from mounted Secrets)
# comes from the Ray pods' environment, which the pods that have those Secrets set.
FROM_POD_ENV = {"nats": {"user", "password", "tls_ca", "tls_cert", "tls_key", "tls_handshake_first"}}


def replica_settings(settings: Settings) -> dict[str, Any]:
    """The settings a replica needs, as non-default overrides, without credentials or TLS files: a
    Serve config is readable by anyone who can read the RayService (or the Ray dashboard)."""
    dumped = settings.model_dump(mode="json", include=set(REPLICA_SECTIONS), exclude_defaults=True)
    for section, names in FROM_POD_ENV.items():
        for name in names:
            dumped.get(section, {}).pop(name, None)
    return _drop_secrets(dumped, settings)


def _drop_secrets(values: dict[str, Any], model: Any) -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        field_value = getattr(model, key)
        if isinstance(field_value, SecretStr):
            continue
        nested = isinstance(value, dict) and isinstance(field_value, BaseModel)
        out[key] = _drop_secrets(value, field_value) if nested else value
    return {k: v for k, v in out.items() if v != {}}


def dashboard_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.ray.dashboard_port}"


def deploy_config(dashboard: str, config: dict[str, Any], timeout_s: float = 10.0) -> None:
    r = httpx.put(dashboard + APPLICATIONS_PATH, json=config, timeout=timeout_s)
    if r.status_code >= 400:
        raise RuntimeError(f"Serve rejected the config ({r.status_code}): {r.text}")


def app_status(dashboard: str, app_name: str) -> tuple[str, str]:
    """(status, message) of one application, ("NOT_STARTED", "") when absent."""
    r = httpx.get(dashboard + APPLICATIONS_PATH, timeout=5.0)
    r.raise_for_status()
    app = r.json().get("applications", {}).get(app_name)
    if app is None:
        return "NOT_STARTED", ""
    return app["status"], app.get("message", "")


def wait_running(dashboard: str, app_name: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    status, message = "NOT_STARTED", ""
    while time.monotonic() < deadline:
        status, message = app_status(dashboard, app_name)
        if status == "RUNNING":
            return
        if status == "DEPLOY_FAILED":
            raise RuntimeError(f"application {app_name} failed to deploy: {message}")
        time.sleep(0.5)
    raise TimeoutError(
        f"application {app_name} not RUNNING after {timeout_s:.0f}s (status {status}: {message})"
    )


def app_names(settings: Settings) -> list[str]:
    """The applications of a local run: one per version its rollouts deployed (rollout/local.py)."""
    from microturn.rollout.local import read_deployed

    return [d.app for d in read_deployed(settings).values()]


def is_running(settings: Settings) -> bool:
    try:
        return all(app_status(dashboard_url(settings), name)[0] == "RUNNING" for name in app_names(settings))
    except (httpx.HTTPError, KeyError, ValueError):
        return False


def run(
    settings: Settings, *, print_config: bool, deploy: bool, watch: bool, timeout_s: float = 300.0
) -> int:
    """``microturn interaction``: print and/or deploy the rendered config (and watch it)."""
    config = render(settings)
    if print_config or not deploy:
        print(yaml.safe_dump(config, sort_keys=False), end="")
    if not deploy:
        return 0
    from microturn.rollout.local import read_deployed, serve_config_for

    # every version a local rollout deployed (one application each), not only the first
    dash, names = dashboard_url(settings), app_names(settings)
    deploy_config(dash, serve_config_for(settings, read_deployed(settings)))
    print(f"deployed application(s) {', '.join(names)}; waiting for them to run", flush=True)
    for name in names:
        wait_running(dash, name, timeout_s)
    print(
        json.dumps({"applications": names, "status": "RUNNING", "grpc_port": settings.interaction.grpc_port}),
        flush=True,
    )
    if watch:  # what a rollout adds or removes shows up here too
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        last: dict[str, str] = dict.fromkeys(names, "RUNNING")
        while True:
            time.sleep(2.0)
            for name in sorted(set(last) | set(app_names(settings))):
                try:
                    status, message = app_status(dash, name)
                except httpx.HTTPError as exc:
                    status, message = "UNREACHABLE", str(exc)
                if status != last.get(name):
                    print(f"application {name}: {status} {message}", flush=True)
                    last[name] = status
    return 0


def main(argv: list[str] | None = None) -> int:
    from microturn.cli import main as cli_main

    return cli_main(["interaction", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    sys.exit(main())
