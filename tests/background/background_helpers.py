"""Helpers for background/tool tests (imported by conftest and the tests): settings pointing at the test's nats-server, the services run
in-process or as real subprocesses (``python -m ...``), and a reader for a session's updates."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from microturn.bus import Bus, DelegationClient, SessionUpdates
from microturn.config import BackgroundSettings, BusSettings, NatsSettings, Settings, ToolsSettings
from microturn.localrun.ports import free_port
from microturn.v1 import delegation_pb2

CORPUS = Path(__file__).parent / "corpus"
ROOT = Path(__file__).resolve().parents[2]


def make_settings(nats_url: str, **sections) -> Settings:
    bus = BusSettings(ack_wait_s=2.0, max_attempts=3, retry_delay_s=0.1, shutdown_grace_s=3.0)
    tools = ToolsSettings(
        grpc_port=free_port(),
        knowledge_preload=False,
        project_docs_dir=CORPUS,
        knowledge_dir=None,
        # The first search loads the model: slow on a busy test machine, and not what is tested.
        timeout_ms={"knowledge_search": 120_000},
    )
    background = BackgroundSettings(tool_timeout_s=40.0, default_deadline_s=60.0)
    base = {"nats": NatsSettings(url=nats_url), "bus": bus, "tools": tools, "background": background}
    for name, values in sections.items():
        base[name] = base[name].model_copy(update=values)
    return Settings(**base)


def settings_env(settings: Settings) -> dict[str, str]:
    """The same settings as MICROTURN_* variables, for a service started as a subprocess."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROTURN_")}
    for section in ("nats", "bus", "tools", "background"):
        for key, value in getattr(settings, section).model_dump(exclude_none=True).items():
            if hasattr(value, "get_secret_value"):
                value = value.get_secret_value()
            elif isinstance(value, dict | list):
                value = json.dumps(value)
            env[f"MICROTURN_{section.upper()}__{key.upper()}"] = str(value)
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def request(session_id: str, text: str, *, timezone: str = "", deadline_s: float = 60.0, **kw):
    return delegation_pb2.DelegationRequest(
        delegation_id=f"d-{uuid.uuid4().hex[:12]}",
        session_id=session_id,
        context=delegation_pb2.ContextPackage(
            request=text,
            timezone=timezone,
            utterances=[delegation_pb2.Utterance(speaker=delegation_pb2.SPEAKER_USER, text=text)],
        ),
        deadline_unix_ms=int((time.time() + deadline_s) * 1000),
        **kw,
    )


async def collect(updates: SessionUpdates, delegation_id: str, timeout_s: float = 60.0):
    """Updates of one delegation up to and including its final or error (acked as read)."""
    out: list[delegation_pb2.BackgroundUpdate] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        delivery = await updates.next(timeout_s=max(deadline - time.monotonic(), 0.01))
        if delivery is None:
            break
        await delivery.ack()
        if delivery.update.delegation_id != delegation_id:
            continue
        out.append(delivery.update)
        if delivery.is_last:
            return out
    raise AssertionError(f"no final update for {delegation_id} within {timeout_s}s; got {out}")


async def collect_many(updates: SessionUpdates, delegation_ids: set[str], timeout_s: float = 60.0):
    """Updates of several delegations of one session, each up to its final or error (plus whatever
    else arrived meanwhile, under its own delegation id)."""
    out: dict[str, list[delegation_pb2.BackgroundUpdate]] = {d: [] for d in delegation_ids}
    open_ids = set(delegation_ids)
    deadline = time.monotonic() + timeout_s
    while open_ids and time.monotonic() < deadline:
        delivery = await updates.next(timeout_s=max(deadline - time.monotonic(), 0.01))
        if delivery is None:
            break
        await delivery.ack()
        out.setdefault(delivery.update.delegation_id, []).append(delivery.update)
        if delivery.is_last:
            open_ids.discard(delivery.update.delegation_id)
    assert not open_ids, f"no final update for {sorted(open_ids)} within {timeout_s}s"
    return out


def kinds(updates) -> list[str]:
    return [u.WhichOneof("kind") for u in updates]


@dataclass
class Stack:
    settings: Settings
    client: DelegationClient
    bus: Bus
    services: list = field(default_factory=list)

    async def ask(self, text: str, session_id: str | None = None, **kw):
        session_id = session_id or f"s-{uuid.uuid4().hex[:8]}"
        updates = await self.client.session_updates(session_id)
        try:
            req = request(session_id, text, **kw)
            await self.client.delegate(req)
            return await collect(updates, req.delegation_id)
        finally:
            await updates.close()


class ServiceProcess:
    """``python -m microturn.<module>`` as a child process with its own log file."""

    def __init__(
        self, module: str, settings: Settings, log_path: Path, metrics_port: int | None = None
    ) -> None:
        env = settings_env(settings)
        self.metrics_port = metrics_port or free_port()
        env["MICROTURN_TELEMETRY__METRICS_PORT"] = str(self.metrics_port)
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", f"microturn.{module}"],
            env=env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient() as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"service exited {self.proc.returncode}:\n{self.log()[-3000:]}")
                try:
                    r = await http.get(f"http://127.0.0.1:{self.metrics_port}/healthz", timeout=1)
                    if r.status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
        raise TimeoutError(f"service not ready after {timeout_s}s:\n{self.log()[-3000:]}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout_s: float = 15.0) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
        return self.proc.returncode
