"""The Interaction stream protocol over real gRPC (InteractionCore on a grpc.aio server)."""

from __future__ import annotations

import asyncio

from microturn.interaction.client import InteractionSession
from microturn.v1 import interaction_pb2

from .conftest import assert_same_continuation, chunk_for, new_session, session_origin

Code = interaction_pb2.ErrorCode


async def run_chunks(sess: InteractionSession, n: int, start: int = 0) -> list:
    outs = []
    for k in range(start, start + n):
        await sess.send(chunk_for(sess.session_id, k, sess.t0_ms))
        msg = await asyncio.wait_for(sess.receive(), 10)
        assert msg.WhichOneof("kind") == "chunk", msg
        outs.append(msg.chunk)
    return outs


async def test_outputs_answer_inputs_in_order(core_server):
    _core, channel = core_server
    t0 = session_origin()
    sess = new_session(channel, "s-order", t0)
    accepted = await sess.open()
    assert accepted.replica_id == "replica-test" and accepted.model_version == "tiny-test"
    assert accepted.limits.chunk_ms == 200 and accepted.limits.sample_rate_hz == 16000
    outs = await run_chunks(sess, 4)
    assert [o.header.chunk_index for o in outs] == [0, 1, 2, 3]
    for k, o in enumerate(outs):
        assert o.header.media_start_unix_ms == t0 + 200 * k and o.header.duration_ms == 200
        assert len(o.audio.pcm_s16le) == 6400 and o.audio.sample_rate_hz == 16000
        assert o.model_version == "tiny-test" and o.engine_us > 0
        assert [h.hop for h in o.header.hops] == ["interaction-recv", "interaction"]
    await sess.close()


async def test_concurrent_sessions_share_ticks(core_server):
    core, channel = core_server
    t0 = session_origin()
    sessions = [new_session(channel, f"s-batch-{i}", t0, seed=i) for i in range(3)]
    for s in sessions:
        await s.open()
    before = core.stats.ticks
    for k in range(3):
        await asyncio.gather(*(s.send(chunk_for(s.session_id, k, t0)) for s in sessions))
        msgs = await asyncio.gather(*(asyncio.wait_for(s.receive(), 10) for s in sessions))
        assert all(m.chunk.header.chunk_index == k for m in msgs)
    # Sent together, the three chunks of each micro-turn were stepped in one batched tick.
    assert core.stats.ticks - before == 3
    assert list(core.stats.batches)[-3:] == [3, 3, 3]
    for s in sessions:
        await s.close()


async def test_bad_chunks_get_typed_errors_and_the_session_goes_on(core_server):
    """Each bad chunk gets a typed error and the model hears silence in its place, so every micro-turn
    still has its output; a gap skips micro-turns; a duplicate is dropped."""
    _core, channel = core_server
    t0 = session_origin()
    sess = new_session(channel, "s-bad", t0)
    await sess.open()
    call = sess._call

    async def raw(chunk) -> tuple[interaction_pb2.Error, list]:
        """Send one chunk; the messages up to and including its output (or its error, if dropped)."""
        await call.write(interaction_pb2.ClientMessage(chunk=chunk))
        msgs = []
        while True:
            msg = await asyncio.wait_for(call.read(), 10)
            msgs.append(msg)
            if msg.WhichOneof("kind") == "chunk" or "dropped" in msg.error.message:
                return msgs[0].error, [m.chunk for m in msgs if m.WhichOneof("kind") == "chunk"]

    c = chunk_for("s-bad", 0, t0)
    c.audio.sample_rate_hz = 48000
    bad = [c]
    c = chunk_for("s-bad", 1, t0)
    c.audio.pcm_s16le = c.audio.pcm_s16le * 50  # 10 s of audio in one chunk
    bad.append(c)
    c = chunk_for("s-bad", 2, t0)
    c.video.add(width=64, height=64, data=bytes(64 * 64 * 3))
    bad.append(c)
    bad.append(chunk_for("s-bad", 3, t0, typed=["x" * 5000]))
    expect = ["16000 Hz mono", "320000 bytes", "80x80", "typed text"]
    for k, (c, what) in enumerate(zip(bad, expect, strict=True)):
        err, outs = await raw(c)
        assert err.code == Code.ERROR_CODE_INVALID_CHUNK and what in err.message and not err.retryable
        assert "silence" in err.message and err.chunk_index == k
        assert [o.header.chunk_index for o in outs] == [k]
        assert outs[0].audio.pcm_s16le and outs[0].HasField("resume")

    err, outs = await raw(chunk_for("s-bad", 6, t0))
    assert err.code == Code.ERROR_CODE_OUT_OF_ORDER and "gap" in err.message and err.chunk_index == 6
    assert "4..5 are skipped" in err.message and [o.header.chunk_index for o in outs] == [6]
    err, outs = await raw(chunk_for("s-bad", 6, t0))
    assert err.code == Code.ERROR_CODE_OUT_OF_ORDER and "duplicate" in err.message and outs == []
    # and the session goes on normally
    sess.next_index = 7
    outs = await run_chunks(sess, 2, start=7)
    assert [o.header.chunk_index for o in outs] == [7, 8]
    await sess.close()


