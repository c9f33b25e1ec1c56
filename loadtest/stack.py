"""The system under test: ``microturn up`` on free loopback ports with its own state dir, the way
a user starts it, and ``microturn down`` with a check that nothing of the run is left behind."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from pathlib import Path
from typing import TextIO

import psutil

from microturn.localrun.ports import free_port, free_port_run
from microturn.localrun.process import group_members
from microturn.localrun.ray import ray_temp_dir
from microturn.localrun.supervisor import read_run_file

MICROTURN = [sys.executable, "-m", "microturn"]

# Every port a local run binds, as the environment variables that set them.
PORT_VARS = (
    "MICROTURN_NATS__PORT",
    "MICROTURN_NATS__MONITOR_PORT",
    "MICROTURN_RAY__PORT",
    "MICROTURN_RAY__DASHBOARD_PORT",
    "MICROTURN_RAY__DASHBOARD_AGENT_PORT",
    "MICROTURN_RAY__CLIENT_SERVER_PORT",
    "MICROTURN_INTERACTION__GRPC_PORT",
    "MICROTURN_INTERACTION__HTTP_PORT",
    "MICROTURN_TOOLS__GRPC_PORT",
    "MICROTURN_EDGE__PORT",
    "MICROTURN_TELEMETRY__LOCAL_METRICS_BASE_PORT",
)
LEVELS = re.compile(r"\b(ERROR|WARNING|CRITICAL|Traceback)\b")


def run_env(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment without MICROTURN_* settings, free ports for every port the run
    binds (so a soak never collides with a developer's `make up` or the tests), then ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROTURN_")}
    env.update({name: str(free_port()) for name in PORT_VARS})
    # the services' metrics ports are base + 1 and base + 2: the whole run must be free
    env["MICROTURN_TELEMETRY__LOCAL_METRICS_BASE_PORT"] = str(free_port_run(3))
    env["MICROTURN_EDGE__ICE_HOST_ADDRESSES"] = '["127.0.0.1"]'  # one machine: loopback candidates
    env.update(extra)
    return env


class Stack:
    """A running ``microturn up``; its output is read in a thread, kept in a bounded tail, counted
    per service and level, and copied to ``log_path`` when given."""

    def __init__(
        self, extra_env: dict[str, str], log_path: Path | None = None, keep_state: bool = False
    ) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="microturn-soak-"))
        self.state = self.workdir / "state"
        self.env = run_env(extra_env)
        self.keep_state = keep_state
        self.tail: deque[str] = deque(maxlen=200)
        self.levels: Counter[tuple[str, str]] = Counter()  # (service, level) -> lines
        self.supervisor_lines: list[tuple[float, str]] = []  # "microturn | ..." lines, with arrival time
        self._log: TextIO | None = log_path.open("w") if log_path else None
        self._ready = threading.Event()
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            [*MICROTURN, "--state-dir", str(self.state), "up"],
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            errors="replace",
        )  # fmt: skip
        self.groups_seen: set[int] = set()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def port(self, name: str) -> int:
        return int(self.env[f"MICROTURN_{name}"])

    @property
    def edge_url(self) -> str:
        return f"http://127.0.0.1:{self.port('EDGE__PORT')}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.port('RAY__DASHBOARD_PORT')}"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.rstrip("\n")
            self.tail.append(line)
            if self._log is not None:
                self._log.write(line + "\n")
            service, _, text = line.partition(" | ")
            service = service.strip()
            if service == "microturn":
                self.supervisor_lines.append((time.monotonic(), text))
                if text == "ready":
                    self._ready.set()
            m = LEVELS.search(text)
            if m:
                self.levels[(service, m.group(1))] += 1
        if self._log is not None:
            self._log.flush()

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self._ready.wait(0.5):
            if self.proc.poll() is not None:
                raise RuntimeError(f"microturn up exited with {self.proc.returncode} before ready")
            if time.monotonic() > deadline:
                raise TimeoutError(f"microturn up not ready after {timeout_s:.0f} s")
        self.note_groups()

    def run_file(self) -> dict:
        return read_run_file(self.state) or {}

    def children(self) -> dict[str, int]:
        """Child name -> process group (the child's pid) as run.json records them now."""
        return {k: int(v) for k, v in self.run_file().get("children", {}).items()}

    def note_groups(self) -> None:
        """Remember every process group the run had, to check after ``down`` that none is left."""
        self.groups_seen.update(self.children().values())

    def down(self, timeout_s: float = 120) -> tuple[int, list[str]]:
        """``microturn down``; returns its exit code and whatever of the run is still alive after it
        (process groups, or processes naming the state dir or Ray's temp dir)."""
        self.note_groups()
        res = subprocess.run(
            [*MICROTURN, "--state-dir", str(self.state), "down"],
            env=self.env, timeout=timeout_s, capture_output=True, text=True,
        )  # fmt: skip
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=10)
        left = [
            f"process group {g}: pids {group_members(g)}"
            for g in sorted(self.groups_seen)
            if group_members(g)
        ]
        left += processes_naming(str(self.state), str(ray_temp_dir(self.state)))
        if self._log is not None:
            self._log.write(f"--- microturn down (exit {res.returncode}):\n{res.stdout}{res.stderr}")
            self._log.close()
            self._log = None
        return res.returncode, left

    def kill(self) -> None:
        """Last resort after a failure: kill the supervisor and every group the run had."""
        self.note_groups()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for g in self.groups_seen:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(g, 9)

    def cleanup(self) -> None:
        if not self.keep_state:
            import shutil

            shutil.rmtree(self.workdir, ignore_errors=True)
            shutil.rmtree(ray_temp_dir(self.state), ignore_errors=True)


def processes_naming(*needles: str) -> list[str]:
    """Live processes whose command line contains one of ``needles`` (leftovers of a run)."""
    found = []
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        with contextlib.suppress(psutil.Error):
            cmd = " ".join(p.info["cmdline"] or [])
            if (
                p.info["status"] != psutil.STATUS_ZOMBIE
                and p.pid != os.getpid()
                and any(n in cmd for n in needles)
            ):
                found.append(f"pid {p.pid}: {cmd[:120]}")
    return found
