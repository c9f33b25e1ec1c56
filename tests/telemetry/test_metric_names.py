"""What every service really exports on /metrics matches the metric catalog (microturn.telemetry.catalog).

Each service runs as its own process, the way it runs for real, against a real nats-server: tools and
background (``python -m microturn.tools`` / ``microturn.background``), an interaction replica
(``tests.telemetry.interaction_main``: the core on a plain gRPC server, since Serve replicas export by
OTLP only), the edge (``python -m microturn.edge``, its /metrics on its HTTP port) wired to that
replica, and the local rollout controller's instruments. Work goes through them so the instruments
have data: a WebRTC call (``EdgeClient``), the replica killed and restarted under it (recovery,
rebuild, catch-up), delegations with tool calls and a timer, a bad message on each bus consumer, a
client error, a routing table that becomes unreadable. Then each /metrics is scraped over HTTP and
parsed with prometheus_client: every ``microturn_*`` family is in the catalog with its type and
label keys, the catalog's metrics of that service are all there (those with a ``needs`` only where
this test makes it happen), and no label value is one of the ids the test used (sessions,
delegations, calls)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from microturn.bus import Bus, DelegationClient, subjects
from microturn.localrun.ports import free_port
from microturn.model.checkpoint import SHIPPED_CHECKPOINT, checkpoint_version
from microturn.rollout.routing import RoutingTable
from microturn.telemetry.catalog import BY_FAMILY, BY_NAME, EXPORTER_LABELS, METRICS, Metric, exported_by
from microturn.tools import call_id_for
from microturn.v1 import delegation_pb2, interaction_pb2, interaction_pb2_grpc

from ..background.background_helpers import collect
from ..edge.webrtc_client import EdgeClient

ROOT = Path(__file__).resolve().parents[2]
Scrape = dict[str, list]  # family name -> its samples

# metrics with a ``needs`` that this test brings about, per service
DRIVEN = {
    "interaction": {
        "microturn_chunk_deadline_misses", "microturn_stream_errors", "microturn_chunks_dropped",
        "microturn_session_rebuild_duration", "microturn_rebuild_turns", "microturn_updates_rejected",
    },
    "edge": {"microturn_edge_recoveries", "microturn_edge_client_errors", "microturn_edge_routing_epoch",
             "microturn_edge_routing_errors"},
    "background": {"microturn_delegations_rejected", "microturn_cancels_rejected", "microturn_tool_results_rejected"},
    "tools": {"microturn_timers_fired", "microturn_tool_calls_rejected", "microturn_timers_rejected"},
    "rollout": set(),
}  # fmt: skip


def test_the_driven_metrics_are_catalog_metrics_with_a_need():
    for service, names in DRIVEN.items():
        for name in names:
            m = BY_NAME[name]
            assert service in m.services and m.needs, name


def env_for(sections: dict[str, dict[str, object]], **extra: str) -> dict[str, str]:
    """``MICROTURN_<SECTION>__<FIELD>`` variables for a service process (lists and dicts as JSON)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROTURN_")}
    for section, values in sections.items():
        for key, value in values.items():
            text = json.dumps(value) if isinstance(value, list | dict | bool) else str(value)
            env[f"MICROTURN_{section.upper()}__{key.upper()}"] = text
    return {**env, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **extra}


