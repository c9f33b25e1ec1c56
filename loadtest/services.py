"""The run's service processes (found from run.json's process groups and Ray's actor table), their
memory, their health, and the two faults a soak injects: a Serve replica SIGKILL and a NATS crash.

Everything here blocks (psutil scans, HTTP, Ray's state API); the soak calls it in a thread."""

from __future__ import annotations

import contextlib
import os
import signal
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass

import psutil

from loadtest.stack import LEVELS, Stack
from microturn.interaction.serve_config import app_status
from microturn.localrun.process import group_members
from microturn.localrun.ray import ray_temp_dir

MB = 1024 * 1024


@dataclass(frozen=True)
class Replica:
    name: str  # Ray actor name, e.g. SERVE_REPLICA::interaction#Interaction#abc123
    pid: int

    @property
    def short(self) -> str:
        return self.name.rsplit("#", 1)[-1]


def replicas(stack: Stack) -> list[Replica]:
    """The live Serve replica actors of the run (as tests/system's replica_pid finds them)."""
    from ray.util.state import list_actors

    actors = list_actors(
        address=stack.dashboard_url, filters=[("state", "=", "ALIVE")], detail=True, limit=1000, timeout=20
    )
    found = [
        Replica(a.name or "", int(a.pid))
        for a in actors
        if a.class_name.startswith("ServeReplica:") and a.pid
    ]
    return sorted(found, key=lambda r: r.name)


def _rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            total += psutil.Process(pid).memory_info().rss
    return total


def sample(stack: Stack) -> dict[str, dict]:
    """RSS of every service, by name: each child group of run.json (the Ray head's group without
    the replicas), and each replica actor. ``pids`` says which processes were counted."""
    reps = replicas(stack)
    rep_pids = {r.pid for r in reps}
    out: dict[str, dict] = {}
    for name, pgid in stack.children().items():
        members = [p for p in group_members(pgid) if p not in rep_pids]
        label = "ray head" if name == "ray" else name
        if name == "interaction":
            label = "interaction deployer"
        out[label] = {"pgid": pgid, "pids": sorted(members), "rss_mb": _rss(members) / MB}
    for r in reps:
        out[f"replica {r.short}"] = {"pgid": None, "pids": [r.pid], "rss_mb": _rss([r.pid]) / MB}
    return out


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status == 200
    except OSError:
        return False


def health(stack: Stack, want_replicas: int) -> dict[str, str]:
    """'ok' or what is wrong, for the supervisor and every service (by its own probe)."""
    env = stack.env
    base = int(env["MICROTURN_TELEMETRY__LOCAL_METRICS_BASE_PORT"])
    result: dict[str, str] = {}
    result["supervisor"] = "ok" if stack.proc.poll() is None else f"exited with {stack.proc.returncode}"
    probes = {
        "nats": f"http://127.0.0.1:{env['MICROTURN_NATS__MONITOR_PORT']}/healthz?js-enabled-only=true",
        "tools": f"http://127.0.0.1:{base + 1}/healthz",
        "background": f"http://127.0.0.1:{base + 2}/healthz",
        "ray": f"{stack.dashboard_url}/api/gcs_healthz",
        "edge": f"{stack.edge_url}/healthz",
    }
    children = stack.children()
    for name, url in probes.items():
        pgid = children.get(name)
        if pgid is None or not psutil.pid_exists(pgid):
            result[name] = "no live process recorded in run.json"
        else:
            result[name] = "ok" if _ok(url) else f"health probe failed: {url}"
    try:
        status, message = app_status(
            stack.dashboard_url, env.get("MICROTURN_INTERACTION__APP_NAME", "interaction")
        )
        n = len(replicas(stack))
        if status != "RUNNING":
            result["interaction"] = f"application {status}: {message}"[:200]
        elif n < want_replicas:
            result["interaction"] = f"{n} of {want_replicas} replicas alive"
        else:
            result["interaction"] = "ok"
    except Exception as exc:
        result["interaction"] = f"cannot read the application status: {exc}"[:200]
    return result


def edge_sessions(stack: Stack) -> int | None:
    """Sessions the edge holds now (its /healthz says "ok N/M sessions")."""
    try:
        with urllib.request.urlopen(f"{stack.edge_url}/healthz", timeout=3) as r:
            return int(r.read().decode().split()[1].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None


def kill_replica(stack: Stack, timeout_s: float = 180) -> dict:
    """SIGKILL the first live Serve replica, then wait for the application to have as many live
    replicas as before (Serve starts a new one). Returns what happened, with times."""
    before = replicas(stack)
    if not before:
        return {"error": "no live replica to kill"}
    victim = before[0]
    at = time.monotonic()
    os.kill(victim.pid, signal.SIGKILL)
    info: dict = {"replica": victim.name, "pid": victim.pid, "at": at}
    deadline = at + timeout_s
    while time.monotonic() < deadline:
        time.sleep(1.0)
        with contextlib.suppress(Exception):
            now = replicas(stack)
            if victim.pid not in {r.pid for r in now} and len(now) >= len(before):
                info["replaced_by"] = [r.name for r in now if r not in before]
                info["back_after_s"] = time.monotonic() - at
                return info
    info["error"] = f"no replacement replica within {timeout_s:.0f} s"
    return info


def restart_nats(stack: Stack, sig: int = signal.SIGKILL, timeout_s: float = 120) -> dict:
    """Kill the nats-server child; ``microturn up`` notices and starts it again on the same ports and
    store. Returns when JetStream answers again (and run.json has the new pid), with times."""
    old = stack.children().get("nats")
    if old is None or not group_members(old):
        return {"error": "no nats-server recorded in run.json"}
    monitor = f"http://127.0.0.1:{stack.env['MICROTURN_NATS__MONITOR_PORT']}/healthz?js-enabled-only=true"
    at = time.monotonic()
    os.kill(old, sig)
    info: dict = {"pid": old, "signal": signal.Signals(sig).name, "at": at}
    deadline = at + timeout_s
    while time.monotonic() < deadline:
        new = stack.children().get("nats")
        up = _ok(monitor)
        if new is not None and new != old and up:
            info["new_pid"] = new
            info["back_after_s"] = time.monotonic() - at
            stack.note_groups()
            return info
        time.sleep(0.2)
    info["error"] = f"nats-server not back within {timeout_s:.0f} s"
    return info


def serve_log_levels(stack: Stack, samples: int = 8) -> dict:
    """WARNING/ERROR/Traceback lines in Ray Serve's logs (replicas, controller, proxy), which do not
    reach `microturn up`'s output; read before `microturn down`, which removes Ray's temp dir."""
    logs = ray_temp_dir(stack.state) / "session_latest" / "logs" / "serve"
    counts: Counter[str] = Counter()
    first: list[str] = []
    for path in sorted(logs.glob("*.log")):
        kind = path.name.split("_", 1)[0]  # replica, controller, proxy
        with contextlib.suppress(OSError), path.open(errors="replace") as f:
            for line in f:
                m = LEVELS.search(line)
                if m:
                    counts[f"{kind} {m.group(1)}"] += 1
                    if m.group(1) != "WARNING" and len(first) < samples:
                        first.append(f"{path.name}: {line.strip()[:300]}")
    return {"counts": dict(counts), "samples": first}
