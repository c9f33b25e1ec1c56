"""The chart and the code agree: one settings layer, one Serve config, one set of ports, one image.

Each check takes the rendered manifests and reads them back as the processes would see them (see
chart_contract.py), so a setting the chart names wrongly, a port that differs between the Service,
the container and the setting, or a command the image cannot run fails here, not in a cluster."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml

from loadtest.smoke import build_parser as smoke_parser
from microturn.cli import build_parser
from microturn.config import ConfigError, load_settings, setting_paths
from microturn.interaction import serve_config

from .chart_contract import containers, write_config_files
from .chart_contract import serve_config as chart_serve_config
from .chart_helpers import CHART, CI_VALUES, ROOT, objects, render

MATRIX = [pytest.param(v, id=v.stem) for v in CI_VALUES] or [pytest.param(None, id="defaults")]


@pytest.fixture(scope="module")
def rendered():
    cache: dict[object, list] = {}

    def get(values: Path | None) -> list:
        if values not in cache:
            cache[values] = render([values] if values else [])
        return cache[values]

    return get


@pytest.fixture
def clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("MICROTURN_"):
            monkeypatch.delenv(name)
    return monkeypatch


def load_as(env: dict[str, str], monkeypatch):
    """Settings as a process with exactly this MICROTURN_* environment loads them."""
    for name in list(os.environ):
        if name.startswith("MICROTURN_"):
            monkeypatch.delenv(name)
    for k, v in env.items():
        if k.startswith("MICROTURN_"):
            monkeypatch.setenv(k, v)
    return load_settings()


@pytest.mark.parametrize("values", MATRIX)
def test_every_env_var_the_chart_sets_is_a_valid_setting(values, rendered, tmp_path, clean_env):
    known = setting_paths()
    microturn = [
        c
        for c in containers(rendered(values))
        if any(e["name"].startswith("MICROTURN_") for e in c.spec.get("env", []))
    ]
    assert microturn, "no container gets microturn settings"
    for c in microturn:
        env = write_config_files(c, rendered(values), tmp_path / c.owner / c.name)
        unknown = sorted(
            k for k in env if k.startswith("MICROTURN_") and k != "MICROTURN_CONFIG" and k not in known
        )
        assert not unknown, (
            f"{c.owner_kind} {c.owner}/{c.name} sets variables that name no setting: {unknown}"
        )
        try:
            load_as(env, clean_env)
        except ConfigError as exc:
            pytest.fail(f"{c.owner_kind} {c.owner}/{c.name}: its settings do not load:\n{exc}")


@pytest.mark.parametrize("values", MATRIX)
def test_serve_config_v2_is_what_the_renderer_produces(values, rendered, tmp_path, clean_env):
    manifests = rendered(values)
    chart = chart_serve_config(manifests)
    # The settings the interaction runs with: its pods' config file and environment.
    (worker, *_) = [
        c
        for c in containers(manifests)
        if c.owner_kind.startswith("RayService/") and c.owner_kind != "RayService/head"
    ]
    env = write_config_files(worker, manifests, tmp_path)
    settings = load_as(env, clean_env)
    expected = serve_config.render(settings)
    chart_args = chart["applications"][0].pop("args")["settings"]
    expected_args = expected["applications"][0].pop("args")["settings"]
    assert chart == expected
    # The replica overrides must yield the same settings (the chart may spell out a default).
    sections = set(serve_config.REPLICA_SECTIONS)
    for name in list(os.environ):
        if name.startswith("MICROTURN_"):
            clean_env.delenv(name)
    got = load_settings(overrides=chart_args).model_dump(include=sections)
    want = load_settings(overrides=expected_args).model_dump(include=sections)
    assert got == want
    assert "password" not in json.dumps(chart_args).lower()


def test_chart_serve_template_is_the_package_one():
    package = (ROOT / "services/microturn/interaction/serve.yaml").read_bytes()
    assert (CHART / "files/serve.yaml").read_bytes() == package, (
        "charts/microturn/files/serve.yaml differs from services/microturn/interaction/serve.yaml: copy it"
    )


def _service_target(manifests, service_component: str, port_name: str, pod_ports: dict[str, int]) -> int:
    for svc in objects(manifests, "Service"):
        if svc["metadata"].get("labels", {}).get("app.kubernetes.io/component") != service_component:
            continue
        for p in svc["spec"]["ports"]:
            if p.get("name") == port_name:
                target = p.get("targetPort", p["port"])
                return pod_ports[target] if isinstance(target, str) else int(target)
    raise AssertionError(f"no Service port {port_name!r} for component {service_component}")


@pytest.mark.parametrize("values", MATRIX)
def test_ports_agree_between_service_container_and_settings(values, rendered, tmp_path, clean_env):
    manifests = rendered(values)
    by_component = {}
    for c in containers(manifests):
        if c.owner_kind == "Deployment":
            by_component.setdefault(c.component, c)
    edge = by_component["edge"]
    s = load_as(write_config_files(edge, manifests, tmp_path / "edge"), clean_env)
    assert edge.ports()["http"] == s.edge.port
    assert _service_target(manifests, "edge", "http", edge.ports()) == s.edge.port
    for probe in ("readinessProbe", "livenessProbe"):
        port = edge.spec[probe]["httpGet"]["port"]
        assert (edge.ports()[port] if isinstance(port, str) else port) == s.edge.port
    # The edge dials the interaction gRPC port the Serve config opens.
    target_port = int(s.edge.interaction_target.rsplit(":", 1)[1])
    assert target_port == chart_serve_config(manifests)["grpc_options"]["port"]
    for name in ("background", "tools"):
        c = by_component[name]
        s = load_as(write_config_files(c, manifests, tmp_path / name), clean_env)
        assert c.ports()["metrics"] == s.telemetry.metrics_port
        for probe in ("readinessProbe", "livenessProbe"):
            port = c.spec[probe]["httpGet"]["port"]
            assert (c.ports()[port] if isinstance(port, str) else port) == s.telemetry.metrics_port
        if name == "tools":
            assert c.ports()["grpc"] == s.tools.grpc_port
            assert _service_target(manifests, "tools", "grpc", c.ports()) == s.tools.grpc_port


def _dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def test_dockerfile_entrypoint_is_the_console_script_the_chart_runs(rendered):
    text = _dockerfile()
    entry = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", text, re.M)
    assert entry, "Dockerfile has no exec-form ENTRYPOINT"
    assert json.loads(entry.group(1)) == ["microturn"]
    scripts = re.search(r"\[project.scripts\]\s*\n(.*?)\n\n", (ROOT / "pyproject.toml").read_text(), re.S)
    assert scripts and 'microturn = "microturn.cli:main"' in scripts.group(1)
    # It installs the project the way the Makefile does: the Makefile's torch, then the package.
    make_torch = re.search(r"^TORCH_SPEC \?= (.+)$", (ROOT / "Makefile").read_text(), re.M).group(1).strip()
    assert f'ARG TORCH_SPEC="{make_torch}"' in text
    assert re.search(r"pip install .*\$TORCH_SPEC", text) and re.search(r"pip install [^\n]*\s\.\s", text)
    cmd = re.search(r"^CMD\s+(\[.*\])\s*$", text, re.M)
    assert cmd and json.loads(cmd.group(1)) == ["--help"], "the image's default command should teach (--help)"


@pytest.mark.parametrize("values", MATRIX)
def test_every_microturn_container_runs_a_real_microturn_command(values, rendered):
    image_repo = yaml.safe_load((CHART / "values.yaml").read_text())["image"]["repository"]
    ran = set()
    for c in containers(rendered(values)):
        if image_repo not in c.spec.get("image", "") or c.owner_kind.startswith("RayService"):
            continue  # other images (coturn, curl), and Ray pods whose command KubeRay sets
        cmd = c.command
        if cmd[:1] == ["microturn"]:
            build_parser().parse_args(cmd[1:])  # exits (SystemExit) on a command the CLI does not have
            ran.add(" ".join(a for a in cmd[1:] if not a.startswith("-")))
        elif cmd[:3] == ["python", "-m", "loadtest.smoke"]:
            # The WebRTC test call: loadtest/ is installed with the package (copied before pip install).
            text = _dockerfile()
            copied = re.search(r"^COPY loadtest \./loadtest$", text, re.M)
            installed = re.search(r"^RUN pip install [^\n]*\s\.\s", text, re.M)
            assert copied and installed and copied.start() < installed.start()
            include = re.search(r"^include = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), re.M)
            assert include and '"loadtest*"' in include.group(1)
            # every top-level package of the distribution is copied before the install
            packages = re.search(r"^package-dir = \{(.*)\}$", (ROOT / "pyproject.toml").read_text(), re.M)
            for top in re.findall(r'"(\w+)" = "\w+"', packages.group(1)):
                assert re.search(rf"^COPY {top} \./{top}$", text, re.M), (
                    f"the Dockerfile does not copy {top}/"
                )
            smoke_parser().parse_args(cmd[3:])
            ran.add("loadtest.smoke")
        else:
            assert cmd[:1] in (["python"], ["sh"]), f"{c.owner}/{c.name} runs {cmd}: not a microturn command"
    assert {"edge", "background", "tools", "bus setup", "loadtest.smoke"} <= ran, ran
    assert any(r.startswith("rollout operator") for r in ran), ran  # with its kopf --liveness URL
