"""Planned migration: a draining replica hands its sessions to another one, make before break."""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
import torch
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from microturn.config import load_settings
from microturn.interaction.core import InteractionCore
from microturn.interaction.grpc_server import start_server
from microturn.localrun.ports import free_port
from microturn.model import InteractionModel, preset
from microturn.v1 import interaction_pb2_grpc

from .conftest import APP, chunk_for, new_session, session_origin, tiny_model


class FirstNotDraining(interaction_pb2_grpc.InteractionServicer):
    """What Serve's router does for a replica that is being removed: new streams go elsewhere."""

    def __init__(self, cores: list[InteractionCore]) -> None:
        self.cores = cores

    async def Converse(self, request_iterator, context):
        core = next(c for c in self.cores if not c.draining)
        async for message in core.converse(aiter(request_iterator)):
            yield message


async def serve_first_not_draining(cores: list[InteractionCore]) -> tuple[grpc.aio.Server, grpc.aio.Channel]:
    server = grpc.aio.server()
    interaction_pb2_grpc.add_InteractionServicer_to_server(FirstNotDraining(cores), server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, grpc.aio.insecure_channel(f"127.0.0.1:{port}")


async def test_a_draining_replica_hands_its_session_over_without_a_gap():
    settings = load_settings(
        overrides={"interaction": {"bus": False, "session_slots": 4, "tick_grace_ms": 20}}
    )
    a, b = (InteractionCore(settings, name, model=tiny_model()) for name in ("replica-a", "replica-b"))
    server, channel = await serve_first_not_draining([a, b])
    n_before, n_after = 15, 25
    try:
        t0 = session_origin()
        sess = new_session(channel, "moving", t0, seed=5)
        assert (await sess.open()).replica_id == "replica-a"
        got: list[tuple[int, str, float, object]] = []  # index, replica, arrival, chunk
        errors = []

        async def read() -> None:
            while len(got) < n_before + n_after:
                msg = await sess.receive()
                if msg.WhichOneof("kind") == "chunk":
                    got.append(
                        (msg.chunk.header.chunk_index, sess.accepted.replica_id, time.monotonic(), msg.chunk)
                    )
                else:
                    errors.append(msg.error)

        reader = asyncio.create_task(read())
        drain = None
        for k in range(n_before + n_after):  # in real time, as an edge sends
            await asyncio.sleep(max(0.0, (t0 + 200 * (k + 1)) / 1000 - time.time()))
            await sess.send(chunk_for("moving", k, t0))
            if k == n_before:
                drain = asyncio.create_task(a.drain())
        await asyncio.wait_for(reader, 30)
        started = time.monotonic()
        await asyncio.wait_for(drain, 30)
        assert time.monotonic() - started < settings.interaction.drain_timeout_s  # it did not time out
        assert not errors, errors  # DRAINING was handled inside the client
        assert [k for k, *_ in got] == list(range(n_before + n_after))
        owners = [r for _, r, *_ in got]
        switch = owners.index("replica-b")
        # make before break: replica a answered every chunk up to the switch, b every one after it
        assert (
            switch >= n_before
            and set(owners[:switch]) == {"replica-a"}
            and set(owners[switch:]) == {"replica-b"}
        )
        assert sess.migrations == 1 and sess.recoveries == 0 and not a.sessions
        gaps = np.diff([t for *_, t, _ in got])
        print(f"migration at chunk {switch}: output gap there {gaps[switch - 1] * 1000:.0f} ms, "
              f"largest {gaps.max() * 1000:.0f} ms")  # fmt: skip
        # the continuation is the session's own: the same as an uninterrupted run (float rounding only)
        ref = new_session(channel, "reference", t0, seed=5)
        await ref.open()
        for k in range(n_before + n_after):
            await ref.send(chunk_for("reference", k, t0))
        ref_out = [(await asyncio.wait_for(ref.receive(), 10)).chunk for _ in range(n_before + n_after)]
        for (_, _, _, out), r in zip(got, ref_out, strict=True):
            assert out.text == r.text
            pa, pb = (np.frombuffer(x.audio.pcm_s16le, dtype=np.int16).astype(int) for x in (out, r))
            assert np.abs(pa - pb).max() <= 100
        await sess.close()
        await ref.close()
    finally:
        await channel.close()
        await server.stop(grace=None)
        await a.drain(timeout_s=0)
        await b.drain(timeout_s=0)


def counter_totals(reader: InMemoryMetricReader) -> dict[str, float]:
    data = reader.get_metrics_data()
    return {
        m.name: sum(p.value for p in m.data.data_points)
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name in ("microturn_sessions_migrated", "microturn_sessions_drain_deadline")
    }


async def test_the_wait_policy_lets_sessions_end_then_migrates_the_rest():
    """drain_policy wait: a session that ends during drain_wait_s is not moved; the one still live at
    the end of it is migrated, make before break, and counted."""
    settings = load_settings(
        overrides={"interaction": {"bus": False, "session_slots": 4, "tick_grace_ms": 20,
                                   "drain_policy": "wait", "drain_wait_s": 3.0}}
    )  # fmt: skip
    reader = InMemoryMetricReader()
    a = InteractionCore(settings, "replica-a", model=tiny_model(), meter_provider=MeterProvider([reader]))
    b = InteractionCore(settings, "replica-b", model=tiny_model())
    server, channel = await serve_first_not_draining([a, b])
    try:
        t0 = session_origin()
        leaving, staying = (
            new_session(channel, "leaving", t0, seed=1),
            new_session(channel, "staying", t0, seed=2),
        )
        for s in (leaving, staying):
            assert (await s.open()).replica_id == "replica-a"
        owners: list[str] = []
        drain = None
        for k in range(40):  # 8 s in real time: the wait (3 s) ends half way
            await asyncio.sleep(max(0.0, (t0 + 200 * (k + 1)) / 1000 - time.time()))
            await staying.send(chunk_for("staying", k, t0))
            if k < 5:
                await leaving.send(chunk_for("leaving", k, t0))
                assert (await asyncio.wait_for(leaving.receive(), 10)).WhichOneof("kind") == "chunk"
            if k == 5:
                await leaving.close()
            if k == 2:
                drain = asyncio.create_task(a.drain())
            msg = await asyncio.wait_for(staying.receive(), 10)
            assert msg.WhichOneof("kind") == "chunk" and msg.chunk.header.chunk_index == k, msg
            owners.append(staying.accepted.replica_id)
        await asyncio.wait_for(drain, 30)
        switch = owners.index("replica-b")
        assert switch >= 2 + 3 * 5 - 2, owners  # not before the wait was over
        assert set(owners[switch:]) == {"replica-b"} and staying.migrations == 1 and staying.recoveries == 0
        assert counter_totals(reader) == {"microturn_sessions_migrated": 1}
        await staying.close()
    finally:
        await channel.close()
        await server.stop(grace=None)
        await a.drain(timeout_s=0)
        await b.drain(timeout_s=0)


async def test_a_session_that_cannot_move_is_counted_at_the_drain_deadline():
    settings = load_settings(
        overrides={"interaction": {"bus": False, "session_slots": 4, "tick_grace_ms": 20}}
    )
    reader = InMemoryMetricReader()
    a = InteractionCore(settings, "replica-a", model=tiny_model(), meter_provider=MeterProvider([reader]))
    server, channel = await serve_first_not_draining([a])
    try:
        t0 = session_origin()
        stuck = new_session(channel, "stuck", t0, seed=3)
        await stuck.open()
        await stuck.send(chunk_for("stuck", 0, t0))
        await asyncio.wait_for(stuck.receive(), 10)
        await a.drain(timeout_s=0.5)  # no other replica: the migration cannot happen
        assert counter_totals(reader) == {"microturn_sessions_drain_deadline": 1}
        assert not a.sessions
    finally:
        await channel.close()
        await server.stop(grace=None)


async def test_a_session_moves_to_another_model_version_make_before_break():
    """A rollout retiring a version moves its calls to a replay-compatible one (``move_to``): the
    output goes on with every chunk index answered once, the old version up to the switch and the new
    one after it, each chunk saying which version made it, with no error and no recovery."""
    settings = load_settings(
        overrides={"interaction": {"bus": False, "session_slots": 4, "tick_grace_ms": 20}}
    )
    torch.manual_seed(1)  # the same architecture and vocabulary, other weights
    next_model = InteractionModel(preset("tiny"), version="tiny-next")
    old, new = (
        InteractionCore(settings, "replica-old", model=tiny_model()),
        InteractionCore(settings, "replica-new", model=next_model),
    )
    ports = free_port(), free_port()
    servers = [await start_server(c, "127.0.0.1", p) for c, p in zip((old, new), ports, strict=True)]
    ch_old, ch_new = (grpc.aio.insecure_channel(f"127.0.0.1:{p}") for p in ports)
    n_before, n_after = 15, 40
    try:
        t0 = session_origin()
        sess = new_session(ch_old, "moving", t0, seed=3, model_version="tiny-test")
        assert (await sess.open()).model_version == "tiny-test"
        got: list[tuple[int, str, float]] = []  # index, version, arrival
        errors = []

        async def read() -> None:
            while len(got) < n_before + n_after:
                msg = await sess.receive()
                if msg.WhichOneof("kind") == "chunk":
                    got.append((msg.chunk.header.chunk_index, msg.chunk.model_version, time.monotonic()))
                else:
                    errors.append(msg.error)

        reader = asyncio.create_task(read())
        for k in range(n_before + n_after):  # in real time, as an edge sends
            await asyncio.sleep(max(0.0, (t0 + 200 * (k + 1)) / 1000 - time.time()))
            await sess.send(chunk_for("moving", k, t0))
            if k == n_before:
                sess.move_to(ch_new, APP, "tiny-next")
        await asyncio.wait_for(reader, 30)
        assert not errors, errors
        assert [k for k, *_ in got] == list(range(n_before + n_after))
        versions = [v for _, v, _ in got]
        switch = versions.index("tiny-next")
        assert switch >= n_before and set(versions[:switch]) == {"tiny-test"}
        assert set(versions[switch:]) == {"tiny-next"}  # for 8 s after the move, on the new version only
        assert sess.migrations == 1 and sess.recoveries == 0
        assert sess.accepted.model_version == "tiny-next" and "moving" in new.sessions
        # the old version let go of it (CloseSession moved), it did not wait detach_timeout_s
        assert "moving" not in old.sessions and old.cfg.detach_timeout_s >= 30
        gaps = np.diff([t for *_, t in got])
        print(f"moved at chunk {switch}: output gap there {gaps[switch - 1] * 1000:.0f} ms, "
              f"largest {gaps.max() * 1000:.0f} ms")  # fmt: skip
        await sess.close()
    finally:
        for ch in (ch_old, ch_new):
            await ch.close()
        for server in servers:
            await server.stop(grace=None)
        await old.drain(timeout_s=0)
        await new.drain(timeout_s=0)
