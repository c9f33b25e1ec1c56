"""A replica's background-update subscriber against hostile updates, with a real nats-server and a
real InteractionCore: what the bridge hands the tick loop is validated and bounded."""

from __future__ import annotations

import asyncio

import pytest

from microturn.bus import subjects
from microturn.v1 import delegation_pb2

from .conftest import chunk_for, new_session, session_origin


@pytest.mark.timeout(120)
async def test_oversized_update_text_does_not_fail_the_tick(bridged):
    """Old: a final of 6000 bytes went to the engine as text-in, over its 4096-token queue limit:
    the whole tick failed (every session in it got INTERNAL) and the update was never fed."""
    core, channel, bus, settings = bridged
    t0 = session_origin()
    sess = new_session(channel, "s-big", t0)
    await sess.open()
    assert await core.bridge.wait_connected(10)
    await sess.send(chunk_for("s-big", 0, t0))
    await asyncio.wait_for(sess.receive(), 10)
    update = delegation_pb2.BackgroundUpdate(
        delegation_id="d-big", session_id="s-big", seq=1, final=delegation_pb2.FinalResult(text="w " * 3000)
    )
    await bus.publish(subjects.update_subject("s-big"), update, msg_id="d-big:1")
    consumed = None
    for k in range(1, 25):
        await sess.send(chunk_for("s-big", k, t0))
        msg = await asyncio.wait_for(sess.receive(), 10)
        assert msg.WhichOneof("kind") == "chunk", f"chunk {k}: {msg}"
        events = [
            e.background_update for e in msg.chunk.events if e.WhichOneof("kind") == "background_update"
        ]
        if events:
            consumed = events[0]
            break
    assert consumed is not None, "the update never entered a tick"
    assert consumed.delegation_id == "d-big"
    assert 0 < len(consumed.text.encode()) <= settings.bus.max_update_text_bytes
    assert consumed.text.startswith("w w w")
    await sess.close()
