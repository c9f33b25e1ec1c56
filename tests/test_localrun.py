"""`microturn up` / `down` for real: NATS with JetStream and a Ray head start, report ready, and
stopping (by `down` or Ctrl-C) leaves no process behind. Port clashes and bad settings fail fast."""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import nats
import psutil
import pytest
from microturn.localrun.ports import free_port
from microturn.localrun.process import group_members
from microturn.localrun.ray import ray_temp_dir
from microturn.localrun.supervisor import read_run_file

MICROTURN = [sys.executable, "-m", "microturn"]


def local_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROTURN_")}
    env.update(
        MICROTURN_NATS__PORT=str(free_port()),
        MICROTURN_NATS__MONITOR_PORT=str(free_port()),
        MICROTURN_RAY__PORT=str(free_port()),
        MICROTURN_RAY__DASHBOARD_PORT=str(free_port()),
        MICROTURN_RAY__DASHBOARD_AGENT_PORT=str(free_port()),
        MICROTURN_RAY__CLIENT_SERVER_PORT=str(free_port()),
        MICROTURN_RAY__NUM_CPUS="1",
    )
    env.update(extra)
    return env


class Up:
    """A `microturn up` child whose output is read line by line in a thread."""

    def __init__(self, state: Path, env: dict[str, str]) -> None:
        self.state, self.env = state, env
        self.proc = subprocess.Popen(
            [*MICROTURN, "--state-dir", str(state), "up"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip())

    def wait_for(self, text: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            self.log.append(line)
            if text in line:
                return line
        raise AssertionError(f"{text!r} not seen; output:\n" + "\n".join(self.log[-40:]))

    def drain(self) -> str:
        """Everything printed so far (for assertion messages)."""
        while not self.lines.empty():
            self.log.append(self.lines.get())
        return "\n".join(self.log[-40:])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def processes_mentioning(*needles: str) -> list[str]:
    found = []
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if (
            p.info["status"] != psutil.STATUS_ZOMBIE
            and any(n in cmd for n in needles)
            and p.pid != os.getpid()
        ):
            found.append(f"{p.pid}: {cmd[:120]}")
    return found


async def _jetstream_ok(url: str) -> bool:
    nc = await nats.connect(url, connect_timeout=5)
    try:
        js = nc.jetstream()
        await js.add_stream(name="PING", subjects=["ping.>"])
        ack = await js.publish("ping.1", b"x")
        return ack.seq == 1
    finally:
        await nc.close()


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
        assert asyncio.run(_jetstream_ok(f"nats://127.0.0.1:{env['MICROTURN_NATS__PORT']}"))
        with urllib.request.urlopen(f"{dashboard}/api/gcs_healthz", timeout=5) as r:
            assert r.status == 200
        run = read_run_file(state)
        assert run and set(run["children"]) == {"nats", "ray"}
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