async def test_protocol_errors(core_server):
    _core, channel = core_server
    sess = new_session(channel, "s-proto", session_origin())
    call = sess.stub.Converse()
    await call.write(interaction_pb2.ClientMessage(chunk=chunk_for("s-proto", 0, sess.t0_ms)))
    err = (await call.read()).error
    assert err.code == Code.ERROR_CODE_PROTOCOL and "first message" in err.message
    call.cancel()

    call = sess.stub.Converse()
    await call.write(interaction_pb2.ClientMessage(open=interaction_pb2.OpenSession(session_id="bad id!")))
    err = (await call.read()).error
    assert err.code == Code.ERROR_CODE_PROTOCOL and "session_id" in err.message
    call.cancel()


async def test_unknown_session_then_replay_continues_identically(core_server):
    core, channel = core_server
    t0 = session_origin()
    # Reference: 6 chunks without interruption.
    ref = new_session(channel, "s-ref", t0, seed=3)
    await ref.open()
    ref_out = await run_chunks(ref, 6)
    await ref.close()

    sess = new_session(channel, "s-replay", t0, seed=3)
    await sess.open()
    first = await run_chunks(sess, 3)
    # The replica loses the session (as after a restart): the next chunk gets UNKNOWN_SESSION
    # and the client replays chunks 0..2, then goes on.
    lost = core.sessions["s-replay"]
    await core._close(lost, cancel_delegations=False)
    rest = await run_chunks(sess, 3, start=3)
    assert sess.recoveries == 1
    assert_same_continuation(first + rest, ref_out)
    await sess.close()


async def test_reopen_without_replay_on_a_replica_that_lost_it(core_server):
    _core, channel = core_server
    sess = new_session(channel, "s-unknown", session_origin())
    call = sess.stub.Converse()
    await call.write(
        interaction_pb2.ClientMessage(
            open=interaction_pb2.OpenSession(session_id="s-unknown", first_chunk_index=5, live_from_chunk_index=5,
                                             first_media_start_unix_ms=sess.t0_ms + 1000)
        )
    )  # fmt: skip
    err = (await call.read()).error
    assert err.code == Code.ERROR_CODE_UNKNOWN_SESSION and err.retryable
    call.cancel()


async def test_detached_session_reattaches(core_server):
    core, channel = core_server
    t0 = session_origin()
    sess = new_session(channel, "s-detach", t0)
    await sess.open()
    await run_chunks(sess, 2)
    sess._call.cancel()  # the stream drops without CloseSession
    await asyncio.sleep(0.3)
    assert core.sessions["s-detach"].outbox is None  # detached, still held
    accepted = await sess._open(first=2, live_from=2)
    assert accepted.session_id == "s-detach"
    outs = await run_chunks(sess, 2, start=2)
    assert [o.header.chunk_index for o in outs] == [2, 3] and sess.recoveries == 0
    await sess.close()


async def test_over_capacity_is_typed_and_retryable(core_server):
    _core, channel = core_server
    t0 = session_origin()
    held = [new_session(channel, f"s-cap-{i}", t0) for i in range(4)]  # 4 slots
    for s in held:
        await s.open()
    extra = new_session(channel, "s-cap-x", t0)
    try:
        await extra.open()
        raise AssertionError("a fifth session was accepted on four slots")
    except Exception as exc:
        err = exc.error
        assert err.code == Code.ERROR_CODE_OVER_CAPACITY and err.retryable and err.retry_after_ms > 0
    # the held sessions are unharmed
    outs = await run_chunks(held[0], 1)
    assert outs[0].header.chunk_index == 0
    await held[0].close()
    await asyncio.sleep(0.05)
    assert (await extra.open()).session_id == "s-cap-x"  # a slot was freed
    for s in [*held[1:], extra]:
        await s.close()


async def test_a_session_that_fell_behind_catches_up(core_server):
    core, channel = core_server
    t0 = session_origin() - 1000  # the session's media is already 1 s (5 chunks) past
    sess = new_session(channel, "s-behind", t0)
    await sess.open()
    session = core.sessions["s-behind"]
    core._tick_task.cancel()  # hold the ticks: look at the catch-up choice directly
    for k in range(3):  # chunks at once, as after a recovery
        await sess.send(chunk_for("s-behind", k, t0))
    await wait_until(lambda: len(session.pending) == 3)
    # overdue chunks are taken one per step, in order; a chunk whose media has not ended is not
    assert [c.chunk_index for _, c in core._take_overdue(t0 + 200)] == [0]
    assert core._take_overdue(t0 + 399) == []
    assert [c.chunk_index for _, c in core._take_overdue(t0 + 10_000)] == [1]
    assert [c.chunk_index for _, c in core._take_overdue(t0 + 10_000)] == [2]
    assert core._take_overdue(t0 + 10_000) == []
    core._tick_task = None
    core.start()  # ticks resume; the session goes on
    await sess.send(chunk_for("s-behind", 3, t0))
    out = await asyncio.wait_for(sess.receive(), 10)
    assert out.chunk.header.chunk_index == 3
    await sess.close()


async def wait_until(predicate, timeout_s: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
