"""``microturn up``: start the whole system as supervised children, report readiness, stream
logs, restart a crashed child a few times, and stop everything on Ctrl-C, SIGTERM or
``microturn down`` — leaving no process behind.

The run is recorded in ``<state_dir>/run.json`` (supervisor pid, each child's process group) so
``microturn down`` can stop it from another terminal and sweep up anything left.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TextIO

import psutil
from pydantic import SecretStr

from microturn.bus.permissions import INTERACTION, ROLLOUT, SETUP, generate_passwords
from microturn.config import Settings
from microturn.localrun.nats import NatsServer
from microturn.localrun.ports import check_ports_free
from microturn.localrun.process import ManagedProcess, ServiceSpec, group_members, kill_group
from microturn.localrun.ray import ray_head_spec

RUN_FILE = "run.json"
MAX_RESTARTS = 3
RESTART_WINDOW_S = 60.0


def nats_env(user: str, passwords: Mapping[str, str] | None) -> dict[str, str]:
    """A child's NATS credentials (none with an external NATS). The embedded server's topology is
    made by the setup step, so services only bind, as on Kubernetes."""
    if passwords is None:
        return {}
    return {
        "MICROTURN_NATS__USER": user,
        "MICROTURN_NATS__PASSWORD": passwords[user],
        "MICROTURN_BUS__MANAGE_TOPOLOGY": "false",
    }


def _as_user(settings: Settings, user: str, passwords: Mapping[str, str]) -> Settings:
    nats = settings.nats.model_copy(update={"user": user, "password": SecretStr(passwords[user])})
    return settings.model_copy(update={"nats": nats})


def nats_spec(settings: Settings, passwords: Mapping[str, str] | None = None) -> ServiceSpec:
    """The embedded nats-server; with ``passwords`` (user -> password) it admits only those users,
    and is ready once JetStream is up and the setup step (as ``setup``) made the streams and consumers."""
    server = NatsServer(
        store_dir=settings.state_dir / "nats",
        host=settings.nats.host,
        port=settings.nats.port,
        monitor_port=settings.nats.monitor_port,
        users=passwords,
    )
    server.write_config()  # no secrets in it: the server reads the passwords from its environment
    ready = server.is_ready
    if passwords is not None:
        setup_settings = _as_user(settings, SETUP, passwords)

        def ready() -> bool:  # runs in a thread (ManagedProcess.wait_ready)
            return server.is_ready() and _set_up(setup_settings)

    return ServiceSpec(
        name="nats",
        argv=server.command(),
        ready=ready,
        endpoints={"url": server.url, "monitor": f"http://{server.host}:{server.monitor_port}"},
        env=server.env(),
        ready_timeout_s=30.0,
    )


def _set_up(settings: Settings) -> bool:
    """``microturn bus setup`` against the embedded server (again after each restart: idempotent)."""
    from microturn.bus.setup import setup

    try:
        asyncio.run(setup(settings, timeout_s=5.0))
        return True
    except Exception as exc:
        print(f"microturn: bus setup failed, retrying: {exc}", file=sys.stderr)
        return False


def interaction_spec(settings: Settings, passwords: Mapping[str, str] | None = None) -> ServiceSpec:
    """Deploys the Serve config to the Ray cluster and reports the application's status. (The
    replicas' credentials come from the Ray head's environment, never through the Serve config.)"""
    from microturn.interaction.serve_config import is_running

    cfg = settings.interaction
    return ServiceSpec(
        name="interaction",
        argv=[sys.executable, "-m", "microturn", "interaction", "--deploy", "--watch"],
        ready=lambda: is_running(settings),
        endpoints={"grpc": f"{cfg.host}:{cfg.grpc_port}", "application": cfg.app_name},
        env={"MICROTURN_BUS__MANAGE_TOPOLOGY": "false"} if passwords is not None else {},
        ready_timeout_s=300.0,
        stop_grace_s=5.0,
    )


def http_ok(url: str) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    return probe


# Services that run as `microturn <name>`, with their /metrics + /healthz port offset.
BUS_SERVICES = {"tools": 1, "background": 2}


def service_spec(settings: Settings, name: str, passwords: Mapping[str, str] | None = None) -> ServiceSpec:
    port = settings.telemetry.local_metrics_base_port + BUS_SERVICES[name]
    host = settings.telemetry.metrics_host
    endpoints = {"metrics": f"http://{host}:{port}/metrics"}
    if name == "tools":
        endpoints["grpc"] = f"127.0.0.1:{settings.tools.grpc_port}"
    return ServiceSpec(
        name=name,
        argv=[sys.executable, "-m", "microturn", name],
        ready=http_ok(f"http://{host}:{port}/healthz"),
        endpoints=endpoints,
        env={"MICROTURN_TELEMETRY__METRICS_PORT": str(port), **nats_env(name, passwords)},
        ready_timeout_s=180.0,
    )


def rollout_spec(settings: Settings, passwords: Mapping[str, str] | None = None) -> ServiceSpec:
    """The local rollout controller (microturn.rollout.local): ready once it wrote its status."""
    from microturn.rollout.store import rollout_dir

    status = rollout_dir(settings) / "status.json"
    started = time.time()
    return ServiceSpec(
        name="rollout",
        argv=[sys.executable, "-m", "microturn", "rollout", "controller"],
        ready=lambda: status.is_file() and status.stat().st_mtime >= started,
        endpoints={"status": "microturn rollout status"},
        env=nats_env(ROLLOUT, passwords),
        ready_timeout_s=60.0,
    )


def edge_spec(settings: Settings) -> ServiceSpec:
    from microturn.rollout.store import routing_path

    url = f"http://{settings.edge.host}:{settings.edge.port}"
    # New calls follow the local rollout's routing table (none yet: the default application).
    routing = settings.edge.routing_file or routing_path(settings)
    return ServiceSpec(
        name="edge",
        argv=[sys.executable, "-m", "microturn", "edge"],
        ready=http_ok(f"{url}/healthz"),
        endpoints={"open": f"{url}/"},
        env={"MICROTURN_EDGE__ROUTING_FILE": str(routing)},
        ready_timeout_s=60.0,
    )


def build_specs(settings: Settings) -> list[ServiceSpec]:
    """The children of a local run, in start order (stopped in reverse): infrastructure first,
    then the services from the back of the data path to the front, the edge last."""
    specs = []
    # The embedded server gets fresh random passwords at every start, one per NATS user.
    passwords = generate_passwords() if settings.nats.url is None else None
    if settings.nats.url is None:
        specs.append(nats_spec(settings, passwords))
    specs += [service_spec(settings, "tools", passwords), service_spec(settings, "background", passwords)]
    if settings.ray.address is None:
        head = ray_head_spec(settings.ray, settings.state_dir)
        # Serve replicas inherit the Ray head's environment: the interaction user's credentials.
        specs.append(dataclasses.replace(head, env={**head.env, **nats_env(INTERACTION, passwords)}))
        specs.append(interaction_spec(settings, passwords))
        specs.append(rollout_spec(settings, passwords))
    specs.append(edge_spec(settings))
    return specs


def required_ports(settings: Settings) -> list[tuple[str, str, int]]:
    """(setting, host, port) for every fixed port the local run binds."""
    ports = []
    if settings.nats.url is None:
        h = settings.nats.host
        ports += [("nats.port", h, settings.nats.port), ("nats.monitor_port", h, settings.nats.monitor_port)]
    if settings.ray.address is None:
        r = settings.ray
        ports += [
            ("ray.port", "127.0.0.1", r.port),
            ("ray.dashboard_port", "127.0.0.1", r.dashboard_port),
            ("ray.dashboard_agent_port", "127.0.0.1", r.dashboard_agent_port),
            ("ray.client_server_port", "127.0.0.1", r.client_server_port),
            ("interaction.grpc_port", "0.0.0.0", settings.interaction.grpc_port),
            ("interaction.http_port", settings.interaction.host, settings.interaction.http_port),
        ]
    base = settings.telemetry.local_metrics_base_port
    for name, offset in BUS_SERVICES.items():
        ports.append(
            (
                f"telemetry.local_metrics_base_port (+{offset}: {name})",
                settings.telemetry.metrics_host,
                base + offset,
            )
        )
    ports.append(("tools.grpc_port", "127.0.0.1", settings.tools.grpc_port))
    ports.append(("edge.port", settings.edge.host, settings.edge.port))
    return ports


class RunAlreadyActive(RuntimeError):
    pass


class Supervisor:
    def __init__(self, settings: Settings, specs: list[ServiceSpec], out: TextIO = sys.stdout) -> None:
        self.settings = settings
        self.state_dir = settings.state_dir
        self.out = out
        self.children = [ManagedProcess(s, out, i) for i, s in enumerate(specs)]
        self._stopping = asyncio.Event()
        self._restarts: dict[str, list[float]] = {}

    # -- bookkeeping --------------------------------------------------------------------------
    @property
    def run_file(self) -> Path:
        return self.state_dir / RUN_FILE

    def _write_run_file(self) -> None:
        data = {
            "supervisor_pid": os.getpid(),
            "started_unix": time.time(),
            "children": {c.spec.name: c.pid for c in self.children if c.pid},
        }
        tmp = self.run_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.run_file)

    def say(self, msg: str) -> None:
        self.out.write(f"{'microturn':>11} | {msg}\n")
        self.out.flush()

    # -- lifecycle ----------------------------------------------------------------------------
    async def run(self) -> int:
        """Start, wait until stopped, stop. Returns the process exit code."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        other = read_run_file(self.state_dir)
        if other and _pid_alive(other.get("supervisor_pid", -1)):
            raise RunAlreadyActive(
                f"a local run is already active (pid {other['supervisor_pid']}, state dir {self.state_dir}): "
                "stop it with `make down` first"
            )
        check_ports_free(required_ports(self.settings))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stopping.set)
        code = 0
        try:
            for child in self.children:
                if self._stopping.is_set():
                    break
                self.say(f"starting {child.spec.name}")
                await child.start()
                self._write_run_file()
                await _race(child.wait_ready(), self._stopping)
            if not self._stopping.is_set():
                self._banner()
                code = await self._watch()
        except (RuntimeError, TimeoutError) as exc:
            self.say(f"error: {exc}")
            code = 1
        finally:
            await self.stop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        return code

    async def _watch(self) -> int:
        """Restart children that die (at most MAX_RESTARTS per RESTART_WINDOW_S) until stopped."""
        while not self._stopping.is_set():
            waits = {asyncio.create_task(c.wait()): c for c in self.children}
            stop = asyncio.create_task(self._stopping.wait())
            done, _ = await asyncio.wait([*waits, stop], return_when=asyncio.FIRST_COMPLETED)
            for t in [*waits, stop]:
                if t not in done:
                    t.cancel()
            if stop in done:
                return 0
            for task in done:
                child = waits[task]
                now = time.monotonic()
                recent = [t for t in self._restarts.get(child.spec.name, []) if now - t < RESTART_WINDOW_S]
                if len(recent) >= MAX_RESTARTS:
                    self.say(
                        f"{child.spec.name} keeps exiting ({len(recent)} restarts in {RESTART_WINDOW_S:.0f}s): "
                        "stopping everything"
                    )
                    return 1
                self._restarts[child.spec.name] = [*recent, now]
                backoff = 2 ** len(recent)
                self.say(f"{child.spec.name} exited with code {child.returncode}; restarting in {backoff}s")
                await asyncio.sleep(backoff)
                await child.stop()
                await child.start()
                self._write_run_file()
                await child.wait_ready()
                self.say(f"{child.spec.name} is back")
        return 0

    async def stop(self) -> None:
        for child in reversed(self.children):
            if child.proc is not None:
                self.say(f"stopping {child.spec.name}")
                await child.stop()
        with contextlib.suppress(FileNotFoundError):
            self.run_file.unlink()
        self.say("stopped")

    def _banner(self) -> None:
        lines = ["ready"]
        for child in self.children:
            for key, value in child.spec.endpoints.items():
                lines.append(f"  {child.spec.name:<12} {key:<10} {value}")
        pages = [c.spec.endpoints["open"] for c in self.children if "open" in c.spec.endpoints]
        if pages:
            lines.append(f"Open {pages[0]} in a browser to talk to the model.")
        lines.append("Press Ctrl-C (or run `make down`) to stop.")
        for line in lines:
            self.say(line)


