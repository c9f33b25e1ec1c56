"""`microturn up` / `down` for real: NATS with JetStream and a Ray head start, report ready, and
stopping (by `down` or Ctrl-C) leaves no process behind. Port clashes and bad settings fail fast."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import urllib.request

import nats
import pytest

from microturn.localrun.process import group_members
from microturn.localrun.ray import ray_temp_dir
from microturn.localrun.supervisor import read_run_file

from .conftest import MICROTURN, Up, local_env, processes_mentioning


async def _anonymous_refused(url: str) -> bool:
    """The local run's NATS admits only the services' generated users."""
    try:
        nc = await nats.connect(url, connect_timeout=5, allow_reconnect=False)
    except Exception as exc:  # nats-py raises the server's -ERR 'Authorization Violation'
        return "authorization" in str(exc).lower()
    await nc.close()
    return False


def _topology(monitor: str) -> tuple[set[str], set[str]]:
    """Streams and durable consumers, as the monitoring endpoint reports them (no login needed)."""
    with urllib.request.urlopen(f"{monitor}/jsz?streams=true&consumers=true", timeout=5) as r:
        jsz = json.load(r)
    streams, consumers = set(), set()
    for account in jsz.get("account_details", []):
        for stream in account.get("stream_detail", []):
            streams.add(stream["name"])
            consumers |= {c["name"] for c in stream.get("consumer_detail", [])}
    return streams, consumers


@pytest.mark.slow
def test_up_reports_ready_and_down_leaves_nothing(tmp_path):
    state = tmp_path / "state"
    env = local_env()
    up = Up(state, env)
    try:
        up.wait_for("| ready", timeout_s=180)
        up.wait_for("Press Ctrl-C", timeout_s=10)
        banner = "\n".join(up.log)
        assert f"nats://127.0.0.1:{env['MICROTURN_NATS__PORT']}" in banner
        dashboard = f"http://127.0.0.1:{env['MICROTURN_RAY__DASHBOARD_PORT']}"
        assert dashboard in banner
        assert asyncio.run(_anonymous_refused(f"nats://127.0.0.1:{env['MICROTURN_NATS__PORT']}"))
        streams, consumers = _topology(f"http://127.0.0.1:{env['MICROTURN_NATS__MONITOR_PORT']}")
        assert {"MT_DELEGATIONS", "MT_TOOL_CALLS", "MT_TIMERS", "MT_UPDATES"} <= streams
        assert {"background", "tools", "timers"} <= consumers
        with urllib.request.urlopen(f"{dashboard}/api/gcs_healthz", timeout=5) as r:
            assert r.status == 200
        grpc_port = env["MICROTURN_INTERACTION__GRPC_PORT"]
        assert f"127.0.0.1:{grpc_port}" in banner
        run = read_run_file(state)
        assert run and set(run["children"]) == {
            "nats",
            "tools",
            "background",
            "ray",
            "interaction",
            "rollout",
            "edge",
        }
        edge_url = f"http://127.0.0.1:{env['MICROTURN_EDGE__PORT']}/"
        assert f"open       {edge_url}" in banner
        with urllib.request.urlopen(edge_url, timeout=5) as r:
            assert r.status == 200
        pgids = list(run["children"].values())
        assert all(group_members(g) for g in pgids)

        down = subprocess.run(
            [*MICROTURN, "--state-dir", str(state), "down"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert down.returncode == 0, down.stdout + down.stderr + up.drain()
        assert up.proc.wait(timeout=60) == 0
        assert not [g for g in pgids if group_members(g)]
        assert not processes_mentioning(str(state), str(ray_temp_dir(state)))
        assert read_run_file(state) is None
    finally:
        up.kill()


@pytest.mark.slow
def test_ctrl_c_stops_everything(tmp_path):
    state = tmp_path / "state"
    # Point Ray at an external address so this run is NATS only: the Ctrl-C path is what is tested.
    env = local_env(MICROTURN_RAY__ADDRESS="127.0.0.1:1")
    up = Up(state, env)
    try:
        up.wait_for("| ready", timeout_s=60)
        pgids = list(read_run_file(state)["children"].values())
        up.proc.send_signal(signal.SIGINT)
        assert up.proc.wait(timeout=60) == 0
        up.wait_for("| stopped", timeout_s=10)
        assert not [g for g in pgids if group_members(g)]
        assert not processes_mentioning(str(state))
    finally:
        up.kill()


def test_port_clash_is_a_clear_error(tmp_path):
    env = local_env(MICROTURN_RAY__ADDRESS="127.0.0.1:1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", int(env["MICROTURN_NATS__PORT"])))
        s.listen()
        res = subprocess.run(
            [*MICROTURN, "--state-dir", str(tmp_path / "s"), "up"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert res.returncode == 2
    assert f"127.0.0.1:{env['MICROTURN_NATS__PORT']} (nats.port)" in res.stderr
    assert not processes_mentioning(str(tmp_path / "s"))


def test_bad_setting_is_a_clear_error(tmp_path):
    env = local_env(MICROTURN_EDGE__PORT="0")
    res = subprocess.run(
        [*MICROTURN, "--state-dir", str(tmp_path / "s"), "up"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2
    assert "edge.port (MICROTURN_EDGE__PORT)" in res.stderr


def test_down_without_a_run(tmp_path):
    res = subprocess.run(
        [*MICROTURN, "--state-dir", str(tmp_path), "down"],
        env=local_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0 and "no local run" in res.stdout
