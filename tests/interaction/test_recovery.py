"""Recovery and fault isolation on a replica (InteractionCore on real gRPC, no Ray)."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np

from microturn.engine import Engine
from microturn.interaction.session import PendingUpdate
from microturn.v1 import interaction_pb2

from .conftest import chunk_for, new_session, session_origin

Code = interaction_pb2.ErrorCode


async def outputs(sess, n: int) -> tuple[list, list]:
    """The next ``n`` output chunks, and every error message seen on the way."""
    outs, errors = [], []
    while len(outs) < n:
        msg = await asyncio.wait_for(sess.receive(), 30)
        (outs if msg.WhichOneof("kind") == "chunk" else errors).append(getattr(msg, msg.WhichOneof("kind")))
    return outs, errors


def assert_continues_like(outs: list, reference: list) -> None:
    assert [o.header.chunk_index for o in outs] == [o.header.chunk_index for o in reference]
    assert [o.text for o in outs] == [o.text for o in reference]
    for a, b in zip(outs, reference, strict=True):
        pa, pb = (np.frombuffer(x.audio.pcm_s16le, dtype=np.int16).astype(int) for x in (a, b))
        assert np.abs(pa - pb).max() <= 100, f"chunk {a.header.chunk_index}"


async def run_reference(channel, sid: str, t0: int, n: int, seed: int) -> list:
    ref = new_session(channel, sid, t0, seed=seed)
    await ref.open()
    for k in range(n):
        await ref.send(chunk_for(sid, k, t0))
    outs, errors = await outputs(ref, n)
    await ref.close()
    assert not errors
    return outs


async def test_the_backlog_of_an_outage_is_caught_up_and_output_goes_on(core_server):
    """The replica loses the session while the client keeps sending: on reconnecting, the client's whole
    backlog (more than max_pending_chunks) is taken, caught up in order, and output keeps coming."""
    core, channel = core_server
    n_before, n_outage, n_after = 30, 25, 40
    total = n_before + n_outage + n_after
    t0 = session_origin() - 200 * total  # every chunk's media has ended: the client may send at once
    ref = await run_reference(channel, "ref-outage", t0, total, seed=4)
    sess = new_session(channel, "outage", t0, seed=4)
    await sess.open()
    for k in range(n_before):
        await sess.send(chunk_for("outage", k, t0))
    before, errors = await outputs(sess, n_before)
    assert n_outage > core.cfg.max_pending_chunks
    await core._close(core.sessions["outage"], cancel_delegations=False)  # the replica forgets it
    for k in range(n_before, n_before + n_outage):
        await sess.send(chunk_for("outage", k, t0))
    during, errors2 = await outputs(sess, n_outage)
    assert sess.recoveries == 1
    for k in range(n_before + n_outage, total):
        await sess.send(chunk_for("outage", k, t0))
    after, errors3 = await outputs(sess, n_after)
    assert not errors + errors2 + errors3
    assert_continues_like(before + during + after, ref)
    await sess.close()


async def test_a_rebuild_costs_one_span_whatever_the_session_age(core_server, monkeypatch):
    core, channel = core_server
    forced = {"turns": 0}
    real = Engine.resume_steps

    def counting(self, items, remaining=None):
        forced["turns"] += len(items)
        return real(self, items, remaining)

    monkeypatch.setattr(Engine, "resume_steps", counting)
    span = core.engine.resume_span
    costs = {}
    for age in (5, 2 * span):
        t0 = session_origin() - 200 * (age + 10)
        sid = f"age-{age}"
        sess = new_session(channel, sid, t0, seed=2)
        await sess.open()
        assert sess.accepted.resume_span_chunks == span
        for k in range(age):
            await sess.send(chunk_for(sid, k, t0))
        await outputs(sess, age)
        assert len(sess.window) <= span + 1  # the client keeps one span of answered chunks
        forced["turns"] = 0
        await core._close(core.sessions[sid], cancel_delegations=False)
        await sess.send(chunk_for(sid, age, t0))
        outs, errors = await outputs(sess, 1)
        assert outs[0].header.chunk_index == age and not errors
        costs[age] = forced["turns"]
        await sess.close()
    assert costs == {5: 5, 2 * span: span}


async def test_an_oversized_background_update_waits_and_harms_no_one(core_server):
    """Background text is admitted against the text-in queue limit when it is fed: an update too large
    for the queue waits (or is cut to fit an empty queue) instead of failing the tick for everyone."""
    core, channel = core_server
    t0 = session_origin()
    a, b = new_session(channel, "bg-a", t0), new_session(channel, "bg-b", t0)
    await a.open()
    await b.open()
    limit = core.engine.text_queue_limit
    core.sessions["bg-a"].updates.append(PendingUpdate("d-1", 1, "y" * (limit + 500)))
    for k in range(3):
        await a.send(chunk_for("bg-a", k, t0))
        await b.send(chunk_for("bg-b", k, t0))
    (outs_a, err_a), (outs_b, err_b) = await asyncio.gather(outputs(a, 3), outputs(b, 3))
    assert not err_a and not err_b
    assert [o.header.chunk_index for o in outs_b] == [0, 1, 2]
    consumed = [e.background_update for o in outs_a for e in o.events if e.HasField("background_update")]
    assert len(consumed) == 1 and len(consumed[0].text.encode()) + 2 <= limit
    await a.close()
    await b.close()


async def test_an_engine_failure_in_one_session_fails_only_that_session(core_server, monkeypatch):
    core, channel = core_server
    t0 = session_origin()
    a, b = new_session(channel, "fail-a", t0), new_session(channel, "fail-b", t0)
    await a.open()
    await b.open()
    slot_a = core.engine.sessions["fail-a"].slot
    ex = core.engine.ex
    real_run = ex.run

    def run(lo, rows, n_part, seeds):
        if lo <= slot_a < lo + rows:
            raise RuntimeError("boom")
        return real_run(lo, rows, n_part, seeds)

    monkeypatch.setattr(ex, "run", run)
    await a.send(chunk_for("fail-a", 0, t0))
    await b.send(chunk_for("fail-b", 0, t0))
    outs_b, err_b = await outputs(b, 1)
    assert not err_b and outs_b[0].header.chunk_index == 0
    msg = await asyncio.wait_for(a.receive(), 10)
    assert msg.error.code == Code.ERROR_CODE_INTERNAL and msg.error.chunk_index == 0
    monkeypatch.setattr(ex, "run", real_run)
    await a.send(chunk_for("fail-a", 1, t0))
    outs_a, err_a = await outputs(a, 1)
    assert outs_a[0].header.chunk_index == 1 and not err_a
    await a.close()
    await b.close()


async def test_hostile_replays_get_protocol_errors(core_server):
    core, channel = core_server
    t0 = session_origin()
    sess = new_session(channel, "hostile", t0)
    await sess.open()
    for k in range(3):
        await sess.send(chunk_for("hostile", k, t0))
    outs, _ = await outputs(sess, 3)
    await sess.close()

    async def replay(chunks, live_from: int) -> interaction_pb2.Error:
        msgs = [
            interaction_pb2.ClientMessage(
                open=interaction_pb2.OpenSession(session_id="hostile", first_chunk_index=0,
                                                 first_media_start_unix_ms=t0, live_from_chunk_index=live_from)
            ),
            *(interaction_pb2.ClientMessage(chunk=c) for c in chunks),
        ]  # fmt: skip
        # a request iterator: grpc stops sending by itself when the replica ends the stream early
        call = sess.stub.Converse(iter(msgs))
        msg = await asyncio.wait_for(call.read(), 10)
        call.cancel()
        return msg.error

    good = [chunk_for("hostile", k, t0) for k in range(3)]
    for c, o in zip(good, outs, strict=True):
        c.resume.CopyFrom(o.resume)
    bad_levels = [type(c)() for c in good]
    for b, c in zip(bad_levels, good, strict=True):
        b.CopyFrom(c)
    bad_levels[1].resume.audio_out_levels = b"\xff" * 7
    err = await replay(bad_levels, 3)
    assert err.code == Code.ERROR_CODE_PROTOCOL and "resume.audio_out_levels" in err.message
    err = await replay([good[0], good[2]], 3)
    assert err.code == Code.ERROR_CODE_PROTOCOL and "continues with chunk 1" in err.message
    err = await replay(good, 10_000)
    assert err.code == Code.ERROR_CODE_PROTOCOL and "a replay of 10000 chunks" in err.message
    assert "hostile" not in core.sessions and core.engine.free_slots == core.cfg.session_slots


async def test_concurrent_opens_of_one_session_never_crash_the_servicer(core_server):
    """Two streams racing to open the same session: one wins, the other gets a typed answer."""
    core, channel = core_server
    t0 = session_origin()
    a, b = new_session(channel, "twin", t0), new_session(channel, "twin", t0)
    results = await asyncio.gather(a.open(), b.open(), return_exceptions=True)
    for r in results:  # accepted, or a typed refusal: never an unhandled error (gRPC UNKNOWN)
        assert not isinstance(r, grpc.aio.AioRpcError), r
        assert not isinstance(r, Exception) or getattr(r, "error", None) is not None, r
    assert any(not isinstance(r, Exception) for r in results)
    assert len(core.sessions) == 1 and core.engine.free_slots == core.cfg.session_slots - 1
    for s in (a, b):
        s.cancel()


async def test_a_stream_cancelled_on_the_client_side_is_recovered_and_closes_cleanly(core_server):
    """grpc.aio cancels the whole RPC when a task is cancelled in the middle of one of its writes (a
    sender stopped mid-write): the session recovers and goes on as if nothing happened, and a close
    after such a cancel ends quietly (it used to raise CancelledError out of close())."""
    _, channel = core_server
    n = 30
    t0 = session_origin() - 200 * n
    ref = await run_reference(channel, "ref-local-cancel", t0, n, seed=5)
    sess = new_session(channel, "local-cancel", t0, seed=5)
    await sess.open()
    for k in range(10):
        await sess.send(chunk_for("local-cancel", k, t0))
    before, errors = await outputs(sess, 10)
    sess._call.cancel()  # what a cancelled write does to the RPC
    for k in range(10, n):
        await sess.send(chunk_for("local-cancel", k, t0))
    after, errors2 = await outputs(sess, n - 10)
    assert not errors + errors2
    assert sess.recoveries == 1
    assert_continues_like(before + after, ref)
    sess._call.cancel()
    await asyncio.wait_for(sess.close(), 10)  # no CancelledError
    assert sess._call is None