async def _race(coro: object, stopping: asyncio.Event) -> None:
    task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
    stop = asyncio.create_task(stopping.wait())
    done, _ = await asyncio.wait([task, stop], return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        stop.cancel()
        task.result()
    else:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def read_run_file(state_dir: Path) -> dict | None:
    try:
        return json.loads((state_dir / RUN_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _pid_alive(pid: int) -> bool:
    """True for a running process; a zombie (exited, not yet reaped by its parent) counts as gone."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def down(state_dir: Path, timeout_s: float = 60.0, out: TextIO = sys.stdout) -> int:
    """Stop the run recorded in state_dir: SIGTERM the supervisor, wait, then kill any child group
    still alive. Returns 0 when nothing of the run is left (also when nothing was running)."""
    run = read_run_file(state_dir)
    if run is None:
        out.write(f"microturn: no local run recorded in {state_dir}\n")
        return 0
    pid = run.get("supervisor_pid", -1)
    if _pid_alive(pid):
        out.write(f"microturn: stopping the local run (pid {pid})\n")
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
    leftovers = [(name, pgid) for name, pgid in run.get("children", {}).items() if group_members(pgid)]
    for name, pgid in leftovers:
        out.write(f"microturn: killing leftover {name} (process group {pgid})\n")
        kill_group(pgid)
    with contextlib.suppress(FileNotFoundError):
        (state_dir / RUN_FILE).unlink()
    if _pid_alive(pid):
        out.write(f"microturn: supervisor pid {pid} did not exit in {timeout_s:.0f}s\n")
        return 1
    out.write("microturn: stopped\n")
    return 0
