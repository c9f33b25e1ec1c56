"""The ``microturn`` command as containers run it: each service's subcommand, the config check that
catches a mistyped variable, the Serve config renderer, and ``bus setup`` against a real NATS."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from microturn.bus import SERVICE_CONSUMERS, subjects
from microturn.bus.connection import Bus
from microturn.cli import build_parser
from microturn.config import BusSettings, load_settings

MICROTURN = [sys.executable, "-m", "microturn"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MICROTURN_")}
    return subprocess.run(
        [*MICROTURN, *args], capture_output=True, text=True, timeout=120, env={**base, **(env or {})}
    )


def test_help_names_every_service_command():
    out = run("--help")
    assert out.returncode == 0
    for command in ("up", "down", "edge", "interaction", "background", "tools", "bus setup", "config check"):
        assert f"microturn {command}" in out.stdout or f"  {command}" in out.stdout, command


@pytest.mark.parametrize(
    "argv",
    [["edge"], ["background"], ["tools"], ["interaction", "--deploy"], ["bus", "setup"], ["config", "check"]],
)
def test_service_commands_parse(argv):
    ns = build_parser().parse_args(argv)
    assert callable(ns.fn)


def test_config_check_refuses_a_mistyped_variable():
    # A mistyped section would be ignored by the settings loader: the check names it.
    out = run("config", "check", env={"MICROTURN_EDEG__PORT": "8081"})
    assert out.returncode == 2
    assert "MICROTURN_EDEG__PORT" in out.stderr and "no setting" in out.stderr
    # A mistyped field inside a known section is refused by the loader itself, naming it.
    out = run("config", "check", env={"MICROTURN_EDGE__PROT": "8081"})
    assert out.returncode == 2
    assert "edge.prot (MICROTURN_EDGE__PROT)" in out.stderr


def test_config_check_names_an_invalid_value_and_its_variable():
    out = run("config", "check", env={"MICROTURN_EDGE__PORT": "99999"})
    assert out.returncode == 2
    assert "edge.port" in out.stderr and "MICROTURN_EDGE__PORT" in out.stderr


def test_config_check_shows_effective_settings_without_secrets(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("edge:\n  max_sessions: 7\n")
    out = run(
        "--config",
        str(cfg),
        "config",
        "check",
        "--show",
        env={"MICROTURN_BACKGROUND__OPENAI_API_KEY": "sk-x"},
    )
    assert out.returncode == 0, out.stderr
    shown = yaml.safe_load(out.stdout)
    assert shown["edge"]["max_sessions"] == 7
    assert "sk-x" not in out.stdout


def test_interaction_print_renders_the_serve_config_from_the_environment():
    out = run(
        "interaction",
        "--print",
        env={"MICROTURN_INTERACTION__GRPC_PORT": "9123", "MICROTURN_INTERACTION__REPLICAS": "3"},
    )
    assert out.returncode == 0, out.stderr
    doc = yaml.safe_load(out.stdout)
    assert doc["grpc_options"]["port"] == 9123
    (app,) = doc["applications"]
    assert app["deployments"][0]["num_replicas"] == 3
    # Replicas receive only what differs from the defaults.
    assert app["args"]["settings"] == {"interaction": {"grpc_port": 9123, "replicas": 3}}


async def test_bus_setup_creates_streams_and_durable_consumers(nats_server):
    env = {"MICROTURN_NATS__URL": nats_server.url, "MICROTURN_BUS__STORAGE": "memory"}
    out = run("bus", "setup", "--timeout", "20", env=env)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    bus = await Bus.connect(nats_server.url, BusSettings(storage="memory"), create_streams=False)
    try:
        for d in SERVICE_CONSUMERS:
            info = await bus.js.consumer_info(d.stream, d.name)
            assert info.config.filter_subject == d.subject
            assert f"{d.stream}/{d.name}" in report["ready"]
        stream = await bus.js.stream_info(subjects.DELEGATIONS_STREAM)
        assert stream.config.subjects == [subjects.DELEGATION_REQUEST]
    finally:
        await bus.close()
    again = run("bus", "setup", "--timeout", "20", env=env)  # idempotent
    assert again.returncode == 0, again.stderr


def test_bus_setup_says_when_nats_is_unreachable():
    from microturn.localrun.ports import free_port

    out = run(
        "bus", "setup", "--timeout", "1", env={"MICROTURN_NATS__URL": f"nats://127.0.0.1:{free_port()}"}
    )
    assert out.returncode == 1
    assert "cannot reach NATS" in out.stderr


def test_settings_loaded_by_a_service_match_config_check(monkeypatch):
    monkeypatch.setenv("MICROTURN_TOOLS__GRPC_PORT", "9555")
    assert load_settings().tools.grpc_port == 9555
