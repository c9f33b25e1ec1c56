"""The replica's service report for rollouts (interaction/stats.py): published on the bus by the
interaction user, readable by the rollout user only, parsed as untrusted input."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from microturn.bus import subjects
from microturn.bus.permissions import ROLLOUT
from microturn.bus.setup import setup
from microturn.interaction.core import InteractionCore
from microturn.interaction.grpc_server import start_server
from microturn.interaction.stats import TICK_BOUNDS_MS, ReplicaStats, StatsError
from microturn.localrun.ports import free_port

from ..bus.test_bus_permissions import connect, settings_for, violated
from .conftest import chunk_for, new_session, session_origin, tiny_model


async def test_a_replica_reports_its_service_and_the_rollout_user_reads_it(secure_nats, passwords):
    await setup(settings_for(secure_nats, "setup", passwords), timeout_s=20)
    base = settings_for(secure_nats, "interaction", passwords)
    settings = base.model_copy(update={"interaction": base.interaction.model_copy(update={
        "bus": True, "session_slots": 4, "tick_grace_ms": 20, "stats_interval_s": 0.2})})  # fmt: skip
    rollout = await connect(secure_nats, ROLLOUT, passwords)
    reports: list[ReplicaStats] = []

    async def keep(msg) -> None:
        reports.append(ReplicaStats.from_json(msg.data))

    sub = await rollout.nc.subscribe(subjects.REPLICA_STATS, cb=keep)
    core = InteractionCore(settings, "replica-s", model=tiny_model())
    port = free_port()
    server = await start_server(core, "127.0.0.1", port)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            t0 = session_origin()
            sess = new_session(channel, "s-stats", t0)
            await sess.open()
            for k in range(4):
                await sess.send(chunk_for("s-stats", k, t0))
                await asyncio.wait_for(sess.receive(), 10)
            for _ in range(100):
                if reports and reports[-1].outputs >= 4:
                    break
                await asyncio.sleep(0.1)
            await sess.close()
    finally:
        await sub.unsubscribe()
        await rollout.close()
        await server.stop(grace=None)
        await core.drain()
    last = reports[-1]
    assert (last.replica, last.version, last.app) == ("replica-s", "tiny-test", "interaction")
    assert last.opened == 1 and last.rebuilt == 0 and last.outputs >= 4 and last.sessions == 1
    assert last.ticks >= 4 and last.ticks_le[-1] <= last.ticks and last.errors == {}


async def test_the_rollout_user_cannot_forge_a_report(secure_nats, passwords):
    rollout = await connect(secure_nats, ROLLOUT, passwords)
    try:
        await rollout.nc.publish(subjects.replica_stats_subject("forged"), b"{}")
        await rollout.nc.flush()
        await violated(rollout, f"publish {subjects.replica_stats_subject('forged')}")
    finally:
        await rollout.close()


GOOD = ReplicaStats("r1", "v1", "interaction", 1, 2, 3, 0, 10, 1, {"ERROR_CODE_INTERNAL": 1}, 4,
                    [1] + [3] * (len(TICK_BOUNDS_MS) - 1))  # fmt: skip


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"x" * 9000, "bytes"),
        (b"not json", "not JSON"),
        (b"[]", "JSON object"),
        (b'{"replica": "r"}', "fields"),
        (GOOD.to_json().replace(b'"sessions":2', b'"sessions":-1'), "sessions"),
        (GOOD.to_json().replace(b'"version":"v1"', b'"version":""'), "version"),
        (GOOD.to_json().replace(b'"outputs":10', b'"outputs":true'), "outputs"),
        (GOOD.to_json().replace(b'"ERROR_CODE_INTERNAL":1', b'"ERROR_CODE_INTERNAL":"1"'), "errors"),
        (GOOD.to_json().replace(b'"ticks_le":[1,3', b'"ticks_le":[3,1'), "ticks_le"),  # decreasing
        (GOOD.to_json().replace(b'"ticks":4', b'"ticks":2'), "ticks_le"),  # more than the ticks
        (GOOD.to_json().replace(b'"ticks_le":[1,', b'"ticks_le":['), "ticks_le"),  # a count short
        (GOOD.to_json().replace(b'"ticks_le":[1,', b'"ticks_le":["1",'), "ticks_le"),
        (GOOD.to_json().replace(b'"turn_p50_ms":null', b'"turn_p50_ms":-3'), "turn_p50_ms"),
        (GOOD.to_json().replace(b'"turns":0', b'"turns":1.5'), "turns"),
    ],
)
def test_a_malformed_report_is_refused_with_the_reason(data, message):
    with pytest.raises(StatsError, match=message):
        ReplicaStats.from_json(data)


def test_a_report_round_trips():
    assert ReplicaStats.from_json(GOOD.to_json()) == GOOD


def test_a_field_the_controller_does_not_know_is_ignored():
    """A replica of another microturn release (an older one still sent tick_p99_ms) is still read."""
    doc = GOOD.to_json()[:-1] + b',"tick_p99_ms":12.5,"from_the_future":{"x":1}}'
    assert ReplicaStats.from_json(doc) == GOOD
