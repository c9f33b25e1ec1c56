"""A replica that is slow, not dead (a loaded machine): the client's stall limit backs off, so the
call keeps its output without a storm of recoveries, each of which would replay the session and make
the replica slower still."""

from __future__ import annotations

import asyncio
import time

import grpc

from microturn.config import load_settings
from microturn.interaction.core import InteractionCore
from microturn.localrun.ports import free_port
from microturn.v1 import interaction_pb2_grpc

from .conftest import chunk_for, new_session, session_origin, tiny_model

HICCUP_S = 3.0  # each output held this long: over the 2 s stall limit, under its backed-off one


class Hiccups(interaction_pb2_grpc.InteractionServicer):
    """Holds back one output message every ``every_s`` seconds for ``HICCUP_S``, while ``on``."""

    def __init__(self, core: InteractionCore, every_s: float) -> None:
        self.core, self.every_s, self.on = core, every_s, False
        self._last = 0.0

    async def Converse(self, request_iterator, context):
        async for message in self.core.converse(aiter(request_iterator)):
            if self.on and time.monotonic() - self._last > self.every_s:
                self._last = time.monotonic()
                await asyncio.sleep(HICCUP_S)
            yield message


async def test_a_replica_with_hiccups_keeps_its_call_without_a_recovery_storm():
    settings = load_settings(
        overrides={"interaction": {"bus": False, "session_slots": 4, "tick_grace_ms": 20}}
    )
    core = InteractionCore(settings, "replica-slow", model=tiny_model())
    servicer = Hiccups(core, every_s=4.0)
    server = grpc.aio.server()
    interaction_pb2_grpc.add_InteractionServicer_to_server(servicer, server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    n, hiccups_from, hiccups_to = 150, 10, 110  # 30 s of chunks; hiccups for 20 s of them
    try:
        t0 = session_origin()
        sess = new_session(channel, "hiccups", t0, seed=3)
        await sess.open()
        got: list[int] = []

        async def read() -> None:
            while len(got) < n:
                msg = await sess.receive()
                if msg.WhichOneof("kind") == "chunk":
                    got.append(msg.chunk.header.chunk_index)

        reader = asyncio.create_task(read())
        for k in range(n):  # in real time, as an edge sends
            await asyncio.sleep(max(0.0, (t0 + 200 * (k + 1)) / 1000 - time.time()))
            await sess.send(chunk_for("hiccups", k, t0))
            servicer.on = hiccups_from <= k < hiccups_to
        await asyncio.wait_for(reader, 60)
        assert got == list(range(n)), "output lost or repeated"
        # five 3 s hiccups: the first is taken for a lost stream (2 s), the limit doubles to 4 s and
        # the rest are waited out; at a flat 2 s every hiccup is a recovery with a replay
        assert 1 <= sess.recoveries <= 2, sess.recoveries
        await sess.close()
    finally:
        await channel.close()
        await server.stop(grace=None)
        await core.drain()
