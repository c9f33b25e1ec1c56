"""Replica operations: drain on shutdown, health, and the exported tick metrics."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from microturn.config import load_settings
from microturn.interaction.core import InteractionCore
from microturn.interaction.grpc_server import start_server
from microturn.interaction.stats import TICK_BOUNDS_MS
from microturn.localrun.ports import free_port
from microturn.protocol.clock import now_unix_ms
from microturn.v1 import interaction_pb2

from .conftest import chunk_for, new_session, session_origin, tiny_model

Code = interaction_pb2.ErrorCode


async def test_drain_says_draining_then_closes_what_did_not_move(core_server):
    """A client that does not move its session is told DRAINING, keeps being served until the drain
    times out, then gets UNKNOWN_SESSION; new streams are refused while draining."""
    core, channel = core_server
    t0 = session_origin()
    sess = new_session(channel, "s-drain", t0)
    await sess.open()
    call = sess._call
    await call.write(interaction_pb2.ClientMessage(chunk=chunk_for("s-drain", 0, t0)))
    assert (await asyncio.wait_for(call.read(), 10)).chunk.header.chunk_index == 0
    drain = asyncio.create_task(core.drain(timeout_s=1.0))
    err = (await asyncio.wait_for(call.read(), 10)).error
    assert err.code == Code.ERROR_CODE_DRAINING and err.retryable and "serves it until then" in err.message
    await call.write(interaction_pb2.ClientMessage(chunk=chunk_for("s-drain", 1, t0)))
    assert (await asyncio.wait_for(call.read(), 10)).chunk.header.chunk_index == 1  # still served
    other = new_session(channel, "s-after", t0)
    with pytest.raises(Exception) as exc:
        await other.open()
    assert exc.value.error.code == Code.ERROR_CODE_DRAINING and exc.value.error.retryable
    err = (await asyncio.wait_for(call.read(), 10)).error
    assert err.code == Code.ERROR_CODE_UNKNOWN_SESSION and err.retryable and "shutting down" in err.message
    await drain
    assert "s-drain" not in core.sessions and core.engine.free_slots == core.cfg.session_slots


async def test_health_reflects_the_tick_loop(core_server):
    core, channel = core_server
    sess = new_session(channel, "s-health", session_origin())
    await sess.open()
    core.check_health()  # running: no error
    core._tick_task.cancel()
    await asyncio.sleep(0.05)
    with pytest.raises(RuntimeError, match="tick loop stopped"):
        core.check_health()


async def test_tick_metrics_are_exported():
    reader = InMemoryMetricReader()
    settings = load_settings(
        overrides={"interaction": {"bus": False, "session_slots": 2, "tick_grace_ms": 20}}
    )
    core = InteractionCore(
        settings, "replica-m", model=tiny_model(), meter_provider=MeterProvider(metric_readers=[reader])
    )
    port = free_port()
    server = await start_server(core, "127.0.0.1", port)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            t0 = session_origin()
            sess = new_session(channel, "s-metrics", t0)
            await sess.open()
            for k in range(3):
                await sess.send(chunk_for("s-metrics", k, t0))
                await asyncio.wait_for(sess.receive(), 10)
            before = now_unix_ms()
            data = reader.get_metrics_data()
            after = now_unix_ms()
            points = {
                m.name: m.data.data_points
                for rm in data.resource_metrics
                for sm in rm.scope_metrics
                for m in sm.metrics
            }
            await sess.close()
    finally:
        await server.stop(grace=None)
        await core.drain()
    assert sum(p.count for p in points["microturn_tick_duration"]) == 3
    assert sum(p.sum for p in points["microturn_tick_batch_size"]) == 3
    lag = points["microturn_session_lag"]
    assert [dict(p.attributes) for p in lag] == [
        {"replica": "replica-m", "version": "tiny-test"}
    ]  # no session label
    # lag = wall time past the end of the next expected chunk (chunk 3 ends at t0 + 800 ms)
    assert before - (t0 + 800) <= lag[0].value <= after - (t0 + 800)
    assert points["microturn_sessions"][0].value == 1
    # the autoscaling signal: the share of the last 5 s the three engine steps took
    (util,) = points["microturn_tick_utilisation"]
    steps_ms = sum(p.sum for p in points["microturn_tick_duration"])
    assert dict(util.attributes) == {"replica": "replica-m", "version": "tiny-test"}
    assert util.value == pytest.approx(steps_ms / 5000, rel=0.05) and 0 < util.value < 1


@pytest.mark.parametrize("core_server", [{"fault_tick_delay_ms": 450}], indirect=True)
async def test_the_fault_delay_makes_every_tick_late_and_it_shows_in_the_report(core_server):
    """fault_tick_delay_ms (rehearsing a slow model): outputs come after their deadline, counted."""
    core, channel = core_server
    t0 = session_origin()
    sess = new_session(channel, "s-slow", t0)
    await sess.open()
    for k in range(3):
        await sess.send(chunk_for("s-slow", k, t0))
        await asyncio.wait_for(sess.receive(), 10)
    await sess.close()
    report = core.report()
    assert report.outputs == 3 and report.misses == 3 and report.ticks == 3
    assert report.ticks_le[TICK_BOUNDS_MS.index(400)] == 0 and report.ticks_le[-1] == 3  # each in (400, 1000]
