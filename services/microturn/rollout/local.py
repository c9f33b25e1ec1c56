"""The rollout controller of a local run (``microturn up`` runs it as the ``rollout`` child).

It carries out the state machine's actions on the local Ray cluster and files in
``<state_dir>/rollout/``:

- ``versions.json``: the versions deployed, each as its own Serve application (name, checkpoint);
  ``microturn interaction --deploy`` reads it too, so a restarted deployer keeps every version;
- ``routing.json``: the routing table the edge applies to new calls (``edge.routing_file``);
- ``spec.json`` (written by ``microturn rollout start``), ``command.json`` (pause/resume/abort),
  ``status.json`` (the status, rewritten every loop) and ``events.jsonl`` (every event, appended).

Observations: each application's Serve status (ready), the replicas' service reports from the bus
(``mt.stats.interaction.*``, read as the ``rollout`` user), and a smoke call to the candidate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc
import httpx
from opentelemetry import metrics
from opentelemetry.metrics import Observation
from pydantic import ValidationError

from microturn.bus import Bus, subjects
from microturn.config import InteractionSettings, LimitsSettings, Settings
from microturn.interaction import serve_config
from microturn.interaction.client import InteractionSession, SessionRejected
from microturn.interaction.stats import ReplicaStats, StatsError
from microturn.model.checkpoint import SHIPPED_CHECKPOINT, checkpoint_version, shipped_checkpoints
from microturn.protocol.chunks import input_chunk
from microturn.protocol.clock import ChunkClock, now_unix_ms
from microturn.rollout import store
from microturn.rollout.machine import (
    Action,
    Command,
    DeleteDeployment,
    EndSessions,
    EnsureDeployment,
    Observations,
    RecordEvent,
    RolloutSpec,
    RolloutStatus,
    SetRouting,
    SpecError,
    VersionObservation,
    decide,
    initial,
    retire_reason,
)
from microturn.rollout.observe import StatsWindow
from microturn.rollout.routing import RoutingTable
from microturn.rollout.store import rollout_dir, routing_path, write_json
from microturn.telemetry import RateLimitedLog

log = logging.getLogger(__name__)

LOOP_S = 1.0
SMOKE_CHUNKS = 10


@dataclass(frozen=True)
class Deployed:
    app: str
    checkpoint: str | None  # None: the shipped default
    settings: dict[str, Any] = field(default_factory=dict)  # interaction settings of its replicas


def version_settings(settings: Settings, d: Deployed) -> Settings:
    """The settings of one version's replicas (validated: a bad override is a SpecError)."""
    doc = {**settings.interaction.model_dump(), **d.settings, "app_name": d.app, "checkpoint": d.checkpoint}
    try:
        cfg = InteractionSettings.model_validate(doc)
    except ValidationError as exc:
        raise SpecError(f"candidate_settings: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from None
    return settings.model_copy(update={"interaction": cfg})


def app_for(settings: Settings, version: str) -> str:
    """The Serve application of a version other than the first one."""
    return f"{settings.interaction.app_name}-{re.sub(r'[^A-Za-z0-9_-]', '-', version)}"


def default_version(settings: Settings) -> str:
    return checkpoint_version(settings.interaction.checkpoint or SHIPPED_CHECKPOINT)


def resolve_checkpoint(version: str, checkpoint: str = "") -> str:
    """The checkpoint file of ``version``: the given one (which must declare that version) or the
    one shipped with it. Raises SpecError naming what is wrong."""
    if checkpoint:
        declared = checkpoint_version(checkpoint)
        if declared != version:
            raise SpecError(f"checkpoint {checkpoint} is version {declared!r}, not {version!r}")
        return checkpoint
    shipped = shipped_checkpoints()
    if version not in shipped:
        raise SpecError(f"no checkpoint of version {version!r} is shipped (shipped: {sorted(shipped)}); "
                        "give one with --checkpoint")  # fmt: skip
    return str(shipped[version])


def read_deployed(settings: Settings) -> dict[str, Deployed]:
    path = rollout_dir(settings) / "versions.json"
    if not path.is_file():
        return {
            default_version(settings): Deployed(
                settings.interaction.app_name, settings.interaction.checkpoint
            )
        }
    return {
        v: Deployed(d["app"], d.get("checkpoint"), d.get("settings", {}))
        for v, d in json.loads(path.read_text()).items()
    }


def write_deployed(settings: Settings, deployed: dict[str, Deployed]) -> None:
    write_json(rollout_dir(settings) / "versions.json", {v: d.__dict__ for v, d in deployed.items()})


def serve_config_for(settings: Settings, deployed: dict[str, Deployed]) -> dict[str, Any]:
    """One Serve config with an application per deployed version (each its own replicas)."""
    doc: dict[str, Any] | None = None
    for d in deployed.values():
        rendered = serve_config.render(version_settings(settings, d))
        if doc is None:
            doc = rendered
        else:
            doc["applications"] += rendered["applications"]
    assert doc is not None
    return doc


async def smoke_call(
    target: str, app: str, version: str, limits: LimitsSettings, timeout_s: float = 30.0
) -> bool:
    """A short real session on the candidate at ``target`` (host:port): every output must come
    from ``version``."""
    clock = ChunkClock(limits.chunk_ms)
    t0 = clock.floor(now_unix_ms())
    sid = f"smoke-{secrets.token_hex(6)}"
    silence = bytes(2 * limits.sample_rate_hz * limits.chunk_ms // 1000)
    try:
        async with grpc.aio.insecure_channel(target) as channel, asyncio.timeout(timeout_s):
            sess = InteractionSession(channel, app, sid, t0_ms=t0, model_version=version, hop="rollout-smoke")
            await sess.open()
            for k in range(SMOKE_CHUNKS):
                await asyncio.sleep(max(0.0, (t0 + clock.chunk_ms * (k + 1)) / 1000 - time.time()))
                await sess.send(input_chunk(sid, k, t0, silence, clock=clock))
                msg = await sess.receive()
                if msg.WhichOneof("kind") != "chunk" or msg.chunk.model_version != version:
                    log.warning("smoke call to %s: unexpected answer %s", version, str(msg)[:200])
                    return False
            await sess.close()
        return True
    except (TimeoutError, SessionRejected, grpc.aio.AioRpcError, ConnectionError) as exc:
        log.warning("smoke call to %s failed: %s", version, exc)
        return False


class LocalController:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dir = rollout_dir(settings)
        self.window = StatsWindow()
        self.deployed = read_deployed(settings)
        self.status = self._load_status()
        self._smoke: asyncio.Task[bool] | None = None
        self._bad_reports = RateLimitedLog(log)
        self.bus: Bus | None = None
        meter = metrics.get_meter_provider().get_meter("microturn.rollout")
        self._m_events = meter.create_counter(
            "microturn_rollout_events", unit="{event}", description="rollout events, by reason and type"
        )
        meter.create_observable_gauge(
            "microturn_rollout_weight",
            [lambda _: [Observation(w, {"version": v}) for v, w in self.status.weights.items()]],
            unit="%",
            description="percent of new calls routed to each version",
        )

    def _load_status(self) -> RolloutStatus:
        path = self.dir / "status.json"
        if path.is_file():
            with contextlib.suppress(Exception):  # an unreadable status starts over from what is deployed
                return store.status_from_doc(json.loads(path.read_text())["status"])
        stable = next(v for v, d in self.deployed.items() if d.app == self.settings.interaction.app_name)
        return initial(stable) if len(self.deployed) == 1 else initial(next(iter(self.deployed)))

    # -- observing ------------------------------------------------------------------------------
    async def connect(self) -> None:
        self.bus = await Bus.connect(self.settings.nats, self.settings.bus, name="rollout")

        async def on_report(msg) -> None:
            try:
                self.window.add(ReplicaStats.from_json(msg.data), time.time())
            except StatsError as exc:
                self._bad_reports.log("report", f"refused a replica report on {msg.subject}: {exc}")

        await self.bus.nc.subscribe(subjects.REPLICA_STATS, cb=on_report)

    def read_spec(self) -> RolloutSpec | None:
        path = self.dir / "spec.json"
        if not path.is_file():
            return None
        try:
            return store.spec_from_doc(json.loads(path.read_text()))
        except (SpecError, json.JSONDecodeError) as exc:
            self._bad_reports.log("spec", f"{path}: {exc}; the rollout keeps its current spec")
            return self.status.spec

    def take_command(self) -> Command | None:
        path = self.dir / "command.json"
        if not path.is_file():
            return None
        try:
            command = Command(json.loads(path.read_text())["command"])
        except (ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
            log.error("%s: not a command (%s)", path, exc)
            command = None
        path.unlink(missing_ok=True)
        return command

    def ready(self) -> dict[str, bool]:
        try:
            r = httpx.get(
                serve_config.dashboard_url(self.settings) + serve_config.APPLICATIONS_PATH, timeout=5
            )
            apps = r.json().get("applications", {})
        except (httpx.HTTPError, ValueError):
            return {}
        return {v: apps.get(d.app, {}).get("status") == "RUNNING" for v, d in self.deployed.items()}

    def smoke(self) -> bool | None:
        cand = self.status.candidate
        if self.status.phase.value != "Smoke" or cand is None:
            self._smoke = None
            return None
        if self._smoke is None:
            target = f"127.0.0.1:{self.settings.interaction.grpc_port}"
            self._smoke = asyncio.create_task(
                smoke_call(target, self.deployed[cand].app, cand, self.settings.limits)
            )
        return self._smoke.result() if self._smoke.done() else None

    # -- acting ---------------------------------------------------------------------------------
    def apply(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, EnsureDeployment):
                spec = self.status.spec
                assert spec is not None
                ckpt = resolve_checkpoint(a.version, spec.checkpoint)
                self.deployed[a.version] = Deployed(
                    app_for(self.settings, a.version), ckpt, spec.candidate_settings
                )
                self._deploy()
            elif isinstance(a, DeleteDeployment):
                self.deployed.pop(a.version, None)
                self._deploy()
            elif isinstance(a, SetRouting):
                apps = {v: self.deployed[v].app for v in a.weights if v in self.deployed}
                RoutingTable(a.epoch, a.weights, apps).write(routing_path(self.settings))
            elif isinstance(a, EndSessions):
                self._retire(a)
            elif isinstance(a, RecordEvent):
                event = {"at_unix_ms": now_unix_ms(), "reason": a.reason, "message": a.message,
                         "type": "Warning" if a.warning else "Normal"}  # fmt: skip
                (log.warning if a.warning else log.info)("%s: %s", a.reason, a.message)
                self._m_events.add(1, {"reason": a.reason, "type": event["type"]})
                self.dir.mkdir(parents=True, exist_ok=True)
                with (self.dir / "events.jsonl").open("a") as f:
                    f.write(json.dumps(event) + "\n")

    def _retire(self, a: EndSessions) -> None:
        """Past a version's drain deadline: the edges move its live calls to ``a.move_to`` or end
        them with a clear error (the routing table's ``retired`` and ``moves``)."""
        path = routing_path(self.settings)
        table = RoutingTable.from_json(path.read_text()) if path.is_file() else RoutingTable(
            self.status.epoch, dict(self.status.weights))  # fmt: skip
        table.retire(a.version, retire_reason(a), a.move_to).write(path)

    def _deploy(self) -> None:
        write_deployed(self.settings, self.deployed)
        serve_config.deploy_config(
            serve_config.dashboard_url(self.settings), serve_config_for(self.settings, self.deployed)
        )

    def step(self, now: float) -> None:
        obs = Observations(
            self.read_spec(), self.window.versions(now, self.ready()), self.smoke(), self.take_command()
        )
        status, actions = decide(self.status, obs, now)
        self.status = status
        try:
            self.apply(actions)
        except (SpecError, RuntimeError, httpx.HTTPError, OSError) as exc:
            log.error("rollout action failed: %s", exc)
        write_json(self.dir / "status.json", {
            "status": store.status_to_doc(self.status),
            "versions": {v: {"app": d.app, **asdict(obs.versions.get(v, VersionObservation()))}
                         for v, d in self.deployed.items()},
            "routing": routing_path(self.settings).read_text() if routing_path(self.settings).is_file() else None,
            "updated_unix_ms": now_unix_ms(),
        })  # fmt: skip

    async def run(self) -> None:
        await self.connect()
        log.info("rollout controller: stable %s, versions %s", self.status.stable, sorted(self.deployed))
        while True:
            self.step(time.time())  # wall time: the status outlives this process
            await asyncio.sleep(LOOP_S)