class Service:
    """One service process with its log file; /metrics and /healthz at ``base``."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], base: str, logs: Path) -> None:
        self.name, self.base, self.log_path = name, base, logs / f"{name}-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, *args], env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    async def ready(self, timeout_s: float = 90.0) -> None:
        async def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode}:\n{self.log()}")
            try:
                async with httpx.AsyncClient(timeout=2) as http:
                    return (await http.get(f"{self.base}/healthz")).status_code == 200
            except httpx.HTTPError:
                return False

        await until(up, timeout_s, f"{self.name} ready")

    async def scrape(self) -> Scrape:
        async with httpx.AsyncClient(timeout=10) as http:
            text = (await http.get(f"{self.base}/metrics")).text
        return {f.name: f for f in text_string_to_metric_families(text) if f.name.startswith("microturn_")}

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


async def until(
    predicate: Callable[[], Awaitable[bool]], timeout_s: float, what: str | Callable[[], str]
) -> None:
    """Poll until ``predicate`` holds (a liveness bound: the test fails if it never does)."""
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what() if callable(what) else what}: not within {timeout_s:.0f} s")
        await asyncio.sleep(0.2)


async def scraped_with(service: Service, names: set[str], timeout_s: float = 60.0) -> Scrape:
    """A scrape of ``service`` once the families of the catalog metrics ``names`` are in it."""
    families = {m.family for m in METRICS if m.name in names}
    found: Scrape = {}

    async def has_all() -> bool:
        nonlocal found
        found = await service.scrape()
        return families <= set(found)

    await until(has_all, timeout_s, lambda: f"{service.name} does not export {sorted(families - set(found))}")
    return found


def check(service: str, scrapes: list[Scrape], ids: set[str]) -> None:
    """The scrapes of one service against the catalog."""
    seen: dict[str, Metric] = {}
    for scrape in scrapes:
        for name, family in scrape.items():
            m = BY_FAMILY.get(name)
            assert m is not None, f"{service} exports {name}, which is not in the catalog"
            assert service in m.services, f"{name} is exported by {service}, the catalog says {m.services}"
            assert family.type == m.kind.value, f"{name} is a {family.type}, the catalog says {m.kind.value}"
            for s in family.samples:
                assert s.name in m.samples, f"{s.name} is not a sample of {m.name} ({m.samples})"
                keys = set(s.labels) - set(EXPORTER_LABELS)
                assert keys == m.sample_labels(s.name), f"{s.name} has labels {sorted(keys)}"
                assert not set(s.labels.values()) & ids, f"{s.name} carries an id: {s.labels}"
            seen[m.name] = m
    expected = {m.name for m in exported_by(service) if not m.needs} | DRIVEN[service]
    assert expected <= set(seen), f"{service} does not export {sorted(expected - set(seen))}"


# -- the background and tools services ------------------------------------------------------------
async def background_work(bus: Bus, ids: set[str]) -> None:
    """Delegations that call a tool and set a timer, and one bad message for each consumer."""
    client = DelegationClient(bus)
    for text in ("what is 12 times 7", "set a timer for 1 second"):
        sid = f"s-bg-{uuid.uuid4().hex[:8]}"
        req = request(sid, text)
        ids.update({sid, req.delegation_id})
        updates = await client.session_updates(sid)
        try:
            await client.delegate(req)
            await collect(updates, req.delegation_id)
        finally:
            await updates.close()
    junk = b"\xff\xfe not protobuf"
    await bus.publish(subjects.DELEGATION_REQUEST, junk)
    await bus.publish(subjects.TOOL_CALL, junk)
    await bus.publish(subjects.timer_subject("s-junk"), junk)
    ids.add("s-junk")
    await bus.publish(subjects.cancel_subject("s-other", "d-other"), junk)


async def unreadable_tool_result(bus: Bus, ids: set[str]) -> None:
    """A delegation whose tool result, stored before it runs, cannot be read (the tools service is
    stopped, so the background reads the stored copy)."""
    client = DelegationClient(bus)
    req = request("s-junk", "what is 2 + 2")
    call_id = call_id_for(req.delegation_id, 1, "calculator", json.dumps({"expression": "2 + 2"}))
    ids.update({req.delegation_id, call_id})
    await bus.publish(subjects.tool_result_subject(call_id), b"\xff\xfe not a result", msg_id=call_id)
    updates = await client.session_updates(req.session_id)
    try:
        await client.delegate(req)
        await collect(updates, req.delegation_id)
    finally:
        await updates.close()


def request(session_id: str, text: str) -> delegation_pb2.DelegationRequest:
    return delegation_pb2.DelegationRequest(
        delegation_id=f"d-{uuid.uuid4().hex[:12]}",
        session_id=session_id,
        context=delegation_pb2.ContextPackage(
            request=text,
            utterances=[delegation_pb2.Utterance(speaker=delegation_pb2.SPEAKER_USER, text=text)],
        ),
        deadline_unix_ms=int((time.time() + 60) * 1000),
    )


async def unknown_session(grpc_port: int, ids: set[str]) -> None:
    """A stream that re-attaches to a session the replica does not hold: UNKNOWN_SESSION."""
    sid = f"s-unknown-{uuid.uuid4().hex[:8]}"
    ids.add(sid)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        call = interaction_pb2_grpc.InteractionStub(channel).Converse(
            metadata=(("application", "interaction"), ("session_id", sid))
        )
        await call.write(interaction_pb2.ClientMessage(open=interaction_pb2.OpenSession(
            session_id=sid, first_chunk_index=3, first_media_start_unix_ms=0)))  # fmt: skip
        reply = await asyncio.wait_for(call.read(), 30)
        call.cancel()
    assert reply.error.code == interaction_pb2.ERROR_CODE_UNKNOWN_SESSION


@pytest.mark.timeout(420)
async def test_every_service_exports_what_the_catalog_says(nats_server, tmp_path):
    ids: set[str] = set()
    version = checkpoint_version(SHIPPED_CHECKPOINT)
    common = {"nats": {"url": nats_server.url}}
    base_env = {"MICROTURN_STATE_DIR": str(tmp_path / "state")}
    procs: list[Service] = []

    def start(name: str, args: list[str], sections: dict, port: int) -> Service:
        s = Service(
            name, args, env_for({**common, **sections}, **base_env), f"http://127.0.0.1:{port}", tmp_path
        )
        procs.append(s)
        return s

    tools_port, bg_port, int_port, edge_port, grpc_port = (free_port() for _ in range(5))
    routing = tmp_path / "routing.json"
    RoutingTable(3, {version: 100}).write(routing)
    tools_cfg = {"grpc_port": free_port(), "knowledge_preload": False}
    interaction = {"grpc_port": grpc_port, "bus": True, "tick_grace_ms": 20, "session_slots": 4}

    def replica(name: str, **extra: object) -> Service:
        sections = {"interaction": {**interaction, **extra}, "telemetry": {"metrics_port": int_port}}
        return start(name, ["-m", "tests.telemetry.interaction_main"], sections, int_port)

    try:
        tools = start("tools", ["-m", "microturn.tools"],
                      {"tools": tools_cfg, "telemetry": {"metrics_port": tools_port}}, tools_port)  # fmt: skip
        background = start("background", ["-m", "microturn.background"],
                           {"tools": tools_cfg, "telemetry": {"metrics_port": bg_port}}, bg_port)  # fmt: skip
        first = replica("interaction")
        edge = start("edge", ["-m", "microturn.edge"], {"edge": {
            "port": edge_port, "interaction_target": f"127.0.0.1:{grpc_port}", "ice_host_addresses": ["127.0.0.1"],
            "routing_file": str(routing), "routing_poll_s": 0.2}}, edge_port)  # fmt: skip
        for s in procs:
            await s.ready()

        bus = await Bus.connect(nats_server.url, name="test-metrics")
        try:
            await background_work(bus, ids)
            caller = EdgeClient(edge.base, video=False)
            await caller.connect()
            try:
                ids.add(caller.session_id)

                async def chunks_back(n: int) -> bool:
                    return len(caller.chunk_arrivals()) >= n

                await until(lambda: chunks_back(10), 60, "output chunks of the call")
                async with httpx.AsyncClient(base_url=edge.base) as http:  # a client error: no token
                    assert (
                        await http.post(f"/api/sessions/{caller.session_id}/offer", json={})
                    ).status_code >= 400
                await bus.publish(subjects.update_subject(caller.session_id), b"\xff\xfe not an update")
                await unknown_session(grpc_port, ids)
                scrapes = {"interaction": [await scraped_with(first, {"microturn_updates_rejected",
                                                                       "microturn_stream_errors"})]}  # fmt: skip
                # the replica is lost and comes back: the edge recovers the call with a replay, and
                # the chunks sent meanwhile arrive late, past a backlog of 3 (the oldest kept one is late)
                first.stop(signal.SIGKILL)
                await asyncio.sleep(2.0)
                second = replica("interaction-2", max_backlog_chunks=3)
                await second.ready()
                scrapes["interaction"].append(await scraped_with(second, DRIVEN["interaction"] - {
                    "microturn_updates_rejected"}))  # fmt: skip
                routing.write_text("{not json")
                scrapes["edge"] = [await scraped_with(edge, DRIVEN["edge"])]
            finally:
                await caller.close()
            scrapes["tools"] = [await scraped_with(tools, DRIVEN["tools"])]
            tools.stop()
            await unreadable_tool_result(bus, ids)
            scrapes["background"] = [await scraped_with(background, DRIVEN["background"])]
        finally:
            await bus.close()
    finally:
        for s in reversed(procs):
            s.stop()
    for service, got in scrapes.items():
        check(service, got, ids)


ROLLOUT = """
import sys
from microturn.config import load_settings
from microturn.rollout.local import LocalController
from microturn.rollout.machine import RecordEvent
from microturn.telemetry import setup_telemetry
settings = load_settings()
telemetry = setup_telemetry("rollout", settings.telemetry)
telemetry.set_ready()
LocalController(settings).apply([RecordEvent("MetricsTest", "an event for the metrics test")])
sys.stdin.read()  # until the test is done scraping
"""


async def test_the_rollout_controller_exports_what_the_catalog_says(tmp_path):
    """The local rollout controller exports by OTLP only (``microturn rollout``); here its
    instruments go to a /metrics endpoint of the same set-up, after one recorded event."""
    port = free_port()
    env = env_for({"telemetry": {"metrics_port": port}}, MICROTURN_STATE_DIR=str(tmp_path / "state"))
    service = Service("rollout", ["-c", ROLLOUT], env, f"http://127.0.0.1:{port}", tmp_path)
    try:
        await service.ready()
        got = await scraped_with(service, {m.name for m in exported_by("rollout")})
    finally:
        service.stop()
    check("rollout", [got], set())
