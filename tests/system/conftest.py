"""A real local run (`microturn up`) on free ports, for tests of the whole system."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from microturn.localrun.ports import free_port, free_port_run

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
        MICROTURN_RAY__NUM_CPUS="4",
        MICROTURN_INTERACTION__GRPC_PORT=str(free_port()),
        MICROTURN_INTERACTION__HTTP_PORT=str(free_port()),
        MICROTURN_TOOLS__GRPC_PORT=str(free_port()),
        MICROTURN_EDGE__PORT=str(free_port()),
        MICROTURN_EDGE__ICE_HOST_ADDRESSES='["127.0.0.1"]',
        # the services' metrics ports are base + 1 and base + 2: the whole run must be free
        MICROTURN_TELEMETRY__LOCAL_METRICS_BASE_PORT=str(free_port_run(3)),
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


class LocalRun:
    """A running `microturn up` (module-scoped in tests that share one)."""

    def __init__(self, state: Path, **env: str) -> None:
        self.state = state
        self.env = local_env(**env)
        self.up = Up(state, self.env)

    def wait_ready(self, timeout_s: float = 300) -> LocalRun:
        self.up.wait_for("| ready", timeout_s=timeout_s)
        return self

    def port(self, name: str) -> int:
        return int(self.env[name])

    def stop(self) -> None:
        subprocess.run([*MICROTURN, "--state-dir", str(self.state), "down"], env=self.env, timeout=120,
                       capture_output=True)  # fmt: skip
        try:
            self.up.proc.wait(timeout=60)
        finally:
            self.up.kill()
