"""Turn-taking latency (``microturn_turn_latency``): the caller's end of turn as the replica hears it
(``TurnClock``), and the histogram a replica records when the model then starts speaking."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from microturn.config import load_settings
from microturn.engine import ChunkOutput, SpeakingChanged
from microturn.interaction.core import InteractionCore
from microturn.interaction.grpc_server import start_server
from microturn.localrun.ports import free_port
from microturn.protocol.chunks import input_chunk
from microturn.protocol.clock import now_unix_ms
from microturn.telemetry.turns import ANSWER_WITHIN_MS, SPEECH_RMS, TurnClock

from .conftest import new_session, session_origin, tiny_model

RATE, CHUNK_MS = 16_000, 200
FRAME = RATE // 20  # 50 ms


def audio(*loud: bool, level: float = 4000.0) -> np.ndarray:
    """200 ms of int16 PCM: four 50 ms frames, each a tone (True) or silence (False)."""
    t = np.arange(FRAME) / RATE
    tone = (level * np.sin(2 * np.pi * 300 * t)).astype(np.int16)
    return np.concatenate([tone if on else np.zeros(FRAME, np.int16) for on in loud])


def heard(clock: TurnClock, start_ms: int, pcm: np.ndarray, typed: bool = False) -> None:
    clock.heard(pcm, start_ms, CHUNK_MS, RATE, typed)


def test_the_end_of_turn_is_the_end_of_the_last_loud_frame():
    clock = TurnClock()
    heard(clock, 1000, audio(True, True, True, True))
    heard(clock, 1200, audio(True, True, False, False))  # speech ends 100 ms into this chunk
    heard(clock, 1400, audio(False, False, False, False))
    assert clock.answered(now_ms=1750) == 1750 - 1300
    assert clock.answered(now_ms=1800) is None  # one answer per turn


def test_speaking_over_the_caller_is_not_a_turn_taken():
    clock = TurnClock()
    heard(clock, 0, audio(False, True, True, True))  # still talking at the end of the chunk
    assert clock.answered(now_ms=300) is None
    heard(clock, 200, audio(True, False, False, False))  # the caller stops afterwards...
    assert clock.answered(now_ms=600) == 600 - 250  # ...and the next start of speech answers that


def test_no_turn_no_latency():
    clock = TurnClock()
    heard(clock, 0, audio(False, False, False, False))
    assert clock.answered(now_ms=400) is None


def test_quiet_noise_is_not_speech():
    clock = TurnClock()
    heard(clock, 0, audio(True, True, False, False, level=SPEECH_RMS * 0.9 * np.sqrt(2)))
    assert clock.answered(now_ms=400) is None


def test_typed_text_ends_a_turn_at_the_end_of_its_chunk():
    clock = TurnClock()
    heard(clock, 2000, audio(False, False, False, False), typed=True)
    assert clock.answered(now_ms=2600) == 2600 - 2200


def test_a_turn_answered_too_late_is_not_recorded():
    clock = TurnClock()
    heard(clock, 0, audio(True, False, False, False))
    assert clock.answered(now_ms=50 + ANSWER_WITHIN_MS + 1) is None


def speaks_at(core: InteractionCore, chunks: set[int]) -> None:
    """The model starts speaking exactly in the outputs of ``chunks`` (its own speaking events are
    replaced, so the test decides when it answers)."""
    step = core.engine.step_isolated

    def step_isolated(inputs):
        outs = step(inputs)
        for out in outs:
            if isinstance(out, ChunkOutput):
                out.events = [e for e in out.events if not isinstance(e, SpeakingChanged)]
                if out.chunk_index in chunks:
                    out.events.append(SpeakingChanged(speaking=True))
        return outs

    core.engine.step_isolated = step_isolated


@pytest.mark.parametrize(
    ("pcm", "typed", "speech_end_ms", "recorded"),
    [
        ([audio(True, True, True, True), audio(True, False, False, False), audio(False, False, False, False)],
         [], 250, True),  # speech ends 50 ms into chunk 1; the model speaks in output 2
        ([audio(False, False, False, False)] * 2 + [audio(True, True, True, True)], [], None, False),  # overlap
        ([audio(False, False, False, False)] * 3, ["hello"], 400, True),  # typed in chunk 1: ends at 400
    ],
    ids=["speech", "overlap", "typed"],
)  # fmt: skip
async def test_a_replica_records_the_turn_latency_by_version(pcm, typed, speech_end_ms, recorded):
    reader = InMemoryMetricReader()
    settings = load_settings(
        overrides={"interaction": {"bus": False, "session_slots": 2, "tick_grace_ms": 20}}
    )
    core = InteractionCore(
        settings, "replica-t", model=tiny_model(), meter_provider=MeterProvider(metric_readers=[reader])
    )
    speaks_at(core, {2})
    port = free_port()
    server = await start_server(core, "127.0.0.1", port)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            t0 = session_origin()
            sess = new_session(channel, "s-turn", t0)
            await sess.open()
            sent = received = 0
            for k, chunk_pcm in enumerate(pcm):
                text = typed if k == 1 else []
                sent = now_unix_ms()
                await sess.send(input_chunk("s-turn", k, t0, chunk_pcm.tobytes(), typed=text))
                msg = await asyncio.wait_for(sess.receive(), 10)
                received = now_unix_ms()
                assert msg.chunk.header.chunk_index == k
            points = [
                p
                for rm in reader.get_metrics_data().resource_metrics
                for sm in rm.scope_metrics
                for m in sm.metrics
                if m.name == "microturn_turn_latency"
                for p in m.data.data_points
            ]
            await sess.close()
    finally:
        await server.stop(grace=None)
        await core.drain()
    report = core.report()  # what the rollout controller gets (interaction/stats.py)
    if not recorded:
        assert sum(p.count for p in points) == 0
        assert report.turns == 0 and report.turn_p50_ms is None
        return
    (point,) = points
    assert report.turns == 1 and report.turn_p50_ms == pytest.approx(point.sum, abs=0.05)
    assert dict(point.attributes) == {"version": "tiny-test"}  # no session, no replica label
    assert point.count == 1
    # the answer is made between chunk 2 being sent and its output arriving back
    end = t0 + speech_end_ms
    assert sent - end <= point.sum <= received - end
