"""Fuzzing the Interaction gRPC servicer with hypothesis: arbitrary ClientMessage sequences (and raw bytes)
on real streams of one InteractionCore. The servicer must answer with typed errors only (never an
unhandled exception, which gRPC reports as UNKNOWN), and afterwards still serve a well-behaved session.

Examples: ``MICROTURN_FUZZ_EXAMPLES`` (default 60; ``make fuzz`` raises it).
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from microturn.v1 import interaction_pb2, media_pb2

from ..fuzzing import FUZZ
from .conftest import chunk_for, new_session, session_origin

pytestmark = pytest.mark.fuzz

# strings a proto can carry (valid UTF-8: no lone surrogates)
texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=300)
u64 = st.one_of(st.integers(0, 20), st.integers(0, 2**64 - 1))
i64 = st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(0, 10**13))


@st.composite
def input_chunks(draw, sid: str, t0: int) -> media_pb2.InputChunk:
    k = draw(st.one_of(st.integers(0, 30), u64))
    if draw(st.booleans()):  # mostly-valid chunks, then damaged: they reach deeper checks
        c = chunk_for(sid, min(k, 10**6), t0)
    else:
        c = media_pb2.InputChunk()
        c.header.chunk_index = k
        c.header.session_id = draw(st.sampled_from([sid, "", "other", "x" * 300]))
        c.header.media_start_unix_ms = draw(i64)
        c.header.duration_ms = draw(st.sampled_from([0, 200, 2**32 - 1]))
        c.audio.sample_rate_hz = draw(st.sampled_from([0, 16000, 48000]))
        c.audio.channels = draw(st.sampled_from([0, 1, 2]))
        c.audio.pcm_s16le = draw(st.binary(max_size=7000))
    for _ in range(draw(st.integers(0, 3))):
        w, h = draw(st.sampled_from([(80, 80), (0, 0), (64, 80), (2**31, 1)]))
        c.video.add(width=w, height=h, data=draw(st.binary(max_size=20)) if w != 80 else bytes(80 * 80 * 3))
    for _ in range(draw(st.integers(0, 2))):
        c.text.add(text=draw(texts), source=draw(st.sampled_from([0, 1, 2, 99])))
    if draw(st.booleans()):
        r = c.resume
        r.text_in_ids.extend(draw(st.lists(st.integers(0, 2**32 - 1), max_size=6)))
        r.text_out_ids.extend(draw(st.lists(st.integers(0, 2**32 - 1), max_size=6)))
        r.audio_out_levels = draw(st.binary(max_size=1400))
        r.vocoder_tail.extend(draw(st.lists(st.floats(width=32), max_size=210)))
        r.decoder_pending = draw(st.binary(max_size=6))
    return c


@st.composite
def conversations(draw, t0: int) -> list[interaction_pb2.ClientMessage]:
    sid = draw(st.sampled_from(["fz", "fz-2", "", "bad id!", "é" * 10]))
    msgs = []
    if draw(st.integers(0, 9)) > 0:  # usually an open first
        op = interaction_pb2.OpenSession(
            session_id=sid,
            seed=draw(u64),
            first_chunk_index=draw(st.sampled_from([0, 0, 1, 5, 2**64 - 1])),
            first_media_start_unix_ms=draw(st.sampled_from([t0, t0 + 1, 0, -200, 2**62])),
            live_from_chunk_index=draw(st.sampled_from([0, 0, 3, 500, 2**64 - 1])),
            model_version=draw(st.sampled_from(["", "", "tiny-test", "nope"])),
        )
        msgs.append(interaction_pb2.ClientMessage(open=op))
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["chunk", "chunk", "chunk", "open", "close", "empty"]))
        if kind == "chunk":
            msgs.append(interaction_pb2.ClientMessage(chunk=draw(input_chunks(sid, t0))))
        elif kind == "open":
            msgs.append(interaction_pb2.ClientMessage(open=interaction_pb2.OpenSession(session_id=sid)))
        elif kind == "close":
            msgs.append(
                interaction_pb2.ClientMessage(close=interaction_pb2.CloseSession(session_id=draw(texts)))
            )
        else:
            msgs.append(interaction_pb2.ClientMessage())
    return msgs


async def exchange(call, items) -> tuple[list, str]:
    """Send ``items`` on a stream, half-close, read what comes back for a short while: (replies, how
    it ended). An unhandled exception in the servicer (gRPC UNKNOWN) fails the test."""
    got, ended = [], "ok"
    try:
        for item in items:
            await call.write(item)
        await call.done_writing()
        async with asyncio.timeout(1.5):
            async for reply in call:
                got.append(reply)
    except TimeoutError:
        ended = "timeout"
    except grpc.aio.AioRpcError as exc:
        ended = exc.code().name
        assert exc.code() != grpc.StatusCode.UNKNOWN, f"the servicer raised: {exc.details()}"
    finally:
        call.cancel()
    return got, ended


async def still_serves(channel, core, sid: str) -> None:
    t0 = session_origin()
    sess = new_session(channel, sid, t0)
    await sess.open()
    await sess.send(chunk_for(sid, 0, t0))
    msg = await asyncio.wait_for(sess.receive(), 10)
    assert msg.WhichOneof("kind") == "chunk", msg
    await sess.close()
    assert core.check_health() is None


async def free_slots(core) -> None:
    for s in list(core.sessions.values()):  # leave the slots free for the next example
        await core._close(s, cancel_delegations=False)


T0 = session_origin()


@FUZZ
@given(msgs=conversations(T0))
async def test_fuzz_client_messages(core_server, tally, msgs):
    core, channel = core_server
    replies, _ = await exchange(new_session(channel, "x", 0).stub.Converse(), msgs)
    for r in replies:
        assert r.WhichOneof("kind") in ("accepted", "chunk", "error")
    tally.saw(
        next((interaction_pb2.ErrorCode.Name(r.error.code) for r in replies if r.HasField("error")), "ok")
    )
    await free_slots(core)
    if tally.inputs % 20 == 1:
        await still_serves(channel, core, f"after-{tally.inputs}")


@FUZZ
@given(blobs=st.lists(st.binary(max_size=2000), min_size=1, max_size=4))
async def test_fuzz_raw_bytes(core_server, tally, blobs):
    """Bytes that are not a ClientMessage never reach the servicer and never hurt it."""
    core, channel = core_server
    call = channel.stream_stream(
        "/microturn.v1.Interaction/Converse",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )()
    _, code = await exchange(call, blobs)
    tally.saw(code)
    await free_slots(core)
    if tally.inputs % 20 == 1:
        await still_serves(channel, core, f"after-bytes-{tally.inputs}")
