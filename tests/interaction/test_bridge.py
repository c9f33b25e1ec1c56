"""The NATS bridge of a replica with a real nats-server: delegation events become durable,
de-duplicated DelegationRequests with the conversation as context; background updates for a
session enter its next tick and come back to the client as BackgroundUpdateConsumed events."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from nats.js.errors import NotFoundError

from microturn.bus import Bus, subjects
from microturn.config import load_settings
from microturn.engine import DelegationOpened
from microturn.interaction.core import InteractionCore
from microturn.interaction.grpc_server import start_server
from microturn.localrun.ports import free_port
from microturn.protocol.clock import now_unix_ms
from microturn.v1 import delegation_pb2, interaction_pb2_grpc, media_pb2

from .conftest import chunk_for, new_session, session_origin, tiny_model


async def test_delegation_event_reaches_the_bus_with_context(bridged):
    core, channel, bus, _ = bridged
    t0 = session_origin()
    sess = new_session(channel, "s-deleg", t0)
    await sess.open()
    assert await core.bridge.wait_connected(10)
    await sess.send(chunk_for("s-deleg", 0, t0, typed=["what is 6 times 7?"]))
    assert (await asyncio.wait_for(sess.receive(), 10)).chunk.header.chunk_index == 0
    session = core.sessions["s-deleg"]
    # The engine reported a delegation span (the untrained model never closes one by itself).
    msg = media_pb2.OutputChunk()
    core._events(session, 1, [DelegationOpened(request="multiply 6 by 7")], [], msg, done_ms=now_unix_ms())
    opened = msg.events[0].delegation_opened
    assert opened.request == "multiply 6 by 7" and opened.delegation_id.startswith("s-deleg-1-")

    sub = await bus.js.pull_subscribe(
        subjects.DELEGATION_REQUEST, durable="test-reader", stream=subjects.DELEGATIONS_STREAM
    )
    (raw,) = await sub.fetch(1, timeout=10)
    req = delegation_pb2.DelegationRequest.FromString(raw.data)
    assert req.delegation_id == opened.delegation_id and req.session_id == "s-deleg"
    assert req.chunk_index == 1 and req.context.request == "multiply 6 by 7"
    speakers = [u.speaker for u in req.context.utterances]
    assert delegation_pb2.SPEAKER_USER in speakers
    user = next(u for u in req.context.utterances if u.speaker == delegation_pb2.SPEAKER_USER)
    assert user.text == "what is 6 times 7?" and user.typed and user.start_unix_ms == t0
    assert req.deadline_unix_ms > t0
    await sess.close()


async def test_background_update_enters_the_next_tick(bridged):
    core, channel, bus, _ = bridged
    t0 = session_origin()
    sess = new_session(channel, "s-update", t0)
    await sess.open()
    assert await core.bridge.wait_connected(10)
    await sess.send(chunk_for("s-update", 0, t0))
    await asyncio.wait_for(sess.receive(), 10)
    update = delegation_pb2.BackgroundUpdate(
        delegation_id="d-42", session_id="s-update", seq=1, final=delegation_pb2.FinalResult(text="It is 42.")
    )
    await bus.publish(subjects.update_subject("s-update"), update, msg_id="d-42-1")
    seen = None
    for k in range(1, 15):
        await sess.send(chunk_for("s-update", k, t0))
        out = (await asyncio.wait_for(sess.receive(), 10)).chunk
        consumed = [e.background_update for e in out.events if e.WhichOneof("kind") == "background_update"]
        if consumed:
            seen = (k, consumed[0])
            break
    assert seen is not None, "the update never entered a tick"
    k, ev = seen
    assert (ev.delegation_id, ev.seq, ev.text) == ("d-42", 1, "It is 42.")
    # the client keeps it with input chunk k, so a replay feeds it at the same micro-turn
    kept = [t for t in sess.window[k].text if t.source == media_pb2.TEXT_SOURCE_BACKGROUND]
    assert [t.text for t in kept] == ["It is 42."]
    transcript = [
        u.text for u in core.sessions["s-update"].transcript if u.speaker == delegation_pb2.SPEAKER_BACKGROUND
    ]
    assert transcript == ["It is 42."]
    await sess.close()


async def test_update_not_fed_before_a_replica_dies_reaches_the_next_owner(nats_server):
    """Replica A holds an update it never fed to the model when it dies; the session moves to
    replica B with a replay and B feeds the redelivered update: nothing is lost."""
    settings = load_settings(
        overrides={
            "nats": {"port": nats_server.port, "monitor_port": nats_server.monitor_port},
            "bus": {"ack_wait_s": 1.0},
            "interaction": {"bus": True, "session_slots": 2, "tick_grace_ms": 20},
        }
    )
    cores, servers, channels = [], [], []
    for name in ("A", "B"):
        core = InteractionCore(settings, f"replica-{name}", model=tiny_model())
        port = free_port()
        servers.append(await start_server(core, "127.0.0.1", port))
        channels.append(grpc.aio.insecure_channel(f"127.0.0.1:{port}"))
        cores.append(core)
    a = cores[0]
    bus = await Bus.connect(nats_server.url, settings.bus, name="test")
    try:
        t0 = session_origin()
        sess = new_session(channels[0], "s-moves", t0)
        await sess.open()
        assert await a.bridge.wait_connected(10)
        for k in range(2):
            await sess.send(chunk_for("s-moves", k, t0))
            await asyncio.wait_for(sess.receive(), 10)
        a._tick_task.cancel()  # replica A stalls: it will receive the update but never tick again
        update = delegation_pb2.BackgroundUpdate(
            delegation_id="d-7", session_id="s-moves", seq=1, final=delegation_pb2.FinalResult(text="Seven.")
        )
        await bus.publish(subjects.update_subject("s-moves"), update, msg_id="d-7-1")
        deadline = asyncio.get_running_loop().time() + 10
        while not a.sessions["s-moves"].updates:
            assert asyncio.get_running_loop().time() < deadline, "replica A never received the update"
            await asyncio.sleep(0.05)
        await a.bridge.close()  # A dies with the update unacked
        await servers[0].stop(grace=None)

        sess.stub = interaction_pb2_grpc.InteractionStub(channels[1])  # the router now points at B
        accepted = await sess.recover()
        assert accepted.replica_id == "replica-B"
        consumed = None
        for k in range(2, 30):
            await sess.send(chunk_for("s-moves", k, t0))
            out = (await asyncio.wait_for(sess.receive(), 10)).chunk
            events = [e.background_update for e in out.events if e.WhichOneof("kind") == "background_update"]
            if events:
                consumed = events[0]
                break
        assert consumed is not None, "the update was lost with replica A"
        assert (consumed.delegation_id, consumed.text) == ("d-7", "Seven.")
        await sess.close()
    finally:
        await bus.close()
        for ch in channels:
            await ch.close()
        await servers[1].stop(grace=None)
        for core in cores:
            await core.drain()


async def test_a_session_closed_as_moved_keeps_its_updates_and_a_plain_close_deletes_them(bridged):
    """CloseSession(moved=True) is how a client lets go of the replica it left (a move to another
    model version, a migration): the session's durable update consumer stays for the next owner. A
    plain CloseSession ends the session: the consumer goes."""
    core, channel, bus, _ = bridged
    t0 = session_origin()
    durables = {}
    for sid, moved in (("s-moved", True), ("s-ended", False)):
        sess = new_session(channel, sid, t0)
        await sess.open()
        assert await core.bridge.wait_connected(10)
        await sess.send(chunk_for(sid, 0, t0))
        await asyncio.wait_for(sess.receive(), 10)
        durables[sid] = f"session-{sid}"
        await bus.js.consumer_info(subjects.UPDATES_STREAM, durables[sid])  # it exists while the call runs
        if moved:
            await sess._let_go(sess._call)
            sess._call = None
        else:
            await sess.close()
        for _ in range(100):
            if sid not in core.sessions:
                break
            await asyncio.sleep(0.05)
        assert sid not in core.sessions  # freed at once either way, not after detach_timeout_s
    await bus.js.consumer_info(subjects.UPDATES_STREAM, durables["s-moved"])  # still there
    with pytest.raises(NotFoundError):
        await bus.js.consumer_info(subjects.UPDATES_STREAM, durables["s-ended"])
